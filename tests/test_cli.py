import subprocess
import sys


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


def _options(command: str) -> dict:
    """--flag -> argparse action of one command's parser."""
    from energysplit.cli import build_parser

    sub = build_parser(command)._subparsers._group_actions[0].choices[command]
    return {a.option_strings[-1]: a for a in sub._actions if a.option_strings}


def test_flag_defaults_come_from_the_config_dataclasses():
    from dataclasses import fields

    from energysplit.cli.common import shown
    from energysplit.cost.calibrate import CalibrateConfig
    from energysplit.pipeline.compress import CompressConfig
    from energysplit.training.loop import TrainConfig

    compress = _options("compress")
    documented = [f for f in fields(CompressConfig) if f.default is not None and not isinstance(f.default, bool)
                  and "--" + f.name.replace("_", "-") in compress]
    assert {f.name for f in documented} >= {"target", "budget", "method", "data", "out", "epochs", "base_epochs",
                                            "lr", "batch_size", "seed", "device"}
    for f in documented:
        action = compress["--" + f.name.replace("_", "-")]
        assert action.default is None  # unset: a --config file or the demo may set it
        assert action.help.endswith(f"(default: {shown(f.default)})"), (f.name, action.help)
    train = _options("train")
    for name in ("epochs", "lr", "batch_size", "seed"):
        assert train["--" + name.replace("_", "-")].default == getattr(TrainConfig, name)
    calibrate = _options("calibrate")
    assert calibrate["--threads"].default == CalibrateConfig.threads
    assert calibrate["--input-shape"].help.endswith(f"(default: {shown(CalibrateConfig.input_shape)})")


def test_compress_config_layers_defaults_demo_file_and_flags(tmp_path):
    from energysplit.cli import build_parser
    from energysplit.cli.compress import resolve_config
    from energysplit.pipeline.compress import DEMO, CompressConfig

    def config(*args):
        return resolve_config(build_parser("compress").parse_args(["compress", *args]))

    assert config() == CompressConfig.resolve(DEMO)  # no MODEL: the demo
    assert config().arch == DEMO["arch"] and config().epochs == DEMO["epochs"]
    (tmp_path / "c.json").write_text('{"epochs": 5, "lr": 0.01, "model": "m.es"}')
    c = config("--config", str(tmp_path / "c.json"), "--lr", "0.2", "--no-progress", "--cost-aware")
    assert (c.model, c.arch, c.epochs, c.lr, c.progress, c.cost_aware) == ("m.es", None, 5, 0.2, False, True)
    assert (c.target, c.seed, c.force) == (CompressConfig.target, CompressConfig.seed, False)
    c = config("--demo", "--config", str(tmp_path / "c.json"))
    assert (c.model, c.arch, c.epochs) == (None, DEMO["arch"], 5)  # --demo ignores the file's model


def test_bench_flags_override_the_profile():
    from energysplit.cli import build_parser
    from energysplit.cli.bench import bench_config
    from energysplit.pipeline.bench import PROFILES

    def config(*args):
        return bench_config(build_parser("bench").parse_args(["bench", *args]))

    assert config("--profile", "tiny") == PROFILES["tiny"]
    c = config("--models", "a,b", "--budgets", "mobile:0.5,cpu:0.7", "--seeds", "1,2", "--device", "cuda")
    assert (c.models, c.budgets, c.seeds, c.latency_models, c.device) == (
        ("a", "b"), (("mobile", 0.5), ("cpu", 0.7)), (1, 2), ("a", "b"), "cuda")
    assert c.methods == PROFILES["quick"].methods
    assert config("--profile", "medium", "--epochs", "10").epochs == 10.0
    assert config("--profile", "medium", "--protocol", "grow", "--epochs", "8").epochs == 8.0


