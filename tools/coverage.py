"""Coverage of every torchvision classification network (issue 18, item 5): a table, and docs/coverage.md.

Each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights, random
BatchNorm statistics, eval mode, the smallest input of SIZES it runs on, batch 2) is either
**handled**: an eps = 0 split of one channel per block (a grouped conv's blocks change alike) of every
prunable group (a random unit direction where the group is splittable, a pure duplicate elsewhere), then
the removal of one channel per block of every prunable group (3+ channels per block) after zeroing its
consumers' input columns, leave the outputs equal (``max_err``: max |after - before| / max |before|, at
most TOLERANCE) and the ``mobile`` and ``flops`` costs are finite and positive (``uncosted``: the ops the
estimators list as not costed); or **refused**: one UnsupportedModelError naming the op. Anything else (another
exception, changed outputs, a bad cost) is **broken**. ``tp_groups``: the channel groups of Torch-Pruning's
dependency graph on the same model and input (classifier ignored; "n/a" when it is not installed).

    .venv/bin/python tools/coverage.py                   # every model, writes docs/coverage.md
    .venv/bin/python tools/coverage.py 'resnet*' vgg11   # fnmatch patterns; prints the table only
"""
from __future__ import annotations

import argparse
import collections
import datetime
import fnmatch
import importlib.util
import math
import multiprocessing
import platform
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

import energysplit
from energysplit.errors import UnsupportedModelError, first_line
from energysplit.graph.plan import Plan, Remove, Split
from energysplit.graph.surgery import apply_plan_, direction_shape

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "coverage.md"
TOLERANCE = 1e-4  # max |after - before| over max |before| (float32, batch of 2)
SIZES = (32, 64, 96, 128, 160, 224, 299)  # input sizes tried in order (square RGB)
# constructor arguments: auxiliary heads off (unused in eval), ViT's position embedding at a small size
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True},
          **{f"vit_{v}": {"image_size": 32} for v in ("b_16", "b_32", "l_16", "l_32")},
          "vit_h_14": {"image_size": 28}}
COLUMNS = ["model", "input", "status", "groups", "splittable", "prunable", "tp_groups", "mobile_mJ",
           "flops_MMAC", "uncosted", "max_err", "seconds", "reason"]


def all_models(patterns=()) -> list[str]:
    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in names if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct BatchNorm statistics and affine terms per channel, so a wrong BN edit changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def build(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """The model (random weights) and the smallest input shape of SIZES (a ViT: its image_size) it runs on."""
    torch.manual_seed(0)
    kwargs = KWARGS.get(name, {})
    model = randomise_(torchvision.models.get_model(name, weights=None, **kwargs))
    for size in (kwargs["image_size"],) if "image_size" in kwargs else SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
        except (RuntimeError, ValueError, AssertionError):
            continue
        return model, (3, size, size)
    raise RuntimeError(f"{name}: no input size of {SIZES} runs")


def consumer_columns_(model: nn.Module, consumer, channel: int) -> None:
    """Zero the input columns of ``consumer`` that read ``channel`` (block of ``repeat`` columns at
    ``offset``; for a grouped conv, in the rows of the conv group that reads them)."""
    m = model.get_submodule(consumer.module)
    w, groups, first = m.weight, getattr(m, "groups", 1), consumer.offset + channel * consumer.repeat
    with torch.no_grad():
        if groups == 1:
            w[:, first:first + consumer.repeat] = 0
            return
        cin, rows = w.shape[1], w.shape[0] // groups  # input columns and output rows per conv group
        for j in range(first, first + consumer.repeat):
            gi = j // cin
            w[gi * rows:(gi + 1) * rows, j % cin] = 0


def _channels(group, gen) -> list[int]:
    """One random channel in each of the group's blocks (a grouped conv's blocks change alike)."""
    blocks = getattr(group, "blocks", 1)
    width = group.width // blocks
    r = int(torch.randint(width, (1,), generator=gen))
    return [b * width + r for b in range(blocks)]


def split_plan(model, inventory, gen) -> Plan:
    """An eps = 0 split of one channel per block of every prunable group: a random unit direction where
    the group is splittable (flat over the producers of a residual stream), a pure duplicate elsewhere."""
    ops = []
    for g in inventory:
        for c in _channels(g, gen) if g.prunable else ():
            if g.splittable:
                v = torch.randn(direction_shape(model, g.producers), generator=gen)  # flat for a residual stream
                ops.append(Split(g.id, c, v / v.norm(), 0.0))
            else:
                ops.append(Split(g.id, c))
    return Plan(ops)


def remove_plan_(model, inventory, gen) -> Plan:
    """One channel per block of every prunable group (keeping >= 2 per block), its consumer columns
    zeroed first, so the removed channels carry nothing."""
    ops = []
    for g in inventory:
        if g.prunable and g.width // getattr(g, "blocks", 1) >= 3:
            chans = _channels(g, gen)
            for consumer in g.consumers:
                for c in chans:
                    consumer_columns_(model, consumer, c)
            ops.append(Remove(g.id, tuple(chans)))
    return Plan(ops)


def rel_error(after: torch.Tensor, before: torch.Tensor) -> float:
    if after.shape != before.shape:
        return math.inf
    return float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))


