"""``energysplit compress``: flags -> :class:`~energysplit.pipeline.compress.CompressConfig` -> compress."""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

from .common import DEVICE_HELP, command_line, interrupted, option, process_group

EPILOG = ("Writes into --out: model.es (reload with energysplit.load_model), model.onnx (checked in ONNX Runtime), "
          "report.json and report.md (before/after accuracy, MACs, params, latency, energy, widths per layer, time), "
          "steps.csv, growth.png and config.json (the resolved options and the command; reusable with --config). "
          "Work in progress is kept in --out/.work: after Ctrl-C or a kill, repeat the command with --resume.")


def json_object(text: str) -> dict:
    """``--arch-kwargs``: a JSON object, or argparse's one-line error."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); give an object like '{{\"growth_rate\": 8}}'") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"growth_rate\": 8}}', got {text!r}")
    return value


def add_compress(p):
    from ..pipeline.compress import DEMO, CompressConfig as C

    p.description = (f"Compress MODEL to the budget of --target; with no MODEL (or --demo) first train the built-in "
                     f"default ({DEMO['arch']} x{DEMO['width']:g} on {DEMO['subset']:,} {DEMO['data']} images, "
                     f"{DEMO['base_epochs']:g} epochs) and bring its cost on {DEMO['target']} to {DEMO['budget']} "
                     "of the original.")
    p.epilog = EPILOG
    p.add_argument("model", nargs="?", help="an energysplit archive (.es), a state dict (.pt, with --arch), "
                                             "or a pickled module (only with --trust-pickle)")
    p.add_argument("--demo", action="store_true", help="run the built-in default (ignores MODEL)")
    # every flag below is unset unless given: defaults < --demo < --config file < flags
    option(p, C, "arch", "architecture of a state dict (a zoo name, torchvision:<name> or package.module:factory), or of the model "
                         "trained in --demo", layered=True, type=str)
    option(p, C, "arch_kwargs", "more constructor arguments of --arch as a JSON object, e.g. "
                                '\'{"growth_rate": 8}\'', layered=True, type=json_object, metavar="JSON")
    option(p, C, "width", "width multiplier of --arch", layered=True, type=float)
    option(p, C, "act", "activation of --arch", layered=True, type=str)
    option(p, C, "target", "device target, one of `energysplit targets`", layered=True)
    option(p, C, "budget", "in the target's unit (2.5mJ, 0.4ms, 120M MACs) or a fraction of the input "
                           "model's cost", layered=True)
    option(p, C, "method", "splitting or a baseline: l1, taylor, slimming, random, uniform, uniform-scratch",
           layered=True)
    option(p, C, "data", "fashion-mnist, digits, or an ImageFolder directory", layered=True)
    option(p, C, "data_dir", "directory of the Fashion-MNIST IDX files", layered=True, type=str)
    option(p, C, "subset", "use only the first N training images", layered=True, type=int)
    option(p, C, "out", "output directory", layered=True)
    option(p, C, "epochs", "fine-tuning epochs, the same budget for every method", layered=True)
    option(p, C, "base_epochs", "epochs to train the default model in --demo", layered=True)
    option(p, C, "lr", "SGD learning rate", layered=True)
    option(p, C, "batch_size", "training batch size", layered=True)
    option(p, C, "seed", "random seed; the same seed gives the same result", layered=True)
    option(p, C, "channel_multiple", "keep every changed width a multiple of N: runtimes pick fast kernels by "
                                     "channel count (default: the target's, 16 for cpu on AVX-512 hosts, else 8; "
                                     "1 = channel by channel)", layered=True, type=int)
    option(p, C, "lut", "price the cpu target with this saved latency table (from `energysplit lut FILE`) "
                        "instead of one measured on this host, so a rerun elsewhere prices models the same way",
           layered=True, type=str, metavar="FILE")
    option(p, C, "cost_aware", "pruning ranks channels by importance per unit of the target's saving "
                               "(default: by importance)", layered=True)
    p.add_argument("--config", help="JSON file of these options; flags given here override it")
    option(p, C, "resume", "continue an interrupted run in --out", layered=True)
    option(p, C, "force", "overwrite results already in --out", layered=True)
    option(p, C, "trust_pickle", "allow loading a full pickled model (runs code from the file: only for files "
                                 "you trust)", layered=True)
    option(p, C, "device", DEVICE_HELP, layered=True)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    return run_compress


def resolve_config(args):
    """The run's :class:`CompressConfig`: defaults < the demo (no MODEL) < the --config file < the flags."""
    from ..pipeline.compress import DEMO, CompressConfig, read_config_file

    flags = {f.name: getattr(args, f.name) for f in fields(CompressConfig) if hasattr(args, f.name)}
    from_file = read_config_file(args.config) if args.config else {}
    demo = args.demo or not (args.model or from_file.get("model"))
    if demo:  # the built-in default job; a config file and flags still override its settings
        flags["model"] = from_file["model"] = None
    return CompressConfig.resolve(DEMO if demo else {}, from_file, flags)


def run_compress(args) -> int:
    from ..pipeline.compress import compress
    from ..pipeline.report import summary
    from ..training.distributed import is_main

    config = resolve_config(args)
    with process_group():
        try:
            report = compress(config, command=command_line(args.argv))
        except KeyboardInterrupt:
            return interrupted("compress", config.out)
        main = is_main()
    if not main:  # rank 0 prints the summary
        return 0
    budget = report["budget"]
    print("\n" + summary(report))
    print(f"\nbudget {budget['budget']:.4g} {budget['unit']} on {budget['target']}; outputs in {config.out}/ "
          "(report.md, model.es, model.onnx)")
    return 0
