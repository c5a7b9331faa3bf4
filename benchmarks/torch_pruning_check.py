"""Is our L1 baseline a strawman? The same trained model pruned to the same MACs by our ``l1`` method and by
Torch-Pruning's global magnitude (L1) pruner (DepGraph), then fine-tuned with the same recipe and seeds.

    pip install torch-pruning        # the `bench` extra: pip install -e '.[bench]'
    python benchmarks/torch_pruning_check.py --base benchmarks/results/compare-medium-aligned-mobilenet_v2/base_mobilenet_v2.es

Prints accuracy and MACs per seed and the mean difference; writes a CSV next to the other results.
"""
from __future__ import annotations

import argparse
import copy
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

from energysplit.graph.archive import load_model
from energysplit.training.data import load_dataset
from energysplit.cost.estimator import create_target
from energysplit.methods import METHODS, MethodContext
from energysplit.training.loop import TrainConfig, evaluate, seed_everything, train


def torch_pruning_l1(model, input_shape, target_macs: float, flops) -> torch.nn.Module:
    """Torch-Pruning: global L1 magnitude over coupled groups, iterated until MACs <= target."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    example = torch.zeros(1, *input_shape)
    last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  global_pruning=True, pruning_ratio=0.9, iterative_steps=200,
                                  ignored_layers=[last_linear])
    for _ in range(200):
        if flops.predict(model, input_shape).total <= target_macs:
            break
        pruner.step()
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="energysplit archive of the trained base model")
    p.add_argument("--budget", type=float, default=0.5, help="fraction of the base model's MACs")
    p.add_argument("--subset", type=int, default=4000)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="benchmarks/results/torch_pruning_check.csv")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    base, _ = load_model(args.base)
    data = load_dataset("fashion-mnist").subset(train=args.subset, val=1000, test=5000)
    flops = create_target("flops")
    shape = data.input_shape
    budget = args.budget * flops.predict(base, shape).total
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        recipe = TrainConfig(epochs=args.epochs, seed=seed, progress=False)
        for name in ("energysplit-l1", "torch-pruning-l1"):
            start = time.perf_counter()
            seed_everything(seed)
            if name == "energysplit-l1":
                ctx = MethodContext(data, flops, budget, recipe, seed=seed, log=lambda s: None)
                model = METHODS.get("l1")(copy.deepcopy(base), ctx)
            else:
                model = torch_pruning_l1(base, shape, budget, flops)
                train(model, data.train, recipe)
            acc = evaluate(model, data.test).accuracy
            row = {"method": name, "seed": seed, "test_accuracy": acc, "MACs": flops.predict(model, shape).total,
                   "budget_MACs": budget, "params": sum(q.numel() for q in model.parameters()),
                   "wall_s": time.perf_counter() - start}
            rows.append(row)
            print(f"{name:18s} seed {seed}: acc {acc:.4f}, MACs {row['MACs']:,.0f} (budget {budget:,.0f})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    accs = {m: [r["test_accuracy"] for r in rows if r["method"] == m] for m in ("energysplit-l1", "torch-pruning-l1")}
    for m, a in accs.items():
        print(f"{m:18s} mean {statistics.mean(a):.4f} ± {statistics.pstdev(a):.4f} over {len(a)} seeds")
    diff = statistics.mean(accs["energysplit-l1"]) - statistics.mean(accs["torch-pruning-l1"])
    print(f"difference (ours - Torch-Pruning): {diff:+.4f}; command: python benchmarks/torch_pruning_check.py "
          + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