def tp_groups(model: nn.Module, shape, classes: int, timeout: float = 60.0) -> int | str:
    """Channel groups of Torch-Pruning's dependency graph (roots: conv/linear), the classifier layers (out
    = ``classes``) ignored as in Torch-Pruning's own torchvision benchmark; "n/a" when it is not installed.
    Counted in a forked process, stopped after ``timeout`` seconds (its graph search can take very long)."""
    if importlib.util.find_spec("torch_pruning") is None:
        return "n/a"
    ctx = multiprocessing.get_context("fork")  # the child gets the model without pickling it
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=lambda: send.send(_tp_count(model, shape, classes)), daemon=True)
    proc.start()
    send.close()
    try:
        result = receive.recv() if receive.poll(timeout) else f"timeout ({timeout:.0f} s)"
    except EOFError:  # the child died (out of memory, a crash in native code)
        result = f"error: died ({proc.exitcode})"
    proc.kill()
    proc.join()
    return result


def _tp_count(model: nn.Module, shape, classes: int) -> int | str:
    import torch_pruning as tp

    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == classes
               or isinstance(m, nn.Conv2d) and m.out_channels == classes]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, *shape), ignored_layers=ignored,
                                                       verbose=False)
            return sum(1 for _ in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))
    except Exception as exc:  # a failure of the peer is a fact for the table, not ours to fix
        return f"error: {type(exc).__name__}"


def check_model(name: str, torch_pruning: bool = True) -> dict:
    """One row of the table (see the module docstring for what handled / refused / broken mean)."""
    start, row = time.perf_counter(), {"model": name, "status": "broken", "reason": ""}
    try:
        _check(name, row, torch_pruning)
    except UnsupportedModelError as exc:
        row.update(status="refused", reason=first_line(exc, 300))
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="broken", reason=f"{type(exc).__name__}: {first_line(exc, 200)} "
                                           f"({Path(tb.filename).name}:{tb.lineno})")
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _check(name: str, row: dict, torch_pruning: bool) -> None:
    model, shape = build(name)
    row["input"] = "x".join(map(str, shape))
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
    row["tp_groups"] = tp_groups(model, shape, before.shape[-1]) if torch_pruning else "n/a"
    inventory = energysplit.build_inventory(model, shape)
    row.update(groups=len(inventory), splittable=len(inventory.splittable()), prunable=len(inventory.prunable()))
    uncosted = {}
    for target, column, scale in (("mobile", "mobile_mJ", 1.0), ("flops", "flops_MMAC", 1e-6)):
        report = energysplit.create_target(target).estimate(model, shape)
        row[column] = round(report.total * scale, 4)
        uncosted.update(dict.fromkeys(report.unsupported))
        if not (math.isfinite(report.total) and report.total > 0):
            row["reason"] = f"{target} cost is {report.total}"
            return
    kinds = collections.Counter(u.rsplit(" (", 1)[-1].rstrip(")") for u in uncosted)
    row["uncosted"] = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
    gen, errors = torch.Generator().manual_seed(1), {}
    for step, make_plan in (("eps = 0 split", split_plan), ("zero-column removal", remove_plan_)):
        with torch.no_grad():
            plan = make_plan(model, inventory, gen)  # the removal zeroes its consumer columns first
            before = model(x)
        inventory = apply_plan_(model, inventory, plan)
        with torch.no_grad():
            errors[step] = rel_error(model(x), before)
    worst = max(errors, key=errors.get)
    row["max_err"] = float(f"{errors[worst]:.2g}")
    if errors[worst] > TOLERANCE:
        row["reason"] = f"outputs changed by the {worst} (relative error {errors[worst]:.2g})"
        return
    row["status"] = "handled"


def frame(rows):
    import pandas as pd

    return pd.DataFrame([{c: r.get(c, "") for c in COLUMNS} for r in rows], columns=COLUMNS)


def totals(rows) -> dict:
    """handled / refused / broken, and the Torch-Pruning comparison on the handled models."""
    status = collections.Counter(r["status"] for r in rows)
    compared = [r for r in rows if r["status"] == "handled" and isinstance(r.get("tp_groups"), int)]
    return {"models": len(rows), **{k: status[k] for k in ("handled", "refused", "broken")},
            "tp_counted": sum(isinstance(r.get("tp_groups"), int) for r in rows), "tp_compared": len(compared),
            "prunable_ge_tp": sum(r["prunable"] >= r["tp_groups"] for r in compared)}


