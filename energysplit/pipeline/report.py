"""The outputs of ``energysplit compress`` and ``energysplit grow`` (``report["job"]``): archive, checked
ONNX, report.json/.md, steps.csv, growth.png, config.json. Everything is written into a staging directory
first and then moved into place, with report.json last, so a directory either has a complete report or none."""
from __future__ import annotations

import csv
import io
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .._io import atomic_write_json, atomic_write_text


def layer_widths(model, input_shape) -> dict[str, int]:
    from ..graph.trace import build_inventory

    return build_inventory(model, input_shape).widths()


def versions() -> dict:
    import onnxruntime

    return {"energysplit": __import__("energysplit").__version__, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads()}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _budget_check(b: dict) -> str:
    """The final cost against the budget: the prediction the method worked with, and the target's own
    estimate (a measurement for latency targets), which can disagree."""
    measured = b.get("final_measured", b["final_cost"])
    line = (f"- budget check: predicted {b['final_cost']:.4g} {b['unit']}, "
            f"{'measured' if abs(measured - b['final_cost']) > 1e-12 else 'estimated'} {measured:.4g} {b['unit']} "
            f"(budget {b['budget']:.4g})")
    if measured > b["budget"] * (1 + 1e-9):
        line += (f": **over the budget as measured, by {measured / b['budget'] - 1:.0%}**; the latency table "
                 "under-predicts this model here: ask for a lower budget, or re-measure on a quiet machine")
    return line


def table_line(target: str, info: dict) -> str:
    """Which latency table priced ``target`` (its file, or this host's measured table), with its digest."""
    where = (f"the table file `{info['table']}` (measured on {info['host']})" if info["source"] == "file"
             else f"the table {info['source']} (this host's cache `{info['table']}`)")
    return (f"- {target} costs priced by {where}: sha256 {info['sha256'][:16]}, {info['entries']} entries, "
            f"ONNX Runtime {info['onnxruntime']}, {info['threads']} thread(s); rerun elsewhere with "
            f"`--lut` and a copy of that file (`energysplit lut FILE` writes one)")


def markdown_table(rows: list, columns: list[str]) -> str:
    """A Markdown table of already formatted cells (pandas, through ``tabulate``): the first column
    left-aligned, the figures right-aligned."""
    import pandas as pd

    return pd.DataFrame(rows, columns=columns).to_markdown(index=False, disable_numparse=True,
                                                           colalign=["left"] + ["right"] * (len(columns) - 1))


def metrics(report: dict) -> list[tuple[str, str, str, str]]:
    """(metric, before, after, after/before) per measured metric, formatted."""
    b, a = report["before"], report["after"]
    return [(key, _fmt(b[key]), _fmt(a[key]), _ratio(report, key)) for key in b]


def method(report: dict) -> str:
    return report.get("method") or report["config"]["method"]


def markdown(report: dict) -> str:
    lines = [f"# energysplit {report.get('job', 'compress')} report", "",
             f"- command: `{report['command']}`",
             f"- method: **{method(report)}**, target **{report['budget']['target']}**, budget "
             f"{report['budget']['budget']:.4g} {report['budget']['unit']} "
             f"({report['budget']['budget'] / report['budget']['base_cost']:.0%} of "
             f"{report.get('reference', 'the input model')})",
             f"- data: {report['data']['name']} ({report['data']['train']} train / {report['data']['val']} val / "
             f"{report['data']['test']} test images)",
             "- time: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in report["seconds"].items()),
             f"- growth stopped: {report['stop_reason']}" if report.get("stop_reason") else "",
             ("- epochs: " + ", ".join(f"{k} {v:.3g}" for k, v in report["epochs"].items())) if "epochs" in report
             else "",
             _budget_check(report["budget"]),
             *(table_line(name, info) for name, info in (report.get("cost_tables") or {}).items()),
             "", markdown_table(metrics(report), ["metric", "before", "after", "after/before"])]
    lines += ["", "Units: MACs = multiply-accumulates (1 MAC = 2 FLOPs); mJ per inference (batch 1) from the "
              "target's energy table; ms = ONNX Runtime median latency, batch 1, on this host.", "",
              "## Widths per neuron group", "",
              markdown_table([(gid, w, report["widths"]["after"].get(gid, "-"))
                              for gid, w in report["widths"]["before"].items()], ["group", "before", "after"])]
    steps = report.get("growth_steps") or []
    if steps:
        lines += ["", "## Growth steps", "", markdown_table(
            [(s["step"], f"{s['cost_before']:.4g}", f"{s['cost_after']:.4g}", s["neurons_split"],
              f"{s['val_accuracy']:.4f}", f"{s['score_seconds']:.1f}", f"{s['train_seconds']:.1f}") for s in steps],
            ["step", "cost before", "cost after", "split", "val acc", "scoring s", "training s"])]
    lines += ["", f"ONNX: `model.onnx` checked in ONNX Runtime, max abs diff {report['onnx']['max_abs_diff']:.2e}.",
              "Reload the model with `energysplit.graph.archive.load_model('model.es')`.", ""]
    return "\n".join(lines)


