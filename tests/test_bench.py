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
    # a second run skips every finished row
    run_benchmark(config, out, log=lambda s: None)
    assert len(list(csv.DictReader(open(out / "results.csv")))) == len(rows)


def test_goal_check_compares_splitting_with_the_best_pruner_and_uniform():
    import pandas as pd

    from energysplit.pipeline.bench import goal_lines

    rows = [("splitting", 0.80, 1.0), ("taylor", 0.79, 1.0), ("l1", 0.70, 1.0), ("uniform", 0.78, 1.0),
            ("uniform-scratch", 0.81, 0.9)]
    summary = pd.DataFrame([{"model": "m", "target": "mobile", "budget_name": "0.5", "method": m,
                             "test_accuracy_mean": a, "cost_on_target_mean": c} for m, a, c in rows])
    line = goal_lines(summary)[-1]
    assert "+1.00 points vs taylor (met)" in line
    assert "dominates uniform;" in line and "does not dominate uniform-scratch" in line
    assert goal_lines(summary[summary.method != "splitting"]) == []


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
