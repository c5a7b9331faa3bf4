"""``energysplit grow`` end to end through the CLI: outputs, ONNX parity, epochs shared by the phases, resume
after an interruption (in process) and after kill -9 (a process), every input error as one line, exit 2."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from energysplit.cli import main

SMALL = ["grow", "--arch", "vgg_small", "--width", "0.5", "--data", "digits", "--subset", "300", "--budget", "0.25",
         "--seed-fraction", "0.3", "--step-growth", "2", "--epochs", "1", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("env")
    return {"ENERGYSPLIT_CACHE": str(root / "cache"), "ENERGYSPLIT_HOME": str(root / "home")}


@pytest.fixture
def private(env, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """One uninterrupted run, through ``cli.main`` in this process."""
    out = tmp_path_factory.mktemp("grow") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert main([*SMALL, "--out", str(out)]) == 0
    return out


def test_grow_writes_every_output(reference):
    for name in ("model.es", "model.onnx", "report.json", "report.md", "steps.csv", "growth.png", "config.json"):
        assert (reference / name).is_file(), name
    assert not (reference / ".work").exists() and not (reference / ".staging").exists()
    report = json.loads((reference / "report.json").read_text())
    assert report["onnx"]["max_abs_diff"] <= report["onnx"]["atol"]  # checked in ONNX Runtime
    budget = report["budget"]
    assert report["seed"]["cost"] < budget["final_cost"] <= budget["budget"]
    assert budget["budget"] == pytest.approx(0.25 * budget["base_cost"])
    steps = report["growth_steps"]
    assert steps and all(s["cost_after"] > s["cost_before"] for s in steps)
    epochs = report["epochs"]  # the phases share --epochs: seed 40%, steps 20%, the rest and unused slices final
    assert epochs["seed"] == pytest.approx(0.4) and epochs["steps"] == pytest.approx(sum(s["epochs"] for s in steps))
    assert epochs["seed"] + epochs["steps"] + epochs["final"] == pytest.approx(1.0) == epochs["total"]
    assert report["after"]["mobile [mJ]"] == pytest.approx(budget["final_cost"])
    assert report["cost_tables"]["cpu"]["sha256"]  # which latency table priced the cpu column
    assert "# energysplit grow report" in (reference / "report.md").read_text()
    assert len((reference / "steps.csv").read_text().splitlines()) == len(steps) + 1
    saved = json.loads((reference / "config.json").read_text())
    assert saved["command"].startswith("energysplit grow") and saved["config"]["epochs"] == 1.0
    from energysplit.graph.archive import load_model

    model, _ = load_model(reference / "model.es")
    assert model.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    from energysplit.pipeline.inputs import load_data
    from energysplit.training.bn_stats import batchnorms, recalibrate_on_

    fresh, train = load_model(reference / "model.es")[0], load_data("digits", None, 300).train
    assert recalibrate_on_(fresh, train, 50, 128, 3) == 2  # 300 images: 2 full batches
    for mine, oracle in zip(batchnorms(model), batchnorms(fresh), strict=True):  # statistics of training images
        torch.testing.assert_close(mine.running_mean, oracle.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(mine.running_var, oracle.running_var, rtol=0, atol=1e-6)


def _same_result(a, b):
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    for side in ("before", "after"):  # cpu [ms] is a wall-clock measurement
        assert {k: v for k, v in ra[side].items() if k != "cpu [ms]"} == \
               {k: v for k, v in rb[side].items() if k != "cpu [ms]"}
    drop = ("score_seconds", "select_seconds", "train_seconds")
    assert [{k: v for k, v in s.items() if k not in drop} for s in ra["growth_steps"]] == \
           [{k: v for k, v in s.items() if k not in drop} for s in rb["growth_steps"]]
    sa, sb = (torch.load(d / "model.es", weights_only=True)["state_dict"] for d in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_interrupted_run_resumes_to_the_same_result(reference, private, tmp_path, monkeypatch, capsys):
    """Interrupted right after the first growth step's checkpoint; --resume finishes it identically."""
    from energysplit.splitting import growth

    save = growth.Checkpoint.save

    def save_then_stop(self, model, steps, phase, momentum=None):
        save(self, model, steps, phase, momentum)
        if len(steps) == 1:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(growth.Checkpoint, "save", save_then_stop)
    assert main([*SMALL, "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert len(json.loads((out / ".work" / "state.json").read_text())["steps"]) == 1
    assert not (out / "report.json").exists()
    monkeypatch.setattr(growth.Checkpoint, "save", save)
    assert main([*SMALL, "--out", str(out), "--epochs", "2", "--resume"]) == 2  # other options: refused
    assert "epochs 1.0 -> 2.0" in capsys.readouterr().err
    assert main([*SMALL, "--out", str(out), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert not (out / ".work").exists()
    _same_result(reference, out)


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_same_result(reference, env, tmp_path):
    """kill -9 once a growth step is checkpointed, then --resume in a new process."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "energysplit", *SMALL, "--out", str(out)]
    env = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    state, deadline = out / ".work" / "state.json", time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if state.exists() and json.loads(state.read_text() or "{}").get("steps"):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "report.json").exists()
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _same_result(reference, out)


ERRORS = {  # name: (arguments replacing SMALL's, text that the one error line must hold)
    "unknown arch": (["--arch", "nonet"], "unknown architecture 'nonet'"),
    "unknown target": (["--target", "toaster"], "toaster"),
    "seed bigger than the budget": (["--seed-width", "0.5"], "already costs"),
    "budget above the caps": (["--budget", "1mJ"], "above what growth can reach"),
    "budget in another unit": (["--budget", "0.4ms"], "target measures mJ"),
    "missing data": (["--data", "/no/such/folder"], "no/such/folder"),
    "unknown selector": (["--selector", "magic"], "unknown growth selector"),
    "nothing to resume": (["--resume"], "nothing to resume"),
}


def _with(changes: list[str]) -> list[str]:
    args = list(SMALL)
    for flag, value in zip(changes[::2], changes[1::2]) if changes != ["--resume"] else []:
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args + (["--resume"] if changes == ["--resume"] else [])


@pytest.mark.parametrize("name", list(ERRORS))
def test_each_input_error_is_one_line_and_leaves_nothing(name, private, tmp_path, capsys):
    args, text = ERRORS[name]
    out = tmp_path / "out"
    assert main([*_with(args), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("energysplit grow: error: "), err
    assert text in err
    assert not out.exists()


def test_results_are_not_overwritten_without_force(reference, private, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.iterdir()}
    assert main([*SMALL, "--out", str(reference)]) == 2
    err = capsys.readouterr().err
    assert "already holds results" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in reference.iterdir()} == before


def test_flag_defaults_come_from_the_config():
    from energysplit.cli import build_parser
    from energysplit.pipeline.design import DesignConfig, option_fields

    args = build_parser("grow").parse_args(["grow"])
    assert {name: getattr(args, name) for name in option_fields()} == \
           {name: getattr(DesignConfig(), name) for name in option_fields()}
