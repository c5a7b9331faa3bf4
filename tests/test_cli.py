import subprocess
import sys
import time


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "energysplit", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_subcommands_and_import_is_light():
    proc = _run("--help")
    assert proc.returncode == 0
    for name in ("models", "train"):
        assert name in proc.stdout
    code = "import sys, energysplit; print(any(m in sys.modules for m in ('torch', 'onnxruntime', 'pandas', 'fvcore', 'matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "False"


def test_help_of_every_subcommand():
    from energysplit.cli import build_parser

    parser = build_parser()
    names = parser._subparsers._group_actions[0].choices.keys()
    for name in names:
        proc = _run(name, "--help")
        assert proc.returncode == 0, (name, proc.stderr)
        assert "usage: energysplit " + name in proc.stdout


def test_train_on_digits_and_errors(tmp_path):
    proc = _run("train", "--arch", "vgg_small", "--width", "0.25", "--data", "digits", "--epochs", "1", "--json",
                "--out", str(tmp_path / "m.pt"))
    assert proc.returncode == 0, proc.stderr
    assert '"test_accuracy"' in proc.stdout and (tmp_path / "m.pt").exists()
    bad = _run("train", "--arch", "nope", "--data", "digits")
    assert bad.returncode == 2
    assert "unknown model 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    bad = _run("train", "--data", "cifar")
    assert bad.returncode == 2 and "unknown dataset" in bad.stderr
