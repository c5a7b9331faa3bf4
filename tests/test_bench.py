import csv
from dataclasses import replace

from energysplit.pipeline.bench import PROFILES, run_benchmark


def test_tiny_benchmark_runs_end_to_end_and_resumes(tmp_path):
    config = replace(PROFILES["tiny"], methods=("splitting", "l1", "no-such-method"), train_subset=300,
                     base_epochs=1, epochs=0.3)
    out = run_benchmark(config, tmp_path / "bench", command="test", log=lambda s: None)
    rows = list(csv.DictReader(open(out / "results.csv")))
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"base", "splitting", "l1", "no-such-method"}
    assert by_method["no-such-method"]["status"] == "failed"  # recorded, and the sweep went on
    assert "unknown method" in by_method["no-such-method"]["error"]
    base_cost = float(by_method["base"]["mobile_mJ"])
    for method in ("splitting", "l1"):
        row = by_method[method]
        assert row["status"] == "ok"
        assert float(row["cost_on_target"]) <= float(row["budget"]) <= 0.5 * base_cost * (1 + 1e-9)
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0 and float(row["cpu_ms"]) > 0
    for name in ("summary.csv", "summary.md", "pareto.png", "config.json"):
        assert (out / name).exists(), name
    # a second run skips every finished row and retries the failed one (still failing: one row again)
    logs = []
    run_benchmark(config, out, log=logs.append)
    again = list(csv.DictReader(open(out / "results.csv")))
    assert len(again) == len(rows) and again[-1]["method"] == "no-such-method" and again[-1]["status"] == "failed"
    assert [r for r in again if r["status"] == "ok"] == [r for r in rows if r["status"] == "ok"]
    assert any("retrying 1 failed jobs" in line for line in logs)


def test_goal_check_compares_splitting_with_the_best_pruner_and_uniform():
    import pandas as pd

    from energysplit.pipeline.summary import goal_lines

    rows = [("splitting", 0.80, 1.0), ("taylor", 0.79, 1.0), ("l1", 0.70, 1.0), ("uniform", 0.78, 1.0),
            ("uniform-scratch", 0.81, 0.9)]
    summary = pd.DataFrame([{"model": "m", "target": "mobile", "budget_name": "0.5", "method": m,
                             "test_accuracy_mean": a, "cost_on_target_mean": c} for m, a, c in rows])
    line = goal_lines(summary)[-1]
    assert "+1.00 points vs taylor (met)" in line
    assert "dominates uniform;" in line and "does not dominate uniform-scratch" in line
    assert goal_lines(summary[summary.method != "splitting"]) == []
    assert goal_lines(summary[summary.method == "splitting"]) == []  # no baseline: no empty goal line
    # issue 17's rule: >= 0 points, and >= +0.5 at 25% of the cost or below
    for budget, split, verdict in (("0.5", 0.7905, "+0.05 points vs taylor (met)"),
                                   ("0.5", 0.7895, "-0.05 points vs taylor (not met)"),
                                   ("0.25", 0.7930, "+0.30 points vs taylor (not met)"),
                                   ("0.1", 0.7950, "+0.50 points vs taylor (met)")):
        cell = summary.assign(budget_name=budget)
        cell.loc[cell.method == "splitting", "test_accuracy_mean"] = split
        assert verdict in goal_lines(cell)[-1], (budget, split)


def test_bench_builds_its_base_models_with_the_requested_activation(digits, tmp_path):
    import torch

    from energysplit.pipeline.bench import base_model

    config = replace(PROFILES["tiny"], act="silu", base_epochs=0)
    model, arch = base_model("vgg_small", config, digits.subset(train=64, val=32), tmp_path, log=lambda s: None)
    assert arch["kwargs"]["act"] == "silu"
    assert any(isinstance(m, torch.nn.SiLU) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())


