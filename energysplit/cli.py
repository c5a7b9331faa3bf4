"""Command-line interface: parse, build a config, call the API, write outputs.

Each subcommand is a ``add_<name>(subparsers)`` function that sets ``func``; heavy imports happen
inside the handlers so ``energysplit --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


DEVICE_HELP = ("where training, evaluation and scoring run: cpu (default), cuda, cuda:N, or auto (a GPU when "
               "present); the model moves there for each step and back")


class UserError(Exception):
    """An error in the user's input: printed as one line, exit status 2."""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, digits, or an ImageFolder directory (default: fashion-mnist)")
    p.add_argument("--data-dir", help="directory holding the Fashion-MNIST IDX files "
                                      "(default: $ENERGYSPLIT_FASHION_MNIST or the Debian package's)")
    p.add_argument("--subset", type=int, help="use only the first N training images (quick runs)")


def load_data(args):
    from .training.data import load_dataset

    splits = load_dataset(args.data, data_dir=args.data_dir) if args.data == "fashion-mnist" else load_dataset(args.data)
    if getattr(args, "subset", None):
        splits = splits.subset(train=args.subset, val=max(500, args.subset // 10), test=None)
    return splits


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=run_models)


def run_models(args) -> int:
    from .zoo import DEFAULT_MODEL, list_models

    for name in list_models():
        print(name + ("  (default)" if name == DEFAULT_MODEL else ""))
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model from scratch and report accuracy")
    p.add_argument("--arch", default=None, help="zoo model name (default: the zoo's default)")
    p.add_argument("--width", type=float, default=None, help="width multiplier")
    p.add_argument("--act", default=None, help="activation (relu, relu6, silu, hardswish, ...)")
    _add_data_args(p)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="save the trained state dict here (.pt)")
    p.add_argument("--json", action="store_true", help="print the result record as JSON")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    import torch

    from .training.loop import TrainConfig, evaluate, seed_everything, train
    from .zoo import DEFAULT_MODEL, create_model

    splits = load_data(args)
    arch = args.arch or DEFAULT_MODEL
    seed_everything(args.seed)
    model = create_model(arch, in_channels=splits.in_channels, num_classes=splits.num_classes,
                         width=args.width, act=args.act)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    from ._device import use_device

    with use_device(args.device):
        result = train(model, splits.train, config, val=splits.val)
        test = evaluate(model, splits.test)
    params = sum(p.numel() for p in model.parameters())
    record = {"arch": arch, "data": splits.name, "params": params, **result.to_dict(),
              "test_accuracy": test.accuracy, "test_loss": test.loss}
    if args.out:
        from ._io import atomic_save

        atomic_save(model.state_dict(), args.out)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{arch} on {splits.name}: {params:,} params, {result.epochs:g} epochs in {result.seconds:.1f} s, "
              f"val acc {result.val_accuracy:.4f}, test acc {test.accuracy:.4f}")
    return 0


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="print a model's neuron groups: width, splittable or why not")
    p.add_argument("model", help="zoo name, torchvision:<name> (random weights), package.module:factory, "
                                 "or a saved model archive")
    p.add_argument("--input-shape", help="input shape without the batch dim, e.g. 1,28,28 (default: "
                                         "1,28,28 for zoo models, 3,224,224 otherwise; an archive's own)")
    p.add_argument("--kwargs", default="{}", help='constructor arguments as JSON, e.g. \'{"width": 0.5}\'')
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    p.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    from pathlib import Path

    from .graph.archive import build_model, load_model
    from .graph.trace import build_inventory

    if Path(args.model).is_file():
        model, record = load_model(args.model)
        shape = record["input_shape"]
    else:
        model = build_model({"name": args.model, "kwargs": json.loads(args.kwargs)})
        shape = (1, 28, 28) if ":" not in args.model else (3, 224, 224)
    if args.input_shape:
        try:
            shape = tuple(int(s) for s in args.input_shape.split(","))
        except ValueError:
            raise ValueError(f"--input-shape must be comma-separated ints like 1,28,28, got {args.input_shape!r}")
    inv = build_inventory(model, shape)
    if args.json:
        print(json.dumps([g.to_dict() for g in inv], indent=2))
        return 0
    rows = [(g.id, str(g.width), ",".join(op.act or op.kind for op in g.chain),
             "splittable" if g.splittable else ("prunable only: " if g.prunable else "frozen: ") + g.reason)
            for g in inv]
    header = ("group", "width", "chain", "status")
    sizes = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    for r in [header] + rows:
        print(f"{r[0]:<{sizes[0]}}  {r[1]:>{sizes[1]}}  {r[2]:<{sizes[2]}}  {r[3]}")
    print(f"{len(inv)} groups on input {tuple(shape)}: {len(inv.splittable())} splittable, "
          f"{len(inv.prunable())} prunable, {sum(not g.prunable for g in inv)} frozen")
    return 0


