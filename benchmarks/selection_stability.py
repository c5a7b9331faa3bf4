"""Stability of splitting selections (issue 17, item 5): do two disjoint sets of N scoring images give the
same lambda_min ranking and the same LP selection?

    python benchmarks/selection_stability.py            # full run -> benchmarks/results/selection-stability/
    python benchmarks/selection_stability.py --quick    # smoke check -> runs/selection-stability-quick/

The scored model looks like a growth step's input: MobileNetV2 x0.5 trained briefly on Fashion-MNIST,
Taylor-pruned to 70% of its `mobile` energy as `splitting` seeds, a short seed fine-tune (cached in OUT/model.es).
For each N, repeat and solver, two disjoint sets of N training images are scored: the Spearman correlation of all
neurons' lambda_min, the overlap |A & B| / max(|A|, |B|) of the neurons the LP selects for one x1.4 step (with the
target's channel multiple and with 1), the value one set's selection keeps when priced by the other set's
lambdas (its share of the predicted loss decrease of that set's own selection), the scoring time per set and its
ratio to one growth step's fine-tune slice (0.2 epochs of 8,000 images, timed here). The same two scorings also
select with the variance-aware (shrunk) lambdas of :mod:`energysplit.splitting.shrinkage`, once per ``--shrinkage``
weight (fast solver only: it gives the standard errors): their overlap, and the value they keep priced by the
other set's raw lambdas.
Resumable: rows already in OUT/results.csv are kept.
"""
import argparse, copy, csv, dataclasses, datetime, json, shlex, socket, statistics, subprocess, sys, time  # noqa: E401
from collections import Counter
from pathlib import Path

import torch
import torchvision
from scipy.stats import spearmanr
from torch.utils.data import Subset

import energysplit as es
from energysplit.cost.estimator import marginal_costs_of
from energysplit.graph.trace import build_inventory
from energysplit.pruning.prune import PruneConfig, prune_
from energysplit.splitting.growth import scoring_batches
from energysplit.splitting.scores import splitting_scores
from energysplit.splitting.selection import select_splits
from energysplit.splitting.shrinkage import shrunk_scores
from energysplit.training.loop import seed_everything

REPO = Path(__file__).resolve().parent.parent
ARCH = {"name": "mobilenet_v2", "kwargs": {"width": 0.5, "in_channels": 1, "num_classes": 10}}
FIELDS = ["N", "method", "repeat", "spearman", "overlap_m", "overlap_1", "group_overlap_m", "value_m", "chosen_m",
          "chosen_1", "negative", "neurons", "score_s", "train_step_s", "ratio"]


def shrunk_fields(weights) -> list[str]:
    """The CSV columns of the shrunk selections: overlap and value kept per shrinkage weight."""
    return [f"{k}_shrunk_{w:g}" for w in weights for k in ("overlap", "value")]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke check: N 128, 256, 1 repeat, 1,000 images")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-images", type=int, default=10000, help="training images (>= 2 x the largest N)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--seed-finetune", type=float, default=0.5, help="epochs after pruning (the seed fine-tune)")
    p.add_argument("--solvers", nargs="+", choices=["fast", "exact"], default=["fast", "exact"])
    p.add_argument("--exact-limit", type=float, default=60.0, help="skip exact at larger N once a set took > this/2 s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shrinkage", type=float, nargs="+", default=[1.0],
                   help="weights of the variance-aware (shrunk) selections (energysplit.splitting.shrinkage)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 on a shared 2-core CPU ran 15x slower)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.quick:
        a.sizes, a.repeats, a.train_images, a.epochs, a.seed_finetune = [128, 256], 1, 1000, 0.5, 0.2
    a.out = a.out or REPO / ("runs/selection-stability-quick" if a.quick else "benchmarks/results/selection-stability")
    return a


def scored_model(args, data, target):
    """The trained, Taylor-pruned, seed-fine-tuned model (cached with the settings that made it)."""
    path = args.out / "model.es"
    key = {k: getattr(args, k) for k in ("train_images", "epochs", "seed_finetune", "seed")}
    if path.exists() and (cached := es.load_model(path))[1]["meta"].get("key") == key:
        return cached[0], cached[1]["meta"]["log"]
    seed_everything(args.seed)
    model, shape = es.create_model(ARCH["name"], **ARCH["kwargs"]), data.input_shape
    recipe = es.TrainConfig(epochs=args.epochs, seed=args.seed, progress=False)
    res = es.train(model, data.train, recipe, val=data.val)
    full = target.predict(model, shape).total
    cfg = PruneConfig(min_fraction=0.1, channel_multiple=target.channel_multiple, best_effort=True)
    pr = prune_(model, target, 0.7 * full, shape, "taylor", scoring_batches(data, 512, 64, args.seed), cfg, args.seed)
    ft = es.train(model, data.train, dataclasses.replace(recipe, epochs=args.seed_finetune), val=data.val)
    msg = (f"MobileNetV2 x0.5 trained {args.epochs:g} epochs on {args.train_images} Fashion-MNIST images (val acc "
           f"{res.val_accuracy:.4f}), Taylor-pruned to 70% of its `mobile` energy ({full:.4g} -> {pr.final_cost:.4g} "
           f"{target.unit}), {args.seed_finetune:g}-epoch seed fine-tune (val acc {ft.val_accuracy:.4f})")
    es.save_model(model, path, ARCH, shape, meta={"key": key, "log": msg})
    return model, msg


def image_batches(dataset, idx, size=64):
    x, y = torch.stack([dataset[i][0] for i in idx]), torch.as_tensor([int(dataset[i][1]) for i in idx])
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(idx), size)]


