import csv
from dataclasses import replace

from energysplit.bench import PROFILES, run_benchmark


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

    from energysplit.bench import goal_lines

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

    from energysplit.bench import base_model

    config = replace(PROFILES["tiny"], act="silu", base_epochs=0)
    model, arch = base_model("vgg_small", config, digits.subset(train=64, val=32), tmp_path, log=lambda s: None)
    assert arch["kwargs"]["act"] == "silu"
    assert any(isinstance(m, torch.nn.SiLU) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