def test_workers_share_one_sweep(tmp_path):
    """Two --worker processes run at once on one folder: the base model is trained once, every job runs
    exactly once, and the CSV stays whole (one header, no torn rows)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "energysplit", "bench", "--profile", "tiny", "--methods", "l1,uniform,random",
           "--out", str(out), "--worker"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum(log.count("base vgg_small: val acc") for log in logs) == 1  # trained by one, loaded by the other
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("model,") and not any(line.startswith("model,") for line in lines[1:])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["method"], r["seed"]) for r in rows) == [("base", ""), ("l1", "0"), ("random", "0"),
                                                              ("uniform", "0")]
    assert all(r["status"] == "ok" for r in rows)
    assert [r.get("worker") for r in json.loads((out / "config.json").read_text())["runs"]] == [True, True]


def test_a_claim_by_a_dead_process_is_taken_over(tmp_path):
    import json

    from energysplit.pipeline.bench import _claim

    key = ("m", "mobile", "0.5", "l1", "0")
    (tmp_path / "claims.json").write_text(json.dumps({"|".join(key): {"host": __import__("socket").gethostname(),
                                                                        "pid": 2 ** 22 + 1}}))  # no such process
    assert _claim(tmp_path, key)
    other = ("m", "mobile", "0.5", "l1", "1")
    claims = json.loads((tmp_path / "claims.json").read_text())
    claims["|".join(other)] = {"host": "another-host", "pid": 1}
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    assert not _claim(tmp_path, other)  # another host's claim counts as live


def test_summary_tables_the_mean_and_std_over_seeds(tmp_path):
    from energysplit.pipeline.bench import FIELDS
    from energysplit.pipeline.summary import summarise

    def row(method, seed, acc, status="ok", error=""):
        return {"model": "m", "target": "mobile", "budget_name": "0.5", "budget": 1.0, "unit": "mJ", "method": method,
                "seed": seed, "test_accuracy": acc, "flops_MACs": 1234567.0, "mobile_mJ": 0.5, "cpu_ms": 0.25,
                "params": 100, "cost_on_target": 0.5, "wall_s": 1.0, "status": status, "error": error}

    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows([row("l1", 0, 0.70), row("l1", 1, 0.80), row("splitting", 0, 0.90),
                          row("taylor", 0, "", "failed", "BudgetError: unreachable")])
    summarise(tmp_path)
    md = (tmp_path / "summary.md").read_text().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md if line.startswith("|")]
    assert cells[0] == ["model", "target", "budget", "method", "accuracy (mean ± std, n)", "mobile mJ", "cpu ms", "MACs"]
    # sorted by accuracy; l1: mean 0.75, sample std of (0.7, 0.8) = 0.0707; a single seed shows std 0
    assert cells[2:] == [["m", "mobile", "0.5", "splitting", "0.9000 ± 0.0000 (1)", "0.5000", "0.250", "1,234,567"],
                         ["m", "mobile", "0.5", "l1", "0.7500 ± 0.0707 (2)", "0.5000", "0.250", "1,234,567"]]
    assert "- m mobile@0.5 taylor seed 0: BudgetError: unreachable" in md
    assert "- m mobile@0.5: +15.00 points vs l1 (met)" in md
    assert (tmp_path / "pareto.png").exists() and (tmp_path / "summary.csv").exists()


def test_a_sweep_whose_every_job_failed_is_summarised_without_a_plot(tmp_path):
    from energysplit.pipeline.bench import FIELDS
    from energysplit.pipeline.summary import summarise

    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerow({"model": "m", "target": "mobile", "budget_name": "0.25", "budget": 1.0, "unit": "mJ",
                         "method": "splitting", "seed": 0, "status": "failed",
                         "error": "BudgetError: the seed already costs more"})
    summarise(tmp_path, "grow")
    assert "- m mobile@0.25 splitting seed 0: BudgetError: the seed already costs more" in \
        (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "pareto.png").exists()


def test_the_lock_excludes_another_process(tmp_path):
    """While one process holds the sweep's lock another one waits (filelock, across processes)."""
    import subprocess
    import sys

    from energysplit.pipeline.bench import _locked

    code = ("import sys; from pathlib import Path; from filelock import FileLock, Timeout\n"
            "try:\n    FileLock(Path(sys.argv[1]) / '.lock', timeout=0.2).acquire()\n    print('acquired')\n"
            "except Timeout:\n    print('timeout')")
    with _locked(tmp_path):
        held = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert (held.stdout.strip(), free.stdout.strip()) == ("timeout", "acquired"), (held.stderr, free.stderr)