def refusals(rows) -> dict[str, list[str]]:
    """Refused models grouped by the op their error names (``unsupported op OP at ...``)."""
    out = collections.defaultdict(list)
    for r in rows:
        if r["status"] == "refused":
            op = r["reason"].split(" at node ")[0].removeprefix("unsupported op ")
            out[op].append(r["model"])
    return dict(out)


def versions() -> dict:
    from importlib.metadata import distributions

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    paths = ("energysplit/graph", "energysplit/cost", "estimators")  # what the check exercises
    dirty = f" (+ uncommitted changes under {', '.join(paths)})" if git("status", "--porcelain", "--", *paths) else ""
    have = {d.metadata["Name"].lower(): d.version for d in distributions()}
    return {"energysplit commit": git("rev-parse", "--short", "HEAD") + dirty, "python": platform.python_version(),
            **{p: have.get(p, "not installed") for p in ("torch", "torchvision", "torch-pruning")}}


FEWER = ("Torch-Pruning also prunes the residual streams that LayerNorm normalizes (a ViT's token stream, "
         "ConvNeXt's four stage streams). energysplit keeps them frozen, with that reason in the inventory: "
         "removing or splitting a channel of a LayerNorm's input changes the mean and variance every other "
         "channel is normalized by, so no such edit leaves the function unchanged (and nn.MultiheadAttention "
         "ties a ViT stream's width to its embedding dim). The MLP neurons of those blocks are prunable and "
         "splittable.")


def fewer_than_tp(rows) -> list[str]:
    """Handled models where energysplit's prunable groups are fewer than Torch-Pruning's groups."""
    return [f"- {r['model']}: {r['prunable']} prunable, Torch-Pruning {r['tp_groups']}" for r in rows
            if r["status"] == "handled" and isinstance(r.get("tp_groups"), int) and r["prunable"] < r["tp_groups"]]


def write_doc(rows, seconds: float, command: str, info: dict, path: Path = DOC) -> None:
    t = totals(rows)
    lines = ["# Coverage of the torchvision classification networks", "",
             "Generated by `tools/coverage.py`; `tests/test_coverage.py` runs the same check (a curated set in "
             "the default suite, every model under `-m slow`). **It reflects the tracer at the commit below, at "
             "the time of the run**: re-run the command after changing `energysplit/graph/`.", "",
             " ".join(__doc__.split("\n\n")[1].split()).replace("SIZES", ", ".join(map(str, SIZES)))
             .replace("TOLERANCE", f"{TOLERANCE:g}"), "",
             f"- Command: `{command}`", f"- Date: {datetime.date.today().isoformat()}; run time {seconds / 60:.1f} min "
             f"(one thread)", *(f"- {k}: {v}" for k, v in info.items()), "",
             "## Totals", "",
             f"- {t['models']} models: **{t['handled']} handled, {t['refused']} refused, {t['broken']} broken**",
             f"- Torch-Pruning counted groups on {t['tp_counted']} models; on {t['tp_compared']} handled models with a "
             f"count, energysplit's prunable groups >= Torch-Pruning's groups on {t['prunable_ge_tp']}", "",
             "## Refusals by op", ""]
    lines += [f"- {op}: {', '.join(models)}" for op, models in refusals(rows).items()] or ["- none"]
    lines += ["", "## Broken", ""] + ([f"- {r['model']}: {r['reason']}" for r in rows if r["status"] == "broken"]
                                      or ["- none"])
    lines += ["", "## Fewer prunable groups than Torch-Pruning", ""] + (
        [FEWER, ""] + fewer_than_tp(rows) if fewer_than_tp(rows) else ["- none"])
    lines += ["", "## Table", "", frame(rows).to_markdown(index=False), ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("patterns", nargs="*", help="fnmatch patterns of model names (default: every model)")
    parser.add_argument("--doc", type=Path, help=f"write the doc here (default {DOC} when no pattern)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, start, info = [], time.perf_counter(), versions()  # the versions the run starts with
    for name in all_models(args.patterns):
        rows.append(check_model(name))
        print({k: rows[-1].get(k, "") for k in COLUMNS}, flush=True)
    seconds = time.perf_counter() - start
    print(frame(rows).to_string(index=False, max_colwidth=80))
    print(totals(rows), f"{seconds:.0f} s")
    doc = args.doc or (None if args.patterns else DOC)
    if doc is not None:
        command = "python tools/coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_doc(rows, seconds, command.strip(), info, doc)
        print(f"wrote {doc}")
    return 1 if any(r["status"] == "broken" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