def steps_csv(steps: list[dict]) -> str:
    buf = io.StringIO()
    if steps:
        writer = csv.DictWriter(buf, fieldnames=[k for k in steps[0] if k != "split_per_group"] + ["split_per_group"])
        writer.writeheader()
        for s in steps:
            writer.writerow({**s, "split_per_group": ";".join(f"{k}={v}" for k, v in s["split_per_group"].items())})
    else:
        buf.write("step\n")
    return buf.getvalue()


def growth_plot(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = report["budget"]["unit"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    steps = report.get("growth_steps") or []
    grown = report.get("job") == "grow"  # before = the trained seed, after = the grown network
    if steps:
        ax.axvline(steps[0]["cost_before"], ls=":", color="tab:blue",
                   label="seed (trained from scratch)" if grown else "seed (pruned input model)")
        ax.plot([s["cost_after"] for s in steps], [s["val_accuracy"] for s in steps], "o-",
                label="growth steps (val, after fine-tune)")
        for s in steps:
            ax.annotate(str(s["step"]), (s["cost_after"], s["val_accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    target_key = f"{report['budget']['target']} [{unit}]"
    ax.scatter([report["before"].get(target_key, report["budget"]["base_cost"])], [report["before"]["test_accuracy"]],
               marker="s", color="k", label="seed (test)" if grown else "input model (test)")
    ax.scatter([report["after"].get(target_key, report["budget"]["final_cost"])], [report["after"]["test_accuracy"]],
               marker="*", s=120, color="tab:red", label="grown (test)" if grown else "compressed (test)")
    ax.axvline(report["budget"]["budget"], ls="--", color="gray", label="budget")
    ax.set_xlabel(f"{report['budget']['target']} cost [{unit}]")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{method(report)} on {report['data']['name']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(report: dict) -> str:
    """The short before/after table printed at the end of a run."""
    import pandas as pd

    table = pd.DataFrame(metrics(report), columns=["", "before", "after", "after/before"]).set_index("")
    table.index.name = None
    return table.to_string(col_space=13)


def _ratio(report: dict, key: str) -> str:
    b, a = report["before"][key], report["after"][key]
    return f"{a / b:.3f}" if isinstance(b, (int, float)) and b else "-"


def write_outputs(out: Path, report: dict, base, model, input_shape, started: float) -> dict:
    """Complete ``report`` (widths, versions, ONNX check, total time) and write every output into ``out``:
    staged in ``out/.staging``, then renamed into place with report.json last."""
    from ..graph.archive import save_model
    from .export import export_onnx

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    stage = out / ".staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    report["widths"] = {"before": layer_widths(base, input_shape), "after": layer_widths(model, input_shape)}
    report["versions"] = versions()
    save_model(model, stage / "model.es", report["arch"], input_shape,
               meta={"budget": report["budget"], "method": method(report)})
    report["onnx"] = asdict(export_onnx(model, stage / "model.onnx", input_shape))
    report["onnx"]["path"] = "model.onnx"
    atomic_write_text(stage / "steps.csv", steps_csv(report["growth_steps"]))
    growth_plot(stage / "growth.png", report)
    atomic_write_json(stage / "config.json", {"command": report["command"], "config": report["config"]})
    report["seconds"].update(outputs=time.perf_counter() - t0, total=time.perf_counter() - started)
    atomic_write_text(stage / "report.md", markdown(report))
    atomic_write_json(stage / "report.json", report)
    for name in ("model.es", "model.onnx", "steps.csv", "growth.png", "config.json", "report.md", "report.json"):
        os.replace(stage / name, out / name)
    stage.rmdir()
    return report