def test_bench_growth_flag_changes_the_recipe_of_the_growth_protocols(tmp_path, capsys):
    from energysplit.cli import build_parser, main
    from energysplit.cli.bench import bench_config

    args = ["bench", "--profile", "tiny", "--protocol", "grow"]
    c = bench_config(build_parser("bench").parse_args([*args, "--growth", "seed_fraction=0.6,step_growth=2,"
                                                                          "one_schedule=false,score_samples=256"]))
    assert (c.growth.seed_fraction, c.growth.step_growth, c.growth.one_schedule, c.growth.score_samples) == (
        0.6, 2.0, False, 256)
    for flags, message in ((["--growth", "seed=0.6"], "write KEY=VALUE with KEY one of seed_fraction, "),
                           (["--growth", "score_samples=many"], "'many' is not a int"),
                           (["--growth", "seed_fraction=1.5"], "seed fraction must be in (0, 1)"),
                           (["--growth", "offspring_share=1"], "offspring share must be in (0, 1)"),
                           (["--protocol", "compress", "--growth", "seed_fraction=0.5"], "--growth sets the recipe")):
        assert main([*args, *flags, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compress_help_is_fast_to_build():
    """Only the command being run gets its flags: `energysplit compress --help` imports no torch."""
    code = ("import sys; from energysplit.cli import build_parser; build_parser('compress').format_help(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_bench_protocol_flag(capsys):
    from energysplit.cli import main
    from energysplit.cli.bench import bench_config
    from energysplit.cli import build_parser

    args = build_parser("bench").parse_args(["bench", "--profile", "tiny", "--protocol", "grow"])
    config = bench_config(args)
    assert config.protocol == "grow" and "splitting-blind" in config.methods
    assert main(["bench", "--profile", "tiny", "--protocol", "nope", "--out", "unused"]) == 2
    assert capsys.readouterr().err.strip() == ("energysplit bench: error: unknown protocol 'nope'; use one of "
                                                "compress, grow, scratch")


def test_lut_flag_reaches_the_compress_grow_and_bench_configs(tmp_path, capsys):
    import shutil
    from pathlib import Path

    from energysplit.cli import build_parser, main
    from energysplit.cli.bench import bench_config
    from energysplit.cli.compress import resolve_config
    from energysplit.pipeline.design import DesignConfig, option_fields

    args = build_parser("compress").parse_args(["compress", "--lut", "t.json"])
    assert resolve_config(args).lut == "t.json"
    (tmp_path / "c.json").write_text('{"lut": "from-file.json"}')
    args = build_parser("compress").parse_args(["compress", "--config", str(tmp_path / "c.json")])
    assert resolve_config(args).lut == "from-file.json"
    args = build_parser("grow").parse_args(["grow", "--lut", "t.json", "--bn-batches", "7"])
    config = DesignConfig(**{name: getattr(args, name) for name in option_fields()})
    assert (config.lut, config.bn_batches) == ("t.json", 7)
    table = tmp_path / "table.json"
    shutil.copy(sorted(Path(__file__).parents[1].joinpath("benchmarks", "luts").glob("*.json"))[0], table)
    args = build_parser("bench").parse_args(["bench", "--profile", "tiny", "--lut", str(table)])
    assert bench_config(args).lut == str(table)
    assert main(["bench", "--profile", "tiny", "--lut", str(tmp_path / "nope.json"), "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("energysplit bench: error: ") and "\n" not in err and "no such file" in err


def test_a_growth_sweep_folder_holds_one_recipe(tmp_path):
    from dataclasses import replace

    import pytest

    from energysplit.errors import ConfigError
    from energysplit.pipeline.bench import profile, run_benchmark

    config = replace(profile("tiny", "grow"), models=())  # no jobs: only the folder's record is under test
    run_benchmark(config, tmp_path, log=lambda s: None)
    run_benchmark(config, tmp_path, log=lambda s: None)  # the same recipe resumes
    other = replace(config, growth=replace(config.growth, seed_fraction=0.6))
    with pytest.raises(ConfigError, match="another growth recipe"):
        run_benchmark(other, tmp_path, log=lambda s: None)