def test_the_grow_protocol_records_training_compute_and_keeps_its_folder(tmp_path):
    """The tiny grow profile through run_benchmark: every row trained E epochs in all, with its MAC-epochs in
    the CSV and the summary; a folder of one protocol refuses another."""
    import pytest

    from energysplit.errors import ConfigError
    from energysplit.pipeline.bench import profile
    from energysplit.pipeline.seed_growth import SeedGrowth

    config = replace(profile("tiny", "grow"), methods=("splitting", "uniform-scratch"), train_subset=300, epochs=1.0,
                     growth=SeedGrowth(seed_fraction=0.3, step_growth=2.0, score_samples=128))
    out = run_benchmark(config, tmp_path / "grow", command="test", log=lambda s: None)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["method"] for r in rows) == ["splitting", "uniform-scratch"]  # no base model in this protocol
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert float(row["epochs"]) == pytest.approx(1.0)
        assert float(row["mac_epochs"]) >= float(row["flops_MACs"]) * 0.1 > 0
        assert float(row["cost_on_target"]) <= float(row["budget"])
    summary = (out / "summary.md").read_text()
    assert summary.startswith("Protocol: grow.") and "MAC-epochs" in summary and "vs uniform-scratch" in summary
    assert (out / "archs").is_dir() and len(list((out / "archs").iterdir())) == 2
    with pytest.raises(ConfigError, match="holds a grow sweep"):
        run_benchmark(replace(config, protocol="compress"), out, log=lambda s: None)


def test_rows_append_to_a_csv_begun_before_the_new_columns(tmp_path):
    from energysplit.pipeline.bench import FIELDS, _append

    old = [f for f in FIELDS if f not in ("epochs", "mac_epochs")]
    (tmp_path / "results.csv").write_text(",".join(old) + "\n")
    _append(tmp_path / "results.csv", {"model": "m", "method": "l1", "epochs": 2.0, "status": "ok"})
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert list(rows[0]) == old and rows[0]["method"] == "l1" and rows[0]["status"] == "ok"


def test_a_tuning_run_ranks_by_validation_and_never_reads_the_test_split(tmp_path, monkeypatch):
    """--tuning: every row has a validation accuracy and no test accuracy, the summary says which split
    it ranks by, and the test split is never touched (it raises here); a final run cannot share its folder."""
    import pytest
    from torch.utils.data import Dataset

    import energysplit.training.data as data_module
    from energysplit.errors import ConfigError

    class Sealed(Dataset):
        def __len__(self):
            raise AssertionError("a tuning run read the test split")

        def __getitem__(self, i):
            raise AssertionError("a tuning run read the test split")

    load = data_module.load_dataset
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: replace(load(*a, **k), test=Sealed()))
    config = replace(PROFILES["tiny"], methods=("l1",), base_epochs=1, epochs=0.3, tuning=True)
    out = run_benchmark(config, tmp_path / "tune", command="test", log=lambda s: None)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows and all(r["status"] == "ok" and r["test_accuracy"] == "" and 0 <= float(r["val_accuracy"]) <= 1
                        for r in rows)
    assert (out / "summary.md").read_text().startswith("Protocol: compress. Accuracy on the validation split")
    assert "val_accuracy_mean" in (out / "summary.csv").read_text().splitlines()[0]
    monkeypatch.setattr(data_module, "load_dataset", load)
    with pytest.raises(ConfigError, match="holds a tuning sweep"):
        run_benchmark(replace(config, tuning=False), out, log=lambda s: None)


def test_a_folder_holds_one_number_of_epochs(tmp_path):
    """Rows are keyed by model, budget, method and seed, so a run with another E needs its own folder."""
    import pytest

    from energysplit.errors import ConfigError

    config = replace(PROFILES["tiny"], methods=("l1",), base_epochs=1, epochs=0.3)
    run_benchmark(config, tmp_path, command="test", log=lambda s: None)
    with pytest.raises(ConfigError, match="holds a sweep with 0.3 epochs; give this run with 0.6 its own --out"):
        run_benchmark(replace(config, epochs=0.6), tmp_path, log=lambda s: None)
    with pytest.raises(ConfigError, match="epochs must be > 0"):
        replace(config, epochs=0.0)