def add_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a model to a device budget (splitting or a pruning baseline)",
                       description="Compress MODEL to the budget of --target; with no MODEL (or --demo) first train "
                                   "the built-in default (MobileNetV2 x0.5 on 8,000 Fashion-MNIST images, 2 epochs) "
                                   "and halve its energy on the mobile target.",
                       epilog="Writes into --out: model.es (reload with energysplit.load_model), model.onnx (checked "
                              "in ONNX Runtime), report.json and report.md (before/after accuracy, MACs, params, "
                              "latency, energy, widths per layer, time), steps.csv, growth.png and config.json (the "
                              "resolved options and the command; reusable with --config). Work in progress is kept "
                              "in --out/.work: after Ctrl-C or a crash, repeat the command with --resume.")
    p.add_argument("model", nargs="?", help="an energysplit archive (.es), a state dict (.pt, with --arch), "
                                             "or a pickled module (only with --trust-pickle)")
    p.add_argument("--demo", action="store_true", help="run the built-in default (ignores MODEL)")
    p.add_argument("--arch", help="architecture of a state dict (a zoo name or torchvision:<name>), or of the "
                                  "model trained in --demo")
    p.add_argument("--width", type=float, help="width multiplier of --arch")
    p.add_argument("--act", help="activation of --arch")
    p.add_argument("--target", help="device target (see `energysplit targets`; default mobile)")
    p.add_argument("--budget", help="in the target's unit (2.5mJ, 0.4ms, 120M MACs) or a fraction of the "
                                    "input model's cost (default 0.5)")
    p.add_argument("--method", help="splitting (default) or a baseline: l1, taylor, slimming, random, uniform, "
                                    "uniform-scratch")
    p.add_argument("--data", help="fashion-mnist (default), digits, or an ImageFolder directory")
    p.add_argument("--data-dir", help="directory of the Fashion-MNIST IDX files")
    p.add_argument("--subset", type=int, help="use only the first N training images")
    p.add_argument("--out", help="output directory (default runs/compress)")
    p.add_argument("--epochs", type=float, help="fine-tuning epochs, the same budget for every method (default 2)")
    p.add_argument("--base-epochs", type=float, help="epochs to train the default model in --demo (default 2)")
    p.add_argument("--lr", type=float, help="SGD learning rate (default 0.05)")
    p.add_argument("--batch-size", type=int, help="training batch size (default 128)")
    p.add_argument("--seed", type=int, help="random seed; the same seed gives the same result (default 0)")
    p.add_argument("--channel-multiple", type=int,
                   help="keep every changed width a multiple of N: runtimes pick fast kernels by channel "
                        "count (default: the target's, 16 for cpu on AVX-512 hosts, else 8; 1 = channel by channel)")
    p.add_argument("--cost-aware", action="store_true",
                   help="pruning ranks channels by importance per unit of the target's saving (default: importance)")
    p.add_argument("--config", help="JSON file of these options; flags given here override it")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading a full pickled model (runs code from the file: only for files you trust)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_compress)


