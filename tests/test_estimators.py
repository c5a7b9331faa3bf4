"""Estimators, targets and plugins: conformance over the registry, analytic MACs, exact marginal costs
against real surgery, latency tables, broken and example plugins, user targets, CLI."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from energysplit.cost.estimator import ESTIMATORS, TARGETS, UNITS, resized_copy, create_estimator, create_target, target_info
from energysplit.graph.trace import build_inventory
from energysplit.graph.layers import capture_layers, resize_specs
from energysplit.cost.conformance import check_estimator
from energysplit.errors import InputFileError, RegistryError
from energysplit.zoo import create_model

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "tools" / "example_plugin"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Latency tables and user targets go to temporary directories, never to the user's home."""
    monkeypatch.setenv("ENERGYSPLIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ENERGYSPLIT_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 models: one thread is fastest, and robust to busy cores
    yield
    torch.set_num_threads(threads)
    from energysplit.cost.plugins import load_plugins

    load_plugins(force=True)


def _fast(name):
    return create_estimator(name, warmup=2, repeats=10) if name == "ort-latency" else create_estimator(name)


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_conformance_of_every_registered_estimator(name):
    summary = check_estimator(_fast(name))
    assert summary["groups_checked"] >= 2 and summary["total"] > 0


@pytest.mark.parametrize("name", TARGETS.names())
def test_every_target_has_a_known_unit_and_origin(name):
    info = target_info(name)
    assert info["unit"] in UNITS and info["origin"] and info["estimator"] in ESTIMATORS


def test_builtin_targets_and_their_estimators():
    assert {"mobile", "cpu", "flops", "edge-fp32"} <= set(TARGETS.names())
    assert target_info("mobile")["estimator"] == "lut-energy" and target_info("mobile")["unit"] == "mJ"
    assert target_info("cpu")["settings"] == {"threads": 1} and target_info("cpu")["unit"] == "ms"
    assert create_target("edge-fp32").profile == "edge-fp32"
    assert TARGETS.origin("flops") in ("built-in", "built-in (in-tree)")


class FlatNet(nn.Module):
    """Conv -> flatten -> linear: the linear reads H*W columns per channel (Consumer.repeat)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, stride=2, padding=1)  # 2x9x9 -> 5x5x5
        self.dw = nn.Conv2d(5, 5, 3, padding=1, groups=5)
        self.fc1 = nn.Linear(5 * 5 * 5, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.dw(self.conv(x)), 1))))


def test_flops_match_analytic_counts_for_conv_depthwise_and_linear():
    report = create_estimator("flops").estimate(FlatNet(), (2, 9, 9))
    rows = {r["layer"]: r["cost"] for r in report.layers}
    assert rows["conv"] == 5 * 2 * 3 * 3 * 5 * 5          # Cout * Cin * k * k * Hout * Wout
    assert rows["dw"] == 5 * 1 * 3 * 3 * 5 * 5            # Cout * Cin/groups * k * k * Hout * Wout
    assert rows["fc1"] == 125 * 7 and rows["fc2"] == 7 * 3  # in * out
    assert report.total == 2250 + 1125 + 875 + 21 and report.unit == "MACs"
    assert report.meta["flops"] == 2 * report.total and report.unsupported == []


def test_conv_with_one_output_channel_is_not_depthwise():
    specs = capture_layers(nn.Sequential(nn.Conv2d(4, 1, 3), nn.Conv2d(1, 1, 3, groups=1)), (4, 8, 8))
    assert not specs[0].depthwise and create_estimator("flops").total_of(specs) == 1 * 4 * 9 * 36 + 9 * 16


@pytest.mark.parametrize("counter", ["torch", "fvcore"])
def test_flops_agree_with_the_flop_counters(counter):
    model = create_model("resnet20", width=0.5)
    report = create_estimator("flops", cross_check=counter).estimate(model, (1, 28, 28))
    conv_linear = sum(v for k, v in report.meta["counter_macs"].items() if k in ("convolution", "conv", "addmm", "linear"))
    assert report.unsupported == [] and conv_linear == report.total


def test_flops_report_ops_they_cannot_cost():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, -1) * 2

    report = create_estimator("flops").estimate(nn.Sequential(nn.Conv2d(1, 2, 1), Odd()), (1, 4, 4))
    # torch.fx traces through the custom module: each op it holds is listed, by name
    assert report.unsupported == ["cumsum#0 (cumsum)"]
    rows = report.to_frame().set_index("layer")["cost"]
    assert math.isnan(rows["cumsum#0"])  # not a silent zero
    assert report.total == rows["0"] == 2 * 1 * 4 * 4  # the conv alone: Cout * Cin * H * W


class TinyTransformer(nn.Module):
    """Tokens from a patch conv, self-attention, an einsum and a matmul of two activations."""

    def __init__(self, c=8):
        super().__init__()
        self.patch = nn.Conv2d(1, c, 2, stride=2)
        self.attn = nn.MultiheadAttention(c, 2, batch_first=True)
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # [N, T, C]
        t = self.norm(t + self.attn(t, t, t, need_weights=False)[0])
        s = torch.einsum("ntc,nsc->nts", t, t).softmax(-1)
        return torch.matmul(s, t)


@pytest.mark.parametrize("counter", ["torch", "fvcore"])
def test_flops_of_attention_and_products_match_the_counters(counter):
    """Oracle: the analytic MACs of attention (4 T C^2 + 2 T K C, counted by hand), einsum and matmul;
    torch's flop counter sees the same projections (mm, addmm) and products (bmm: the einsum and the
    matmul; it does not count CPU attention kernels), and nothing is left uncosted."""
    report = create_estimator("flops", cross_check=counter).estimate(TinyTransformer(), (1, 8, 8))
    t, c = 16, 8
    rows = report.to_frame().set_index("layer")["cost"]
    assert rows["attn"] == 4 * t * c * c + 2 * t * t * c
    assert report.unsupported == []
    assert rows["einsum#0"] == rows["matmul#0"] == t * t * c
    if counter == "torch":
        seen = report.meta["counter_macs"]
        assert seen["mm"] + seen["addmm"] == 4 * t * c * c and seen["bmm"] == 2 * t * t * c


def _some_groups(inventory, n=4):
    """A few groups of every kind: residual streams (several producers) and plain ones."""
    groups = [g for g in inventory if g.prunable]
    coupled = [g for g in groups if len(g.producers) > 1][:2]
    plain = [g for g in groups if len(g.producers) == 1][:n]
    return coupled + plain


@pytest.mark.parametrize("arch,width,shape,target", [
    ("resnet20", 0.5, (1, 16, 16), "flops"), ("resnet20", 0.5, (1, 16, 16), "mobile"),
    ("resnet20", 0.5, (1, 16, 16), "edge-fp32"), ("mobilenet_v2", 0.35, (1, 16, 16), "flops"),
    ("mobilenet_v2", 0.35, (1, 16, 16), "mobile"), ("vgg_small", 0.25, (1, 16, 16), "eyeriss"),
    ("flatnet", None, (2, 9, 9), "flops"), ("flatnet", None, (2, 9, 9), "mobile")])
def test_marginal_cost_equals_reestimate_after_surgery(arch, width, shape, target):
    model = FlatNet() if arch == "flatnet" else create_model(arch, width=width)
    inv = build_inventory(model, shape)
    est = create_target(target)
    base = est.predict(model, shape).total
    marginal = est.marginal_costs(model, inv, shape)
    for g in _some_groups(inv):
        grown = est.predict(resized_copy(model, inv, g.id, +1), shape).total
        shrunk = est.predict(resized_copy(model, inv, g.id, -1), shape).total
        if target == "flops":  # integers: exact
            assert (marginal[g.id].add, marginal[g.id].remove) == (grown - base, base - shrunk), g.id
        else:
            assert marginal[g.id].add == pytest.approx(grown - base, rel=1e-12, abs=1e-18), g.id
            assert marginal[g.id].remove == pytest.approx(base - shrunk, rel=1e-12, abs=1e-18), g.id
        assert marginal[g.id].add > 0 and marginal[g.id].unit == est.unit
    frozen = [g for g in inv if not g.prunable]
    assert all(math.isnan(marginal[g.id].add) for g in frozen)


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v2", "mobilenet_v1"])
def test_resized_layers_are_the_inventory_groups_members(arch):
    """The layers whose configuration changes with a group's width are exactly its producers,
    followers and consumers in the inventory (which graph.py derived independently)."""
    model = create_model(arch, width=0.25)
    specs = capture_layers(model, (1, 16, 16))
    for g in build_inventory(model, (1, 16, 16)):
        changed = {specs[i].name for i in resize_specs(specs, g.producers, +1) if specs[i].op in ("conv", "linear", "bn")}
        assert changed == set(g.producers) | set(g.followers) | {c.module for c in g.consumers}, g.id


def test_latency_estimate_measures_and_records_settings():
    est = create_estimator("ort-latency", warmup=2, repeats=10)
    report = est.estimate(create_model("vgg_small", width=0.25), (1, 12, 12))
    meta = report.meta
    assert report.unit == "ms" and report.total == meta["median_ms"] > 0 and meta["p90_ms"] >= meta["median_ms"]
    assert meta["threads"] == 1 and meta["provider"] == "CPUExecutionProvider" and meta["onnxruntime"]
    assert meta["predicted_ms"] == pytest.approx(sum(r["cost"] for r in report.layers))
    assert any(r["note"] == "fused" for r in report.layers if r["op"] in ("bn", "act"))


def test_latency_table_is_cached_on_disk_and_reused(monkeypatch, tmp_path):
    from energysplit_estimators.ort_lut import LatencyLUT

    model = create_model("resnet20", width=0.25)
    first = create_estimator("ort-latency", measure=False)
    predicted = first.estimate(model, (1, 8, 8)).total
    path = first.table.path
    assert path.parent == tmp_path / "cache" / "ort-latency" and "-ort" in path.name and path.name.endswith("-t1.json")
    data = json.loads(path.read_text())
    assert data["threads"] == 1 and data["versions"]["onnxruntime"] and data["overhead_ms"] > 0
    key = json.loads(next(iter(data["entries"])))
    assert {"op", "in", "act"} <= set(key)
    monkeypatch.setattr(LatencyLUT, "_measure", lambda *a: pytest.fail("re-measured a cached entry"))
    assert create_estimator("ort-latency", measure=False).estimate(model, (1, 8, 8)).total == predicted


def test_latency_table_from_another_host_is_read_only(tmp_path):
    from energysplit_estimators.ort_lut import LatencyLUT

    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": 2, "host": "Some Phone SoC", "threads": 4, "overhead_ms": 0.01,
                                "versions": {"onnxruntime": "0.0"}, "entries": {}}))
    lut = LatencyLUT(path)
    assert lut.foreign and lut.overhead() == 0.01
    with pytest.raises(InputFileError, match="was measured on Some Phone SoC .threads 4. and lacks block"):
        lut.lookup({"op": "act", "in": [4, 4, 4], "n": 1, "act": "relu"})
    path.write_text(json.dumps({"format": 0, "entries": {}}))
    with pytest.raises(InputFileError, match="not an energysplit latency table of format 2; calibrate again"):
        LatencyLUT(path)


def test_residual_add_is_fused_into_the_conv_block():
    from energysplit_estimators.ort_blocks import block_keys

    keys, heads = block_keys(capture_layers(create_model("resnet20", width=0.25), (1, 8, 8)))
    assert sum(1 for k in keys if isinstance(k, dict) and k.get("sum")) == 9  # one per basic block
    assert not any(isinstance(k, dict) and k["op"] == "add" for k in keys)


def _ep(name, value, group, dist):
    import importlib

    def load():
        module, _, attr = value.partition(":")
        return getattr(importlib.import_module(module), attr)

    return SimpleNamespace(name=name, value=value, group=group, dist=SimpleNamespace(name=dist), load=load)


def test_broken_and_duplicate_plugins_are_reported_and_do_not_break_builtins():
    import contextlib
    import importlib.metadata
    import io

    from energysplit.cli import main
    from energysplit.cost.plugins import PLUGIN_ERRORS, PluginWarning, load_plugins

    real = importlib.metadata.entry_points

    def fake(group=None, **kw):
        extra = {"energysplit.estimators": [_ep("broken", "no_such_module_xyz:Est", group, "broken-dist"),
                                            _ep("flops", "energysplit_estimators.flops:FlopsEstimator", group, "dup-dist")],
                 "energysplit.targets": [_ep("bad-target", "json:loads", group, "weird-dist")]}
        return list(real(group=group, **kw)) + extra.get(group, [])

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.metadata, "entry_points", fake)
        with pytest.warns(PluginWarning, match="broken-dist"):
            load_plugins(force=True)
        assert {"flops", "lut-energy", "ort-latency"} <= set(ESTIMATORS.names())
        assert ESTIMATORS.origin("flops") in ("built-in", "built-in (in-tree)")  # the duplicate did not replace it
        errors = {e["plugin"]: e for e in PLUGIN_ERRORS}
        assert errors["broken"]["origin"] == "plugin broken-dist" and "no_such_module_xyz" in errors["broken"]["error"]
        assert "estimator 'flops' is already registered" in errors["flops"]["error"]
        assert errors["flops"]["origin"] == "plugin dup-dist" and "bad-target" in errors
        with contextlib.redirect_stdout(out):
            assert main(["targets"]) == 0
    assert "broken plugin 'broken'" in out.getvalue() and "broken-dist" in out.getvalue()


def test_installed_broken_plugin_leaves_import_and_cli_working(tmp_path):
    """A real distribution on sys.path whose entry point cannot be imported."""
    info = tmp_path / "site" / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[energysplit.estimators]\nbroken = no_such_module_xyz:Est\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    code = "import energysplit; from energysplit.cost.estimator import ESTIMATORS; print(ESTIMATORS.names())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "'flops'" in proc.stdout and "broken-plugin" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "energysplit", "targets"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and "mobile" in proc.stdout and "plugin broken-plugin" in proc.stdout


def test_example_plugin_installs_registers_and_conforms(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PLUGIN_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(tmp_path / "site"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "energysplit", "targets"], capture_output=True, text=True, env=env,
                          timeout=120)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("toy-device"))
    assert "toy-mac-energy" in line and "plugin energysplit-toy-plugin" in line and "mJ" in line
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        from toy_energy import ToyMacEnergy

        assert check_estimator(ToyMacEnergy)["unit"] == "mJ"
    finally:
        sys.path.remove(str(tmp_path / "site"))
        sys.modules.pop("toy_energy", None)


def test_user_directory_targets(tmp_path):
    from energysplit.cost.plugins import PLUGIN_ERRORS, PluginWarning, load_plugins

    targets = tmp_path / "home" / "targets"
    targets.mkdir(parents=True)
    (targets / "lab-board.json").write_text(json.dumps(
        {"name": "lab-board", "estimator": "lut-energy", "settings": {"profile": "eyeriss"}, "description": "x"}))
    (targets / "garbled.json").write_text("{not json")
    with pytest.warns(PluginWarning, match="garbled"):
        load_plugins(force=True)
    assert target_info("lab-board")["origin"].startswith("user dir") and target_info("lab-board")["unit"] == "mJ"
    assert create_target("lab-board").profile == "eyeriss"
    assert any(e["plugin"] == "garbled" for e in PLUGIN_ERRORS)


def test_calibrate_saves_a_user_target_that_reuses_its_table(monkeypatch):
    from energysplit.cost.calibrate import CalibrateConfig, calibrate
    from energysplit_estimators.ort_lut import LatencyLUT

    result = calibrate(CalibrateConfig("my-board", arch="vgg_small", width=0.25, input_shape=(1, 8, 8),
                                       neighbours=False))
    assert result["entries"] >= 5 and result["measured_ms"] > 0 and math.isfinite(result["error_pct"])
    info = target_info("my-board")
    assert info["origin"].startswith("user dir") and info["unit"] == "ms" and info["settings"]["lut"] == result["table"]
    monkeypatch.setattr(LatencyLUT, "_measure", lambda *a: pytest.fail("re-measured a calibrated entry"))
    est = create_target("my-board")
    est.measure = False
    assert est.estimate(create_model("vgg_small", width=0.25), (1, 8, 8)).total == pytest.approx(result["predicted_ms"])
    with pytest.raises(InputFileError, match="my-board.json exists; pass --force"):
        calibrate(CalibrateConfig("my-board", arch="vgg_small", width=0.25, input_shape=(1, 8, 8)))
    with pytest.raises(RegistryError, match="target 'mobile' already exists .built-in"):
        calibrate(CalibrateConfig("mobile"))


def test_cli_estimate_writes_csv_and_json(tmp_path, capsys):
    from energysplit.cli import main

    assert main(["estimate", "resnet20", "--target", "flops", "--input-shape", "1,16,16", "--csv",
                 str(tmp_path / "l.csv"), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["unit"] == "MACs" and f"total {record['total']:.6g} MACs" in out and "cost [MACs]" in out
    assert record["total"] == create_target("flops").estimate(create_model("resnet20"), (1, 16, 16)).total
    import pandas as pd

    frame = pd.read_csv(tmp_path / "l.csv")
    assert frame["cost"].sum() == record["total"] and "layers.0.conv1" in set(frame["layer"])
    assert main(["estimate", "resnet20", "--target", "nope"]) == 2


def test_layout_reorders_are_charged_only_at_layout_boundaries():
    from energysplit_estimators.ort_blocks import block_keys, layout_costs

    specs = capture_layers(nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)),
                           (8, 4, 4))
    keys, heads = block_keys(specs)
    assert keys[1] == "fused" and heads[1] == 0 and [isinstance(k, dict) for k in keys] == [True, False, True, True]
    nchwc = {"ms": 1.0, "ri": 0.1, "ro": 0.01}
    plain = {"ms": 1.0, "ri": 0.0, "ro": 0.0}
    # all three in the NCHWc layout: one reorder in (model input) and one out (model output)
    assert layout_costs(specs, keys, heads, {0: nchwc, 2: nchwc, 3: nchwc}) == [1.1, 0.0, 1.0, 1.01]
    # the middle block runs NCHW: its neighbours pay the reorders at both boundaries
    assert layout_costs(specs, keys, heads, {0: nchwc, 2: plain, 3: nchwc}) == [1.11, 0.0, 1.0, 1.11]


def test_builtins_install_under_a_name_of_ours():
    import configparser
    import importlib.metadata

    from energysplit.cost.plugins import load_plugins

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = dict(line.split(" = ") for line in cfg["options.entry_points"]["energysplit.estimators"].split("\n")
                    if line.strip())
    assert all(v.startswith("energysplit_estimators.") for v in declared.values())
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="energysplit.estimators")}
    assert {k: installed.get(k) for k in declared} == declared  # the installed metadata is setup.cfg's
    load_plugins(force=True)
    for name in declared:
        assert ESTIMATORS.get(name).__module__.startswith("energysplit_estimators.")
        assert ESTIMATORS.origin(name) == "built-in"


def test_latency_entries_measured_under_load_are_scaled_to_the_tables_conditions(monkeypatch, tmp_path):
    from energysplit_estimators.ort_lut import LatencyLUT, _Reference

    load = {"factor": 1.0}
    quiet = {"reference": 0.5, "overhead": 0.01, "block": 2.0}

    def fake_measure(self, module, shapes, profile=False):
        kind = "reference" if isinstance(module, _Reference) else "overhead" if list(shapes) == [(1,)] else "block"
        wall = quiet[kind] * (1.0 if kind == "overhead" else load["factor"])
        kernels = dict.fromkeys(["ReorderInput", "ReorderOutput", "other", "n_ReorderInput", "n_ReorderOutput",
                                 "n_other"], 0.0)
        return (wall, kernels) if profile else wall

    monkeypatch.setattr(LatencyLUT, "_measure", fake_measure)
    monkeypatch.setattr(LatencyLUT, "scale_ttl_s", 0.0)  # time the reference before every entry
    lut = LatencyLUT(tmp_path / "t.json")
    quiet_entry = lut.lookup({"op": "act", "in": [4, 4, 4], "n": 1, "act": "relu"})["ms"]
    load["factor"] = 1.8  # the machine gets busier: every kernel 1.8x slower
    busy_entry = lut.lookup({"op": "act", "in": [8, 4, 4], "n": 1, "act": "relu"})["ms"]
    assert quiet_entry == pytest.approx(2.0 - 0.01)
    assert busy_entry == pytest.approx(quiet_entry, rel=0.01)  # unscaled it would be 3.59
    lut.save()
    assert json.loads((tmp_path / "t.json").read_text())["reference_ms"] == pytest.approx(0.5)


def test_entries_measured_back_to_back_share_one_reference_timing(monkeypatch, tmp_path):
    from energysplit_estimators.ort_lut import LatencyLUT, _Reference

    clock = {"now": 100.0}
    timed = []

    def fake_measure(self, module, shapes, profile=False):
        timed.append("reference" if isinstance(module, _Reference) else "other")
        kernels = dict.fromkeys(["ReorderInput", "ReorderOutput", "other", "n_ReorderInput", "n_ReorderOutput",
                                 "n_other"], 0.0)
        return (1.0, kernels) if profile else 1.0

    monkeypatch.setattr(LatencyLUT, "_measure", fake_measure)
    monkeypatch.setattr("energysplit_estimators.ort_lut.time.monotonic", lambda: clock["now"])
    lut = LatencyLUT(tmp_path / "t.json")
    for c in (4, 8, 12):
        lut.lookup({"op": "act", "in": [c, 4, 4], "n": 1, "act": "relu"})
        clock["now"] += 0.5  # well within scale_ttl_s
    assert timed.count("reference") == 1
    clock["now"] += lut.scale_ttl_s  # later, the load may have changed: time the reference again
    lut.lookup({"op": "act", "in": [16, 4, 4], "n": 1, "act": "relu"})
    assert timed.count("reference") == 2


@pytest.mark.parametrize("target", ["mobile", "flops"])
def test_stochastic_depth_is_costed_as_the_identity(target):
    """EfficientNet's stochastic depth is the identity at inference: costed as free, not listed unsupported."""
    import torchvision

    from energysplit import estimate

    model = torchvision.models.efficientnet_b0(weights=None).eval()
    report = estimate(model, (3, 32, 32), target)
    assert report.unsupported == []
    rows = [r for r in report.layers if "stochastic_depth" in str(r.get("layer", ""))]
    assert rows and all(r["cost"] == 0 for r in rows)
