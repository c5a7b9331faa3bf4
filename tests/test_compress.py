"""``energysplit compress`` end to end through the real CLI: outputs, ONNX parity, input errors, Ctrl-C,
kill -9 and --resume. Runs are subprocesses (one thread, a private latency cache), except the input-error
table, which calls ``cli.main`` in this process (a few of its cases run again as processes)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SMALL = ["--data", "digits", "--arch", "vgg_small", "--width", "0.25", "--no-progress", "--seed", "3"]
DEMO = ["compress", "--demo", *SMALL, "--base-epochs", "1", "--epochs", "0.5"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One thread, and a private latency-table cache and user directory shared by this module's runs."""
    root = tmp_path_factory.mktemp("env")
    return {**os.environ, "OMP_NUM_THREADS": "1", "ENERGYSPLIT_CACHE": str(root / "cache"),
            "ENERGYSPLIT_HOME": str(root / "home"), "PYTHONPATH": str(root)}


def _cli(*args):
    return [sys.executable, "-m", "energysplit", *map(str, args)]


def run(env, *args, timeout=300):
    return subprocess.run(_cli(*args), capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def demo(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = run(env, *DEMO, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_demo_writes_every_output(demo):
    out, proc = demo
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "growth.png", "model.es", "model.onnx", "report.json", "report.md", "steps.csv"])
    report = json.loads((out / "report.json").read_text())
    for side in ("before", "after"):
        row = report[side]
        assert set(row) == {"test_accuracy", "test_loss", "params", "flops [MACs]", "mobile [mJ]", "cpu [ms]"}
        assert 0 <= row["test_accuracy"] <= 1 and row["params"] > 0 and row["cpu [ms]"] > 0
    budget = report["budget"]
    assert budget["target"] == "mobile" and budget["unit"] == "mJ" and budget["requested"] == "0.5"
    assert budget["budget"] == pytest.approx(0.5 * report["before"]["mobile [mJ]"])
    assert report["after"]["mobile [mJ]"] <= budget["budget"] < report["before"]["mobile [mJ]"]
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["flops [MACs]"] < report["before"]["flops [MACs]"]
    widths = report["widths"]
    assert set(widths["before"]) == set(widths["after"]) and widths["before"] != widths["after"]
    assert widths["after"]["classifier.2:out"] == 10  # the classes stay
    assert {"base_training", "method", "measure", "outputs", "total"} <= set(report["seconds"])
    assert report["base_training"]["epochs"] == 1.0

    # one CSV row and one log line per growth step, numbered 1..n, costs chained
    steps = report["growth_steps"]
    assert steps, "splitting made no growth step"
    rows = list(csv.DictReader((out / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, len(steps) + 1))
    assert [float(r["cost_after"]) for r in rows] == pytest.approx([s["cost_after"] for s in steps])
    assert all(float(r["cost_after"]) > float(r["cost_before"]) for r in rows)
    assert sum(line.startswith("step ") for line in proc.stdout.splitlines()) == len(steps)

    md = (out / "report.md").read_text()
    metrics = _markdown_table(md, "metric")
    assert metrics[0] == ["metric", "before", "after", "after/before"]
    assert [row[0] for row in metrics[1:]] == list(report["before"])  # every metric, in the report's order
    for key, before, after, ratio in metrics[1:]:
        b, a = report["before"][key], report["after"][key]
        for cell, value in ((before, b), (after, a)):  # 4 significant digits, or a whole number from 1,000 up
            assert float(cell.replace(",", "")) == (pytest.approx(value, rel=5e-4) if abs(value) < 1000
                                                    else pytest.approx(value, abs=0.5)), (key, cell, value)
        assert float(ratio) == pytest.approx(a / b, abs=1e-3)
    assert "## Widths per neuron group" in md
    assert _markdown_table(md, "group")[1:] == [[g, str(w), str(widths["after"][g])] for g, w in widths["before"].items()]
    assert [int(row[0]) for row in _markdown_table(md, "step")[1:]] == [s["step"] for s in steps]
    assert budget["final_measured"] == report["after"]["mobile [mJ]"] == pytest.approx(budget["final_cost"])
    assert f"- budget check: predicted {budget['final_cost']:.4g} mJ, estimated" in md and "over the budget" not in md
    assert (out / "growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["command"].startswith("energysplit compress --demo --data digits")
    assert config["config"]["arch"] == "vgg_small" and config["config"]["epochs"] == 0.5
    # the summary table on stdout, nothing alarming on stderr
    assert "after/before" in proc.stdout and "mobile [mJ]" in proc.stdout
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr


def _markdown_table(md: str, first: str) -> list[list[str]]:
    """The header and rows (cells stripped) of the Markdown table whose first header cell is ``first``."""
    rows, inside = [], False
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[0] == first:
            inside = True
        if inside and not cells:
            break
        if inside and not set(line) <= set("|:- "):
            rows.append(cells)
    assert rows, f"no table starting with {first!r}"
    return rows


def test_onnx_matches_the_reloaded_archive(demo):
    import onnxruntime as ort

    from energysplit.graph.archive import load_model

    out, _ = demo
    model, record = load_model(out / "model.es")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    report = json.loads((out / "report.json").read_text())
    assert record["widths"] == report["widths"]["after"]
    assert report["onnx"]["max_abs_diff"] <= report["onnx"]["atol"]
    x = torch.randn(5, *record["input_shape"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (5, 10)
    assert abs(got - expected).max() < 1e-4


def test_an_archive_is_compressed_by_a_baseline(demo, env, tmp_path):
    out, _ = demo
    proc = run(env, "compress", out / "model.es", "--method", "l1", "--budget", "0.8", "--epochs", "0.2",
               *SMALL, "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    ref = json.loads((out / "report.json").read_text())["after"]
    assert report["before"]["mobile [mJ]"] == pytest.approx(ref["mobile [mJ]"])
    assert report["before"]["test_accuracy"] == ref["test_accuracy"]  # the same weights, reloaded
    assert report["after"]["mobile [mJ]"] <= 0.8 * report["before"]["mobile [mJ]"]
    assert report["growth_steps"] == [] and report["config"]["method"] == "l1"


def test_a_state_dict_with_a_budget_in_flops_and_a_config_file(env, tmp_path):
    from energysplit.zoo import create_model

    torch.manual_seed(0)
    torch.save(create_model("vgg_small", width=0.25).state_dict(), tmp_path / "sd.pt")
    (tmp_path / "c.json").write_text(json.dumps({"report_targets": ["flops", "mobile"], "target": "mobile"}))
    proc = run(env, "compress", tmp_path / "sd.pt", "--config", tmp_path / "c.json", "--target", "flops", "--budget",
               "0.6MFLOPs", "--method", "uniform", "--epochs", "0", *SMALL, "--out", tmp_path / "u")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "u" / "report.json").read_text())
    assert report["budget"]["budget"] == pytest.approx(300_000) and report["budget"]["unit"] == "MACs"
    assert report["after"]["flops [MACs]"] <= 300_000 < report["before"]["flops [MACs]"]
    assert set(report["after"]) == {"test_accuracy", "test_loss", "params", "flops [MACs]", "mobile [mJ]"}


_BADNET = '''
import torch
from torch import nn


class SharedConv(nn.Module):
    """The same conv applied twice: shared weights, which channel surgery cannot handle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(torch.relu(self.conv(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


class NeedsWidth(nn.Module):
    """Supported layers, but the class cannot be rebuilt from its name alone."""

    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
'''


@pytest.fixture(scope="module")
def files(env, tmp_path_factory):
    """Model files for the error cases."""
    from energysplit.zoo import create_model

    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    torch.save(create_model("vgg_small", width=0.25).state_dict(), root / "vgg.pt")
    raw = (root / "vgg.pt").read_bytes()
    (root / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (root / "garbage.pt").write_bytes(b"not a model at all\n" * 20)
    (root / "empty.pt").write_bytes(b"")
    from energysplit.graph.archive import save_model

    save_model(create_model("vgg_small", width=0.25), root / "vgg28.es", {"name": "vgg_small", "kwargs": {"width": 0.25}},
               (1, 28, 28))
    pkg = Path(env["PYTHONPATH"])
    (pkg / "badnet.py").write_text(_BADNET)
    sys.path.insert(0, str(pkg))
    try:
        import badnet

        torch.save(badnet.SharedConv(), root / "shared.pt")
        torch.save(badnet.NeedsWidth(8), root / "needs-width.pt")
    finally:
        sys.path.remove(str(pkg))
        sys.modules.pop("badnet", None)
    return root


D, VGG, SD = ["--data", "digits"], ["--arch", "vgg_small"], "{f}/vgg.pt"
ERRORS = {  # name: (arguments, text that the one error line must hold)
    "unknown target": (["--demo", *D, "--target", "toaster"], "toaster"),
    "unknown method": (["--demo", *D, "--method", "magic"], "magic"),
    "missing model file": (["{f}/nope.pt", *D, *VGG], "does not exist"),
    "truncated model file": (["{f}/truncated.pt", *D, *VGG], "truncated"),
    "garbage model file": (["{f}/garbage.pt", *D, *VGG], "not a PyTorch file"),
    "empty model file": (["{f}/empty.pt", *D, *VGG], "not a PyTorch file"),
    "archive for other inputs": (["{f}/vgg28.es", *D], "saved for inputs of shape (1, 28, 28)"),
    "state dict without --arch": ([SD, *D], "name its architecture with --arch"),
    "state dict of another arch": ([SD, *D, "--arch", "resnet20"], "does not match --arch resnet20"),
    "state dict of another width": ([SD, *D, *VGG, "--width", "0.5"], "does not match --arch vgg_small"),
    "constructor argument it does not take": ([SD, *D, *VGG, "--arch-kwargs", '{{"bogus": 1}}'],
                                              "unexpected keyword argument 'bogus'"),
    "pickle without trust": (["{f}/shared.pt", *D], "--trust-pickle"),
    "unsupported layer": (["{f}/shared.pt", *D, "--trust-pickle"], "shared weights are not supported"),
    "module that cannot be rebuilt": (["{f}/needs-width.pt", *D, "--trust-pickle"], "cannot be rebuilt"),
    "budget already met": ([SD, *D, *VGG, "--width", "0.25", "--budget", "1"], "already met"),
    "budget above the cost": ([SD, *D, *VGG, "--width", "0.25", "--budget", "5mJ"], "already met"),
    "budget unreachable": ([SD, *D, *VGG, "--width", "0.25", "--budget", "1e-6mJ"], "unreachable"),
    "budget in another unit": ([SD, *D, *VGG, "--width", "0.25", "--budget", "0.4ms"], "target measures mJ"),
    "budget garbage": (["--demo", *D, "--budget", "half"], "cannot read budget"),
    "missing data": (["--demo", "--data", "{f}/no-such-folder"], "no-such-folder"),
    "nothing to resume": (["--demo", *D, "--resume"], "nothing to resume"),
}


def _error_args(files, args, out):
    return ["compress", *(a.format(f=files) for a in args), "--no-progress", "--base-epochs", "1", "--epochs", "0.2",
            "--out", out]


@pytest.mark.parametrize("name", list(ERRORS))
def test_each_input_error_is_one_line_and_leaves_nothing(name, files, env, tmp_path, capsys, monkeypatch):
    """In this process through ``cli.main`` (the console script's function); a few of them again below in
    their own processes."""
    from energysplit.cli import main

    monkeypatch.syspath_prepend(env["PYTHONPATH"])  # where the pickled module's class lives
    for key in ("ENERGYSPLIT_CACHE", "ENERGYSPLIT_HOME"):
        monkeypatch.setenv(key, env[key])
    args, text = ERRORS[name]
    out = tmp_path / "out"
    code = main([str(a) for a in _error_args(files, args, out)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("energysplit compress: error: "), err
    assert text in err
    assert not out.exists()


def test_input_errors_in_their_own_process(env, files, tmp_path):
    """The exit status and stderr of the real process (started together to keep the wall time down)."""
    procs = {}
    for name in ("truncated model file", "unsupported layer", "budget unreachable", "unknown target"):
        out = tmp_path / name.replace(" ", "-") / "out"
        procs[name] = (out, subprocess.Popen(_cli(*_error_args(files, ERRORS[name][0], out)), stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, env=env))
    for name, (out, proc) in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, stderr)
        assert stderr.count("\n") == 1 and ERRORS[name][1] in stderr and "Traceback" not in stderr, (name, stderr)
        assert not out.parent.exists()


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def test_results_are_not_overwritten_without_force(demo, env, tmp_path):
    out, _ = demo
    before = _snapshot(out)
    proc = run(env, *DEMO, "--out", out)
    assert proc.returncode == 2 and "already holds results" in proc.stderr and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert _snapshot(out) == before
    # an error found after the checks on an existing directory leaves it exactly as it was
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path / "keep")
    proc = run(env, *DEMO, "--budget", "1e-7mJ", "--out", tmp_path / "keep")
    assert proc.returncode == 2 and "unreachable" in proc.stderr
    assert _snapshot(tmp_path / "keep") == before


def test_a_killed_run_resumes_to_the_same_result(demo, env, tmp_path):
    """kill -9 after the first growth step, --resume: the same report and the same weights as the
    uninterrupted run (the demo fixture) with the same seed, started from its saved config.json."""
    ref, _ = demo
    out = tmp_path / "run"
    args = ["compress", "--config", ref / "config.json", "--no-progress", "--out", out]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    state = out / ".work" / "state.json"
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert state.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(json.loads(state.read_text())["steps"]) >= 1
    assert not (out / "report.json").exists()
    work = _snapshot(out / ".work")

    changed = run(env, *args, "--resume", "--epochs", "1")
    assert changed.returncode == 2 and "epochs 0.5 -> 1.0" in changed.stderr
    assert _snapshot(out / ".work") == work

    resumed = run(env, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed the trained base model" in resumed.stdout and "resumed from" in resumed.stdout
    assert not (out / ".work").exists()
    a, b = (json.loads((d / "report.json").read_text()) for d in (ref, out))
    for side in ("before", "after"):
        measured = {"cpu [ms]"}  # a wall-clock measurement: the only value that may differ
        assert {k: v for k, v in a[side].items() if k not in measured} == \
               {k: v for k, v in b[side].items() if k not in measured}
    drop = ("score_seconds", "select_seconds", "train_seconds")
    assert [{k: v for k, v in s.items() if k not in drop} for s in a["growth_steps"]] == \
           [{k: v for k, v in s.items() if k not in drop} for s in b["growth_steps"]]
    assert a["widths"] == b["widths"]
    sa, sb = (torch.load(d / "model.es", weights_only=True)["state_dict"] for d in (ref, out))
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.slow  # flaky: a SIGINT that lands inside ONNX Runtime's native code can abort (-6), see README
def test_ctrl_c_keeps_the_work_for_resume(env, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(*DEMO, "--out", out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    base = out / ".work" / "base.es"
    deadline = time.time() + 120
    while not base.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert base.exists()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert (out / ".work" / "base.es").exists() and not (out / "report.json").exists()


def test_a_closed_pipe_exits_quietly():
    proc = subprocess.Popen(_cli("models"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `energysplit models | head -0` would
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 141 and stderr == ""


def test_config_precedence(tmp_path):
    from energysplit.pipeline.compress import DEMO, CompressConfig, read_config_file

    (tmp_path / "c.json").write_text(json.dumps({"epochs": 5, "target": "cpu", "out": "elsewhere", "force": True}))
    from_file = read_config_file(tmp_path / "c.json")
    assert "out" not in from_file and "force" not in from_file  # run controls come from the command line
    config = CompressConfig.resolve(DEMO, from_file, {"target": "flops", "seed": None})
    assert (config.epochs, config.target, config.arch, config.force) == (5, "flops", "mobilenet_v2", False)
    (tmp_path / "bad.json").write_text(json.dumps({"epoch": 5}))
    from energysplit.errors import ConfigError, InputFileError

    with pytest.raises(ConfigError, match=r"has unknown keys \['epoch'\]"):
        read_config_file(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputFileError, match="cannot read config file") as info:
        read_config_file(tmp_path / "broken.json")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)  # the cause is kept for a developer
    with pytest.raises(ConfigError, match="epochs must be float, got 'five'"):
        CompressConfig.resolve(DEMO, {"epochs": "five"})


def test_the_report_flags_a_measured_cost_over_the_budget():
    from energysplit.pipeline.report import _budget_check

    budget = {"unit": "ms", "budget": 0.20, "final_cost": 0.19, "final_measured": 0.25}
    line = _budget_check(budget)
    assert "predicted 0.19 ms, measured 0.25 ms (budget 0.2)" in line and "over the budget as measured, by 25%" in line
    assert "over the budget" not in _budget_check({**budget, "final_measured": 0.195})
    assert "estimated 0.19 ms" in _budget_check({k: v for k, v in budget.items() if k != "final_measured"})
