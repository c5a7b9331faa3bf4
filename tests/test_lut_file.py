"""Reproducible cpu budgets (issue 17, item 6): a latency table saved to a file prices models exactly as
the table it was written from, on any host; the report names the table that priced a run; bad files give
one-line ConfigErrors. Latencies are faked (a function of the block key), so nothing is timed here."""
import hashlib
import json
from pathlib import Path

import pytest

from energysplit.cost.estimator import create_target, target_settings
from energysplit.errors import ConfigError, InputFileError
from energysplit.graph.trace import build_inventory
from energysplit.zoo import create_model

SHAPE = (1, 12, 12)


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ENERGYSPLIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fake_timing(monkeypatch):
    """Block latencies from a hash of the block's key; the fixed overhead 0.01 ms."""
    from energysplit_estimators.ort_lut import LatencyLUT

    def block(self, key):
        h = int(hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8], 16) / 16 ** 8
        return {"ms": 0.01 + h, "ri": 0.1 * h, "ro": 0.05 * h}

    monkeypatch.setattr(LatencyLUT, "_measure_block", block)
    monkeypatch.setattr(LatencyLUT, "_measure", lambda self, *a, **k: 0.01)


def _costs(est, model):
    inventory = build_inventory(model, SHAPE)
    marginal = est.marginal_costs(model, inventory, SHAPE, 8)
    return est.predict(model, SHAPE).total, {g: (m.add, m.remove) for g, m in marginal.items()}


def _no_measuring(monkeypatch):
    from energysplit_estimators.ort_lut import LatencyLUT

    monkeypatch.setattr(LatencyLUT, "_measure_block", lambda *a: pytest.fail("measured a block"))
    monkeypatch.setattr(LatencyLUT, "_measure", lambda *a, **k: pytest.fail("measured"))


def test_a_table_from_file_prices_exactly_like_the_one_it_was_written_from(tmp_path, fake_timing, monkeypatch):
    model = create_model("mobilenet_v2", width=0.25)
    here = create_target("cpu")
    expected = _costs(here, model)
    path = tmp_path / "table.json"
    here.table.write(path)
    _no_measuring(monkeypatch)
    loaded = create_target("cpu", **target_settings("cpu", path))
    assert loaded.table.path == path and not loaded.table.foreign
    assert _costs(loaded, model) == expected  # identical floats, not approximately
    assert loaded.describe_table()["sha256"] == here.describe_table()["sha256"]
    # the same file on another host: read-only, the same prices, and a block it lacks is an error
    data = json.loads(path.read_text())
    (tmp_path / "other.json").write_text(json.dumps({**data, "host": "Other CPU"}))
    elsewhere = create_target("cpu", **target_settings("cpu", tmp_path / "other.json"))
    assert _costs(elsewhere, model) == expected
    info = elsewhere.describe_table()
    assert info["foreign"] and info["host"] == "Other CPU" and info["source"] == "file"
    with pytest.raises(InputFileError, match="was measured on Other CPU"):
        elsewhere.predict(create_model("mobilenet_v2", width=0.5), SHAPE)
    # a table that prices one block differently has another digest
    key = next(iter(data["entries"]))
    data["entries"][key]["ms"] += 1e-6
    (tmp_path / "changed.json").write_text(json.dumps(data))
    assert create_target("cpu", lut=str(tmp_path / "changed.json")).describe_table()["sha256"] != info["sha256"]


def test_targets_other_than_cpu_ignore_the_table(tmp_path, fake_timing):
    path = tmp_path / "t.json"
    create_target("cpu").table.write(path)
    assert target_settings("cpu", path) == {"lut": str(path)}
    assert target_settings("mobile", path) == {} and target_settings("cpu", None) == {}


@pytest.mark.parametrize("content, match", [
    (None, "no such file; write one with `energysplit lut FILE`"),
    ("{not json", "is not readable JSON"),
    ('["a list"]', "is not an energysplit latency table"),
    ('{"format": 1, "host": "Old Box", "entries": {}}', "has format 1, this energysplit reads format 2; "
                                                         "measure it again with `energysplit lut FILE` on Old Box"),
    ('{"format": 2, "entries": {"k": {"ms": 1}}, "overhead_ms": 0.1}', "entry k is missing or malformed"),
    ('{"format": 2, "entries": {}}', "overhead_ms is missing or malformed"),
])
def test_bad_table_files_are_one_line_config_errors(tmp_path, content, match):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        create_target("cpu", **target_settings("cpu", path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_the_report_names_the_table_that_priced_the_run(tmp_path, fake_timing):
    from energysplit.pipeline.compress import cost_tables
    from energysplit.pipeline.report import table_line

    model = create_model("mobilenet_v2", width=0.25)
    measured_here = create_target("cpu")
    measured_here.predict(model, SHAPE)
    path = tmp_path / "table.json"
    measured_here.table.write(path)
    from_file = create_target("cpu", lut=str(path))
    tables = cost_tables({"flops": create_target("flops"), "cpu": from_file})
    assert list(tables) == ["cpu"]  # only the targets priced by a table
    line = table_line("cpu", tables["cpu"])
    digest = hashlib.sha256(json.dumps({"overhead_ms": 0.01, "entries": json.loads(path.read_text())["entries"]},
                                       sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert f"`{path}`" in line and f"sha256 {digest[:16]}" in line
    host_line = table_line("cpu", cost_tables({"cpu": measured_here})["cpu"])
    assert f"measured on {measured_here.table.meta['host']}" in host_line and f"sha256 {digest[:16]}" in host_line


def test_compress_refuses_a_missing_table_before_any_work(tmp_path, capsys):
    from energysplit.cli import main

    out = tmp_path / "out"
    code = main(["compress", "--demo", "--lut", str(tmp_path / "nope.json"), "--out", str(out), "--data", "digits"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("energysplit compress: error: --lut ") and "no such file" in err and "\n" not in err


def test_the_committed_benchmark_table_is_a_valid_table():
    from energysplit_estimators.ort_lut import read_table

    tables = sorted(Path(__file__).parents[1].joinpath("benchmarks", "luts").glob("*.json"))
    assert tables
    for path in tables:
        data = read_table(path)
        assert data["entries"] and data["threads"] >= 1 and data["host"]