def overlap(a: set, b: set, groups: bool = False) -> float:
    """|A & B| / max(|A|, |B|) of (group, channel) sets; ``groups``: of the per-group counts, whatever the channels."""
    if groups:
        a, b = Counter(g for g, _ in a), Counter(g for g, _ in b)
        return sum((a & b).values()) / max(a.total(), b.total(), 1)
    return len(a & b) / max(len(a), len(b), 1)


def value(chosen: set, best: set, scores) -> float:
    """The share of the loss decrease that ``best`` (a selection made from ``scores``) predicts, sum of lambda,
    that the other set's selection ``chosen`` gets when both are priced with ``scores``: 1 when the neurons
    the selections disagree on are worth the same."""
    def total(sel):
        return sum(float(scores[g].eigvals[c]) for g, c in sel)
    return total(chosen) / total(best)


def timed_step_training(model, data, seed):
    """Seconds to fine-tune a copy for one growth step's slice: 0.2 epochs of 8,000 images."""
    train = Subset(data.train, range(min(8000, len(data.train))))
    return es.train(copy.deepcopy(model), train, es.TrainConfig(epochs=0.2, seed=seed, progress=False)).seconds


def mean_std(rows, key):
    v = [float(r[key]) for r in rows]
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    t_start = time.perf_counter()
    data = es.load_dataset("fashion-mnist").subset(train=args.train_images, val=1000)
    if 2 * max(args.sizes) > len(data.train):
        sys.exit(f"--train-images {len(data.train)} is below 2 x the largest N ({max(args.sizes)})")
    target = es.create_target("mobile")
    m, shape = target.channel_multiple, data.input_shape
    model, model_log = scored_model(args, data, target)
    log(model_log)
    inventory = build_inventory(model, shape)
    cost = target.predict(model, shape).total
    budget = (1.4 - 1) * cost
    blocks = {g.id: g.blocks for g in inventory.splittable() if g.blocks > 1} or None
    widths = inventory.widths()
    costs = {k: {g.id: c[g.id].add for g in inventory.splittable()}
             for k, c in ((mult, marginal_costs_of(target, model, inventory, shape, mult)) for mult in (m, 1))}
    train_s = [timed_step_training(model, data, args.seed)]
    log(f"cost {cost:.4g} {target.unit}, step budget {budget:.4g}, multiple {m}; step fine-tune {train_s[0]:.1f} s")

    csv_path = args.out / "results.csv"
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    done, exact_ok = {(int(r["N"]), r["method"], int(r["repeat"])) for r in rows}, True
    for n in args.sizes:
        for method, rep in [(meth, r) for meth in args.solvers for r in range(args.repeats)]:
            if (n, method, rep) in done or (method == "exact" and not exact_ok):
                continue
            perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1000 * rep + n))
            scores, seconds = [], []
            for idx in (perm[:n].tolist(), perm[n:2 * n].tolist()):
                batches = image_batches(data.train, idx)
                seed_everything(args.seed)
                t0 = time.perf_counter()
                scores.append(splitting_scores(model, batches, inventory, method))
                seconds.append(time.perf_counter() - t0)
            lam = [torch.cat([s[g].eigvals for g in sorted(s)]) for s in scores]
            def selected(s, k):
                return {(c.group, c.channel) for c in select_splits(s, costs[k], budget, "lp", eps=0.1, multiple=k,
                                                                    widths=widths, blocks=blocks).neurons()}
            sel = {k: [selected(s, k) for s in scores] for k in (m, 1)}
            has_stderr = all(x.stderr is not None for s in scores for x in s.values())
            shrunk = {w: [selected(shrunk_scores(model, inventory, s, w), m) for s in scores]
                      for w in (args.shrinkage if has_stderr else ())}
            score_s = statistics.mean(seconds)
            row = {"N": n, "method": method, "repeat": rep, "spearman": spearmanr(lam[0], lam[1])[0],
                   "overlap_m": overlap(*sel[m]), "overlap_1": overlap(*sel[1]),
                   "group_overlap_m": overlap(*sel[m], groups=True),
                   "value_m": statistics.mean([value(sel[m][1], sel[m][0], scores[0]),
                                               value(sel[m][0], sel[m][1], scores[1])]),
                   "chosen_m": statistics.mean(map(len, sel[m])), "chosen_1": statistics.mean(map(len, sel[1])),
                   "negative": statistics.mean(float((x < 0).sum()) for x in lam), "neurons": len(lam[0]),
                   "score_s": score_s, "train_step_s": train_s[-1], "ratio": score_s / train_s[-1]}
            for w, (a, b) in shrunk.items():
                row[f"overlap_shrunk_{w:g}"] = overlap(a, b)
                row[f"value_shrunk_{w:g}"] = statistics.mean([value(b, sel[m][0], scores[0]),
                                                              value(a, sel[m][1], scores[1])])
            rows.append({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
            with csv_path.open("w", newline="") as f:
                fields = FIELDS + shrunk_fields(args.shrinkage)
                f.write(",".join(fields) + "\n")
                csv.DictWriter(f, fields, extrasaction="ignore").writerows(rows)
            log(f"N={n} {method} #{rep}: rho {row['spearman']:.3f}, overlap m={m} {row['overlap_m']:.3f} (group counts "
                f"{row['group_overlap_m']:.3f}), m=1 {row['overlap_1']:.3f}, {score_s:.1f} s/set ({row['ratio']:.2f} x "
                "a step's fine-tune)")
        slow = [float(r["score_s"]) for r in rows if int(r["N"]) == n and r["method"] == "exact"]
        if exact_ok and slow and 2 * max(slow) > args.exact_limit:
            exact_ok = False
            log(f"exact took {max(slow):.0f} s a set at N={n}: larger N skip it")
        train_s.append(timed_step_training(model, data, args.seed))  # the machine's load drifts: re-time
    write_summary(args, rows, m, f"{model_log}: {cost:.4g} {target.unit}", f"{budget:.4g} {target.unit}", train_s,
                  time.perf_counter() - t_start, bool(done))


def write_summary(args, rows, m, model_log, budget, train_s, elapsed, resumed):
    if resumed and (args.out / "config.json").exists():  # the time of the run(s) this one resumed adds to its own
        elapsed += json.loads((args.out / "config.json").read_text()).get("run_seconds", 0.0)
    head = (f"| N | method | rank correlation | LP overlap (multiple {m}) | group counts overlap (multiple {m}) | "
            f"LP overlap (multiple 1) | value kept (multiple {m}) | neurons chosen (m / 1) | scoring s per set | "
            "scoring / training |")
    lines = ["# Stability of splitting selections", "", f"{model_log}, {rows[0]['neurons'] if rows else '?'} "
             f"splittable neurons. Step budget (1.4 - 1) x cost = {budget}, LP selector, eps 0.1. Two disjoint sets of "
             f"N training images per repeat; mean ± std over {args.repeats} repeat(s); exact is skipped above the "
             f"first N where a set took over {args.exact_limit / 2:g} s. Training: one growth step's fine-tune slice "
             f"(0.2 epochs of 8,000 images), {statistics.mean(train_s):.1f} s on average ({min(train_s):.1f}-"
             f"{max(train_s):.1f}), {torch.get_num_threads()} torch thread(s). Run time {elapsed / 60:.1f} min.", "",
             head, "|" + "---|" * head.count(" | ") + "---|"]
    for n, method in [(n, meth) for n in args.sizes for meth in ("fast", "exact")]:
        rs = [r for r in rows if int(r["N"]) == n and r["method"] == method]
        if rs:
            chosen = " / ".join(f"{statistics.mean(float(r[k]) for r in rs):.0f}" for k in ("chosen_m", "chosen_1"))
            cells = [mean_std(rs, k) if rs[0].get(k) else "-"
                     for k in ("spearman", "overlap_m", "group_overlap_m", "overlap_1", "value_m")]
            lines.append(f"| {n} | {method} | " + " | ".join(cells + [chosen, mean_std(rs, "score_s"),
                                                                      mean_std(rs, "ratio")]) + " |")
    lines += ["", f"Variance-aware selection (fast solver): the same scorings' lambdas shrunk with weight w "
              f"(energysplit.splitting.shrinkage), multiple {m}; value kept priced by the other set's raw lambdas.", "",
              "| N | w | shrunk LP overlap | value kept |", "|---|---|---|---|"]
    for n, w in [(n, w) for n in args.sizes for w in args.shrinkage]:
        rs = [r for r in rows if int(r["N"]) == n and r["method"] == "fast" and r.get(f"overlap_shrunk_{w:g}")]
        if rs:
            lines.append(f"| {n} | {w:g} | {mean_std(rs, f'overlap_shrunk_{w:g}')} | "
                         f"{mean_std(rs, f'value_shrunk_{w:g}')} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    argv0 = Path(sys.argv[0]).resolve()
    command = ["python", str(argv0.relative_to(REPO)) if argv0.is_relative_to(REPO) else argv0.name] + sys.argv[1:]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    config = {"command": shlex.join(command), "host": socket.gethostname(), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "threads": torch.get_num_threads(), "commit": commit,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "run_seconds": round(elapsed, 1),
              "args": {k: v for k, v in vars(args).items() if k != "out"}}
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print("\n".join(lines[4:]))


if __name__ == "__main__":
    main()
