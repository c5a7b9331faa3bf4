"""A benchmark's summary: mean and spread over seeds per model, budget and method (summary.csv, summary.md
with the goal check of its protocol) and the accuracy-vs-cost plot (pareto.png)."""
from __future__ import annotations

from pathlib import Path


def summarise(out: str | Path, protocol: str = "compress", metric: str = "test_accuracy"):
    """Mean and std over seeds per model/budget/method -> summary.csv, summary.md and pareto.png, ranked by
    ``metric`` (``val_accuracy`` in a tuning run, which never reads the test split)."""
    import pandas as pd

    out = Path(out)
    df = pd.read_csv(out / "results.csv")
    if metric != "test_accuracy":  # the tables below rank by the column test_accuracy: this run's accuracy
        df = df.drop(columns="test_accuracy").rename(columns={metric: "test_accuracy"})
    ok = df[df.status == "ok"]
    cols = ["test_accuracy", "flops_MACs", "mobile_mJ", "cpu_ms", "params", "cost_on_target", "wall_s"]
    cols += [c for c in ("epochs", "mac_epochs") if c in df]  # training compute (sweeps since the grow protocol)
    summary = ok.groupby(["model", "target", "budget_name", "method"])[cols].agg(["mean", "std", "count"])
    summary.columns = ["_".join(c) for c in summary.columns]
    summary = summary.reset_index()
    summary.rename(columns=lambda c: c.replace("test_accuracy", metric)).to_csv(out / "summary.csv", index=False)
    goals = {"compress": goal_lines, "grow": growth_goal_lines, "scratch": scratch_goal_lines}[protocol]
    split = "test split" if metric == "test_accuracy" else "validation split (a tuning run: the test split was not read)"
    lines = [f"Protocol: {protocol}. Accuracy on the {split}.", "", markdown_summary(summary)] + goals(summary)
    failed = df[df.status != "ok"]
    if len(failed):
        lines += ["", "Failed runs:"] + [f"- {r.model} {r.target}@{r.budget_name} {r.method} seed "
                                         f"{'-' if pd.isna(r.seed) else int(r.seed)}: {r.error}"
                                         for _, r in failed.iterrows()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if len(ok):  # a sweep whose every job failed (a budget no seed reaches) has nothing to plot
        pareto_plot(ok, out / "pareto.png", "test accuracy" if metric == "test_accuracy" else "validation accuracy")
    return summary


def markdown_summary(summary) -> str:
    """The summary as a Markdown table: per model, target and budget, the methods by mean accuracy."""
    s = summary.sort_values(["model", "target", "budget_name", "test_accuracy_mean"],
                            ascending=[True, True, False, False])
    table = s[["model", "target", "budget_name", "method"]].rename(columns={"budget_name": "budget"})
    table["accuracy (mean ± std, n)"] = [f"{m:.4f} ± {sd:.4f} ({int(n)})" for m, sd, n in zip(
        s.test_accuracy_mean, s.test_accuracy_std.fillna(0.0), s.test_accuracy_count)]
    table["mobile mJ"] = s.mobile_mJ_mean.map("{:.4f}".format)
    table["cpu ms"] = s.cpu_ms_mean.map("{:.3f}".format)
    table["MACs"] = s.flops_MACs_mean.map("{:,.0f}".format)
    if "epochs_mean" in s and s.epochs_mean.notna().any():  # the training compute, where the sweep counted it
        table["epochs"] = s.epochs_mean.map(lambda v: "-" if v != v else f"{v:.3g}")
        table["MAC-epochs"] = s.mac_epochs_mean.map(lambda v: "-" if v != v else f"{v:.3g}")
    return table.to_markdown(index=False, disable_numparse=True,
                             colalign=["left"] * 5 + ["right"] * (len(table.columns) - 5))


PRUNERS = ("l1", "taylor", "slimming", "random")
UNIFORM = ("uniform", "uniform-scratch")


def required_margin(budget_name: str) -> float:
    """Issue 17's goal for splitting over the best pruner, in points: >= 0, and >= +0.5 at 25% of the model's
    cost or below."""
    try:
        return 0.5 if float(budget_name) <= 0.25 else 0.0
    except ValueError:  # an absolute budget (e.g. 2.5mJ): no fraction to read
        return 0.0


def goal_lines(summary) -> list[str]:
    """The product's goal per model and budget: splitting's mean accuracy minus the best pruning
    baseline's (goal, issue 17: >= 0 points, >= +0.5 at 25% of the cost or below), and whether it
    Pareto-dominates each uniform-width method (at least as accurate, at no more cost on the budget's target)."""
    lines = ["", "Goal check (splitting vs the best pruning baseline: >= 0 points, >= +0.5 at 25% or below; "
                 "vs uniform width):", ""]
    for (model, target, budget), g in summary.groupby(["model", "target", "budget_name"]):
        by = g.set_index("method")
        if "splitting" not in by.index:
            continue
        split = by.loc["splitting"]
        parts = []
        pruners = by[by.index.isin(PRUNERS)]
        if len(pruners):
            best = pruners.test_accuracy_mean.idxmax()
            gap = 100 * (split.test_accuracy_mean - pruners.test_accuracy_mean.max())
            parts.append(f"{gap:+.2f} points vs {best} ({_met(gap >= required_margin(budget) - 1e-9)})")
        for name in UNIFORM:
            if name in by.index:
                u = by.loc[name]
                dominates = (split.test_accuracy_mean >= u.test_accuracy_mean
                             and split.cost_on_target_mean <= u.cost_on_target_mean)
                parts.append(f"{'dominates' if dominates else 'does not dominate'} {name}")
        if parts:  # a sweep of splitting variants alone has nothing to check
            lines.append(f"- {model} {target}@{budget}: " + "; ".join(parts))
    return lines if len(lines) > 3 else []


def growth_goal_lines(summary) -> list[str]:
    """The grow protocol's goals per model and budget: splitting >= 1 point above the best other method,
    and above splitting-blind and splitting-random (energy-awareness and the splitting index carry weight)."""
    lines = ["", "Goal check (splitting vs the best other method, >= +1 point; vs the ablations, > 0):", ""]
    for (model, target, budget), g in summary.groupby(["model", "target", "budget_name"]):
        by = g.set_index("method").test_accuracy_mean
        if "splitting" not in by.index or len(by) < 2:
            continue
        others = by.drop("splitting")
        gap = 100 * (by["splitting"] - others.max())
        parts = [f"{gap:+.2f} points vs {others.idxmax()} ({'met' if gap >= 1.0 else 'not met'})"]
        parts += [f"{100 * (by['splitting'] - by[m]):+.2f} vs {m} ({_met(by['splitting'] > by[m])})"
                  for m in ("splitting-blind", "splitting-random") if m in by.index]
        lines.append(f"- {model} {target}@{budget}: " + "; ".join(parts))
    return lines if len(lines) > 3 else []


def scratch_goal_lines(summary) -> list[str]:
    """The scratch protocol's goal: splitting's architecture, trained from scratch, at least matches the
    uniform and Taylor architectures."""
    lines = ["", "Goal check (splitting's architecture from scratch vs uniform-scratch and taylor's, >= 0):", ""]
    for (model, target, budget), g in summary.groupby(["model", "target", "budget_name"]):
        by = g.set_index("method").test_accuracy_mean
        if "splitting" not in by.index:
            continue
        parts = [f"{100 * (by['splitting'] - by[m]):+.2f} points vs {m} ({_met(by['splitting'] >= by[m])})"
                 for m in ("uniform-scratch", "taylor") if m in by.index]
        if parts:
            lines.append(f"- {model} {target}@{budget}: " + "; ".join(parts))
    return lines if len(lines) > 3 else []


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def pareto_plot(df, path: Path, ylabel: str = "test accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(df.model.unique())
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        sub = df[df.model == model]
        for j, (col, label) in enumerate([("mobile_mJ", "energy on mobile [mJ]"), ("cpu_ms", "ONNX Runtime latency [ms]")]):
            ax = axes[i][j]
            for method, g in sub.groupby("method"):
                agg = g.groupby(["target", "budget_name"]).agg(x=(col, "mean"), y=("test_accuracy", "mean"),
                                                               e=("test_accuracy", "std")).reset_index()
                ax.errorbar(agg.x, agg.y, yerr=agg.e.fillna(0), fmt="*" if method == "splitting" else "o",
                            ms=11 if method == "splitting" else 6, capsize=3, label=method)
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.set_title(model)
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
