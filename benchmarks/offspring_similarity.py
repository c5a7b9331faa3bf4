"""Do a split neuron's offspring stay near-copies through training? (issue 16: why grown weights train worse)

    python benchmarks/offspring_similarity.py                  # -> benchmarks/results/offspring-similarity/
    python benchmarks/offspring_similarity.py --quick          # smoke check -> runs/offspring-similarity-quick/

Grows MobileNetV1 x0.5 to 25% of `mobile` with `energysplit grow` (4,000 training images, E = 4) under several
recipes (seed fraction, eps) and, in every final network, measures each output channel of the dense
convolutions: the largest cosine similarity of its filter to another filter of the same layer. Trained
from scratch, filters are far apart (median about 0.25); offspring start at theta +- eps v, and a share of
channels with a partner above 0.9 says how much of the network is still made of near-copies. Prints a
Markdown table with each run's final validation accuracy (`energysplit grow` also reports test accuracy in
its report; the table leaves it out, and no setting is chosen from this benchmark). Resumable: a recipe
whose model.es exists is not grown again.
"""
import argparse, re, shlex, subprocess, sys  # noqa: E401
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
RECIPES = {  # name: energysplit grow flags
    "seed 40%, eps 0.1": ["--seed-fraction", "0.4", "--eps", "0.1"],
    "seed 40%, eps 0.5": ["--seed-fraction", "0.4", "--eps", "0.5"],
    "seed 40%, eps 1.0": ["--seed-fraction", "0.4", "--eps", "1.0"],
    "seed 85%, eps 0.1": ["--seed-fraction", "0.85", "--eps", "0.1"],
    "seed x0.242 (uniform width at the budget is x0.242), eps 0.1": ["--seed-width", "0.242", "--eps", "0.1"],
}


def nearest_filter_similarity(model: nn.Module) -> torch.Tensor:
    """For every output channel of every dense convolution (groups 1, >1 output): the largest cosine
    similarity of its filter to another filter of its layer."""
    best = []
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.out_channels > 1:
            w = nn.functional.normalize(conv.weight.detach().flatten(1), dim=1)
            cos = (w @ w.T).fill_diagonal_(-1.0)
            best.append(cos.max(dim=1).values)
    return torch.cat(best)


def grow(flags: list[str], out: Path, subset: int, epochs: float) -> float:
    """Grow one recipe into ``out`` (unless done); its final validation accuracy from the log."""
    log = out / "grow.log"
    if not (out / "model.es").exists():
        cmd = [sys.executable, "-m", "energysplit", "grow", "--arch", "mobilenet_v1", "--width", "0.5", "--budget",
               "0.25", "--subset", str(subset), "--epochs", str(epochs), "--out", str(out), "--force", "--no-progress",
               *flags]
        print("$", shlex.join(cmd[1:]), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        log.write_text(text)
    found = re.findall(r"final fine-tune: .* val acc ([0-9.]+)", log.read_text())
    return float(found[-1]) if found else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="one recipe, 500 images, 1 epoch")
    args = p.parse_args()
    out = args.out or REPO / ("runs/offspring-similarity-quick" if args.quick else
                              "benchmarks/results/offspring-similarity")
    recipes = dict(list(RECIPES.items())[:1]) if args.quick else RECIPES
    subset, epochs = (500, 1) if args.quick else (4000, 4)
    from energysplit.graph.archive import load_model

    lines = ["| recipe | channels | with a partner above 0.9 | median nearest similarity | final val accuracy |",
             "|---|---|---|---|---|"]
    for i, (name, flags) in enumerate(recipes.items()):
        run = out / f"recipe{i}"
        val = grow(flags, run, subset, epochs)
        sim = nearest_filter_similarity(load_model(run / "model.es")[0])
        lines.append(f"| {name} | {len(sim)} | {(sim > 0.9).float().mean():.1%} | {sim.median():.3f} | {val:.3f} |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
