"""The CLI's error policy: the project's error types are the user's (one line, exit 2); anything else is a
bug in energysplit (traceback and a bug line, exit 1). Either way ``compress`` leaves no half-written
results; after a user error a new --out is removed and an existing one keeps exactly what it held, after a
bug the checkpoints stay for --resume."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import energysplit.pipeline.export
import energysplit.training.loop
from energysplit.errors import BudgetError

FAST = ["--demo", "--data", "digits", "--arch", "vgg_small", "--width", "0.25", "--base-epochs", "0", "--epochs", "0",
        "--method", "uniform", "--no-progress"]


@pytest.fixture
def compress(tmp_path, monkeypatch, capsys):
    """Run ``energysplit compress`` in this process (costs on flops and mobile only, a private user dir);
    returns (exit status, stderr)."""
    from energysplit.cli import main

    monkeypatch.setenv("ENERGYSPLIT_HOME", str(tmp_path / "home"))
    (tmp_path / "c.json").write_text(json.dumps({"report_targets": ["flops", "mobile"]}))

    def run(out: Path, *extra: str):
        code = main(["compress", *FAST, "--config", str(tmp_path / "c.json"), "--out", str(out), *extra])
        return code, capsys.readouterr().err

    return run


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def _fail(exc: Exception):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _assert_bug_report(code: int, err: str, message: str) -> None:
    assert code == 1, err
    assert "Traceback (most recent call last)" in err and message in err
    assert err.strip().splitlines()[-1] == ("energysplit compress: internal error: this is a bug in energysplit "
                                            f"{__import__('energysplit').__version__}, not in your input; please "
                                            "report it with the command and the traceback above")
    assert "error: " + message not in err  # not dressed up as the user's error


def test_a_bug_late_in_compress_prints_its_traceback_leaves_no_results_and_keeps_its_checkpoints(
        compress, tmp_path, monkeypatch):
    """A RuntimeError while the outputs are written (model.es already staged): exit 1, no result file, the
    checkpoints kept, and once the bug is gone the same command with --resume finishes the run."""
    out = tmp_path / "new" / "out"
    with monkeypatch.context() as patch:
        patch.setattr(energysplit.pipeline.export, "export_onnx", _fail(RuntimeError("injected bug in export")))
        code, err = compress(out)
    _assert_bug_report(code, err, "RuntimeError: injected bug in export")
    assert [p.name for p in out.iterdir()] == [".work"]  # no results, half-written or whole
    assert (out / ".work" / "config.json").exists()
    code, err = compress(out, "--resume")
    assert code == 0, err
    assert {"report.json", "model.es", "model.onnx"} <= {p.name for p in out.iterdir()}
    assert not (out / ".work").exists()


def test_a_plain_value_error_is_a_bug_and_an_existing_folder_stays_as_it_was(compress, tmp_path, monkeypatch):
    """A built-in ValueError is no longer the user's error; the folder the user gave keeps its files, and
    gains only the checkpoints."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(out)
    monkeypatch.setattr(energysplit.training.loop, "evaluate", _fail(ValueError("injected bug in evaluate")))
    code, err = compress(out)
    _assert_bug_report(code, err, "ValueError: injected bug in evaluate")
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith(".work")} == before


def test_a_user_error_found_as_late_is_one_line_and_exit_2(compress, tmp_path, monkeypatch):
    monkeypatch.setattr(energysplit.pipeline.export, "export_onnx", _fail(BudgetError("injected: over budget\nmore")))
    out = tmp_path / "out"
    code, err = compress(out)
    assert code == 2
    assert err == "energysplit compress: error: injected: over budget more\n"  # one line, no traceback
    assert not out.exists()


def test_a_bug_in_another_command_exits_1(monkeypatch, capsys):
    import energysplit.zoo
    from energysplit.cli import main

    monkeypatch.setattr(energysplit.zoo, "list_models", _fail(KeyError("injected")))
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "KeyError: 'injected'" in err and "energysplit models: internal error: this is a bug" in err


@pytest.mark.parametrize("args, message", [
    (["compress", *FAST, "--epochs", "-1"], "energysplit compress: error: --epochs and --base-epochs must be >= 0"),
    (["bench", "--seeds", "0,x"], "energysplit bench: error: --seeds '0,x': write it like 0,1,2"),
    (["bench", "--budgets", "mobile"], "energysplit bench: error: --budgets 'mobile': write it like mobile:0.5"),
    (["inspect", "vgg_small", "--kwargs", "[1]"], "energysplit inspect: error: --kwargs must be a JSON object"),
    (["calibrate", "--name", "bad name"], "energysplit calibrate: error: target name 'bad name': use letters"),
])
def test_bad_flags_are_user_errors(args, message, capsys):
    from energysplit.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_a_user_error_in_its_own_process(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "energysplit", "compress", *FAST, "--budget", "half", "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("energysplit compress: error: cannot read budget 'half'")
    assert proc.stderr.count("\n") == 1 and not out.exists()


def test_one_line_joins_a_multi_line_message():
    from energysplit.cli import one_line

    assert one_line(BudgetError("first\n  second\n")) == "first second"
    assert one_line(BudgetError("")) == "BudgetError"
