"""Command-line interface: parse, build a config, call the API, write outputs.

Each subcommand is a ``add_<name>(subparsers)`` function that sets ``func``; heavy imports happen
inside the handlers so ``energysplit --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys


class UserError(Exception):
    """An error in the user's input: printed as one line, exit status 2."""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, digits, or an ImageFolder directory (default: fashion-mnist)")
    p.add_argument("--data-dir", help="directory holding the Fashion-MNIST IDX files "
                                      "(default: $ENERGYSPLIT_FASHION_MNIST or the Debian package's)")
    p.add_argument("--subset", type=int, help="use only the first N training images (quick runs)")


def load_data(args):
    from .data import load_dataset

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
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    import torch

    from .train import TrainConfig, evaluate, seed_everything, train
    from .zoo import DEFAULT_MODEL, create_model

    splits = load_data(args)
    arch = args.arch or DEFAULT_MODEL
    seed_everything(args.seed)
    model = create_model(arch, in_channels=splits.in_channels, num_classes=splits.num_classes,
                         width=args.width, act=args.act)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    result = train(model, splits.train, config, val=splits.val)
    test = evaluate(model, splits.test)
    params = sum(p.numel() for p in model.parameters())
    record = {"arch": arch, "data": splits.name, "params": params, **result.to_dict(),
              "test_accuracy": test.accuracy, "test_loss": test.loss}
    if args.out:
        from .io import atomic_save

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

    from .archive import build_model, load_model
    from .graph import build_inventory

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


COMMANDS = [add_models, add_train, add_inspect]


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
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"energysplit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"energysplit {args.command}: interrupted", file=sys.stderr)
        return 130