def run_compress(args) -> int:
    import shlex

    from .pipeline.compress import DEMO, CompressConfig, compress, read_config_file
    from .pipeline.report import summary

    flags = {k: getattr(args, k) for k in ("model", "arch", "width", "act", "target", "budget", "method", "data",
                                           "data_dir", "subset", "out", "epochs", "base_epochs", "lr", "batch_size",
                                           "seed", "channel_multiple", "device")}
    flags.update(resume=args.resume or None, force=args.force or None, trust_pickle=args.trust_pickle or None,
                 cost_aware=args.cost_aware or None,
                 progress=False if args.no_progress else None)
    from_file = read_config_file(args.config) if args.config else {}
    demo = args.demo or not (args.model or from_file.get("model"))
    if demo:  # the built-in default job; a config file and flags still override its settings
        flags["model"] = from_file["model"] = None
    config = CompressConfig.resolve(DEMO if demo else {}, from_file, flags)
    command = "energysplit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    from .training.distributed import destroy_distributed, init_distributed, is_main

    init_distributed()  # under torchrun: join its process group (data-parallel); otherwise nothing
    try:
        report = compress(config, command=command)
        main = is_main()
    except KeyboardInterrupt:
        hint = "; continue with the same command and --resume" if (Path(config.out) / ".work").is_dir() else ""
        print(f"energysplit compress: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        destroy_distributed()
    if not main:  # rank 0 prints the summary
        return 0
    budget = report["budget"]
    print("\n" + summary(report))
    print(f"\nbudget {budget['budget']:.4g} {budget['unit']} on {budget['target']}; outputs in {config.out}/ "
          "(report.md, model.es, model.onnx)")
    return 0


def _shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated ints like 1,28,28, got {text!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"--input-shape must be C,H,W of positive ints, got {text!r}")
    return shape


def resolve_model(name: str, input_shape, width: float | None = None, act: str | None = None):
    """The model a command names: a saved archive (its own weights) or a zoo / torchvision / module:factory
    name built with random weights and ``in_channels`` from the input shape."""
    from pathlib import Path

    from .graph.archive import build_model, load_model

    if Path(name).is_file():
        return load_model(name)[0]
    kwargs = {k: v for k, v in {"width": width, "act": act}.items() if v is not None}
    if ":" not in name:
        kwargs["in_channels"] = input_shape[0]
    return build_model({"name": name, "kwargs": kwargs}).eval()


def add_targets(sub) -> None:
    p = sub.add_parser("targets", help="list device targets with their units and origins")
    p.add_argument("--json", action="store_true", help="print the targets as JSON")
    p.set_defaults(func=run_targets)


def run_targets(args) -> int:
    from .cost.estimator import TARGETS, target_info
    from .cost.plugins import PLUGIN_ERRORS

    infos = [target_info(n) for n in TARGETS.names()]
    if args.json:
        print(json.dumps({"targets": infos, "broken_plugins": PLUGIN_ERRORS}, indent=2))
        return 0
    rows = [(i["name"], i["unit"], i["estimator"], i["origin"], i["description"]) for i in infos]
    header = ("target", "unit", "estimator", "origin", "description")
    sizes = [max(len(str(r[k])) for r in rows + [header]) for k in range(4)]
    for r in [header] + rows:
        print("  ".join(f"{str(v):<{sizes[k]}}" for k, v in enumerate(r[:4])) + "  " + r[4])
    for e in PLUGIN_ERRORS:
        print(f"broken plugin {e['plugin']!r} ({e['group']}, from {e['origin']}): {e['error']}")
    return 0


def add_estimate(sub) -> None:
    p = sub.add_parser("estimate", help="cost of a model on a target: total and per-layer table")
    p.add_argument("model", help="zoo name (random weights), torchvision:<name>, package.module:factory, "
                                 "or a saved model archive")
    p.add_argument("--target", default="flops", help="device target (see `energysplit targets`; default flops)")
    p.add_argument("--input-shape", default="1,28,28", help="C,H,W without the batch dim (default 1,28,28)")
    p.add_argument("--width", type=float, help="width multiplier of a zoo model")
    p.add_argument("--act", help="activation of a zoo model")
    p.add_argument("--csv", help="write the per-layer table to this CSV file")
    p.add_argument("--json", help="write the report (total, unit, layers, unsupported, meta) to this JSON file")
    p.add_argument("--all-layers", action="store_true", help="also print layers that cost 0")
    p.set_defaults(func=run_estimate)


def run_estimate(args) -> int:
    import pandas as pd

    from .cost.estimator import create_target
    from ._io import atomic_write_json, atomic_write_text

    shape = _shape_arg(args.input_shape)
    est = create_target(args.target)
    model = resolve_model(args.model, shape, args.width, args.act)
    report = est.estimate(model, shape)
    frame = report.to_frame()
    if args.csv:
        atomic_write_text(args.csv, frame.to_csv(index=False))
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    shown = frame if args.all_layers else frame[frame["cost"].isna() | (frame["cost"] != 0)]
    shown = shown.rename(columns={"cost": f"cost [{report.unit}]"})
    with pd.option_context("display.max_rows", None, "display.width", 160, "display.max_columns", 12):
        print(shown.to_string(index=False))
    print(f"\n{args.model} on {args.target} ({est.name}), input {'x'.join(map(str, shape))}, batch 1: "
          f"total {report.total:.6g} {report.unit}")
    for key in ("flops", "predicted_ms", "p90_ms"):
        if key in report.meta:
            print(f"  {key}: {report.meta[key]:.6g}")
    if report.unsupported:
        print(f"  not costed ({len(report.unsupported)}): {', '.join(report.unsupported)}")
    return 0


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="measure an ONNX Runtime latency table on this machine and save it "
                                         "as a new target in the user directory")
    p.add_argument("--name", required=True, help="name of the new target")
    p.add_argument("--arch", help="zoo model whose layers to measure (default: the zoo default)")
    p.add_argument("--width", type=float, help="width multiplier of --arch")
    p.add_argument("--input-shape", default="1,28,28", help="C,H,W (default 1,28,28)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--no-neighbours", action="store_true",
                   help="skip the +-1 channel variants that marginal costs need (measured later on demand)")
    p.add_argument("--force", action="store_true", help="replace an existing user target of that name")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    from .cost.calibrate import CalibrateConfig, calibrate

    config = CalibrateConfig(args.name, args.arch, args.width, _shape_arg(args.input_shape), args.threads,
                             not args.no_neighbours, args.force)
    r = calibrate(config)
    print(f"target {r['name']!r}: {r['entries']} table entries measured in {r['seconds']:.1f} s\n"
          f"  predicted {r['predicted_ms']:.4f} ms, measured {r['measured_ms']:.4f} ms (P90 {r['p90_ms']:.4f}), "
          f"error {r['error_pct']:+.1f}%\n  table {r['table']}\n  target {r['target']}\n"
          f"use it with --target {r['name']}")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="compare splitting with the pruning baselines at equal budgets",
                       description="Train one base model per architecture, compress it with every method to "
                                   "the same budgets and fine-tuning epochs over several seeds; write results.csv, "
                                   "summary.csv/.md and pareto.png. Re-running the same command resumes.")
    p.add_argument("--profile", default="quick", help="tiny, quick (default), medium or full")
    p.add_argument("--out", help="output directory (default benchmarks/results/compare-<profile>)")
    p.add_argument("--models", help="comma-separated zoo names (overrides the profile)")
    p.add_argument("--methods", help="comma-separated methods (overrides the profile)")
    p.add_argument("--seeds", help="comma-separated seeds (overrides the profile)")
    p.add_argument("--budgets", help="comma-separated target:fraction pairs, e.g. mobile:0.5,cpu:0.7 "
                                     "(overrides the profile; cpu budgets apply to every model given)")
    p.add_argument("--channel-multiple", type=int,
                   help="keep every changed width a multiple of N (default: each target's own, see compress)")
    p.add_argument("--act", help="activation of the zoo models, e.g. silu (default: each model's own)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--worker", action="store_true",
                   help="be one of several processes sharing --out (e.g. on one GPU): each runs the next job "
                        "that no live process has claimed")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    import shlex
    from dataclasses import replace

    from .pipeline.bench import PROFILES, run_benchmark

    if args.profile not in PROFILES:
        raise ValueError(f"unknown profile {args.profile!r}; use one of {', '.join(PROFILES)}")
    config = PROFILES[args.profile]
    if args.models:
        config = replace(config, models=tuple(args.models.split(",")))
    if args.methods:
        config = replace(config, methods=tuple(args.methods.split(",")))
    if args.seeds:
        config = replace(config, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.budgets:
        pairs = [b.split(":") for b in args.budgets.split(",")]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"--budgets {args.budgets!r}: write target:fraction pairs like mobile:0.5,cpu:0.7")
        config = replace(config, budgets=tuple((t, float(f)) for t, f in pairs), latency_models=config.models)
    if args.channel_multiple is not None:
        config = replace(config, channel_multiple=args.channel_multiple)
    if args.act:
        config = replace(config, act=args.act)
    if args.device:
        config = replace(config, device=args.device)
    out = args.out or f"benchmarks/results/compare-{args.profile}"
    from .training.distributed import destroy_distributed, init_distributed, is_main

    init_distributed()  # under torchrun: data-parallel, rank 0 writes
    try:
        run_benchmark(config, out, command="energysplit " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                      worker=args.worker)
        main = is_main()
    finally:
        destroy_distributed()
    if main:
        print((Path(out) / "summary.md").read_text())
    return 0


COMMANDS = [add_models, add_train, add_inspect, add_compress, add_targets, add_estimate, add_calibrate, add_bench]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="energysplit", description=(
        "Energy-aware splitting steepest descent: compress a network to a device's energy, latency or "
        "FLOPs budget."))
    parser.add_argument("--version", action="version", version=f"energysplit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .errors import USER_ERRORS

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe (e.g. `| head`) shows up here at the latest
        return code
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, as a shell reports a command that a closed pipe stopped
    except USER_ERRORS as exc:
        print(f"energysplit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"energysplit {args.command}: interrupted", file=sys.stderr)
        return 130
