"""``energysplit grow``: flags -> :class:`~energysplit.pipeline.design.DesignConfig` -> the grow job."""
from __future__ import annotations

from .common import DEVICE_HELP, command_line, interrupted, option

EPILOG = ("Writes into --out what compress writes: model.es, model.onnx (checked in ONNX Runtime), report.json and "
          "report.md (the seed and the grown network: accuracy, MACs, params, latency, energy, widths per layer), "
          "steps.csv, growth.png (accuracy and cost per step) and config.json. Work in progress is kept in "
          "--out/.work: after Ctrl-C or a kill, repeat the command with --resume. The phases follow one learning-rate "
          "schedule and one SGD momentum. The growth settings' defaults were chosen by tuning runs on validation "
          "data (README).")


def add_grow(p):
    from ..pipeline.design import DesignConfig as C

    p.description = ("Design a network for a device budget: a small seed of --arch (a uniform width costing "
                     "--seed-fraction of the budget, or --seed-width), trained from scratch, grown by energy-aware "
                     "splitting until the budget, then trained; --epochs is the total over these phases.")
    p.epilog = EPILOG
    option(p, C, "arch", "zoo architecture, one of `energysplit models`")
    option(p, C, "width", "the largest width multiplier of --arch: no layer grows past its width there")
    option(p, C, "act", "activation of --arch (default: the architecture's own)", type=str)
    option(p, C, "target", "device target, one of `energysplit targets`")
    option(p, C, "budget", "in the target's unit (0.03mJ, 0.4ms, 120M MACs) or a fraction of --arch at --width")
    option(p, C, "data", "fashion-mnist, digits, or an ImageFolder directory")
    option(p, C, "data_dir", "directory of the Fashion-MNIST IDX files", type=str)
    option(p, C, "subset", "use only the first N training images", type=int)
    option(p, C, "out", "output directory")
    option(p, C, "epochs", "training epochs in all: seed, growth steps and the final training share them")
    option(p, C, "lr", "SGD learning rate")
    option(p, C, "batch_size", "training batch size")
    option(p, C, "seed", "random seed; the same seed gives the same result")
    option(p, C, "seed_fraction", "the seed's cost as a fraction of the budget")
    option(p, C, "seed_width", "the seed's width multiplier instead of --seed-fraction", type=float)
    option(p, C, "step_growth", "growth step k may raise the cost to the seed's x this^k")
    option(p, C, "eps", "the split step size")
    option(p, C, "selector", "lp (energy-aware), cost-blind (S2D) or random (a control)")
    option(p, C, "channel_multiple", "keep every width a multiple of N (default: the target's)", type=int)
    option(p, C, "bn_batches", "re-estimate the BatchNorm statistics on N training batches after every training "
                               "run (0: off)")
    option(p, C, "lut", "price the cpu target with this saved latency table (from `energysplit lut FILE`) "
                        "instead of one measured on this host", type=str, metavar="FILE")
    option(p, C, "resume", "continue an interrupted run in --out")
    option(p, C, "force", "overwrite results already in --out")
    option(p, C, "device", DEVICE_HELP)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return run_grow


def run_grow(args) -> int:
    from ..pipeline.design import DesignConfig, design, option_fields
    from ..pipeline.report import summary

    config = DesignConfig(**{name: getattr(args, name) for name in option_fields()})
    try:
        report = design(config, command=command_line(args.argv))
    except KeyboardInterrupt:
        return interrupted("grow", config.out)
    budget, seed = report["budget"], report["seed"]
    print("\n" + summary(report) + "\n(before: the trained seed; after: the grown network)")
    print(f"\ngrown from a x{seed['width']:.3g} seed in {len(report['growth_steps'])} steps to "
          f"{budget['final_cost']:.4g} {budget['unit']} on {budget['target']} (budget {budget['budget']:.4g}); "
          f"outputs in {config.out}/ (report.md, model.es, model.onnx)")
    return 0
