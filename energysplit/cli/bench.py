"""``energysplit bench``: a profile (:data:`~energysplit.pipeline.bench.PROFILES`) and flags -> a
:class:`~energysplit.pipeline.bench.BenchConfig` -> the sweep."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .common import DEVICE_HELP, command_line, process_group

DEFAULT_PROFILE = "quick"


def add_bench(p):
    p.description = ("Train one base model per architecture, compress it with every method to the same budgets "
                     "and fine-tuning epochs over several seeds; write results.csv, summary.csv/.md and "
                     "pareto.png. Re-running the same command resumes.")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help="tiny, quick, medium or full (default: %(default)s)")
    p.add_argument("--protocol", default="compress",
                   help="compress (one trained base model, equal fine-tuning), grow (every method trains E epochs "
                        "in all from nothing) or scratch (every grow method's widths retrained from scratch) "
                        "(default: %(default)s)")
    p.add_argument("--out", help="output directory (default: benchmarks/results/compare-<profile>; other protocols: "
                                 "<protocol>-<profile>)")
    # the flags below override the profile's setting when given
    p.add_argument("--models", help="comma-separated zoo names (overrides the profile)")
    p.add_argument("--methods", help="comma-separated methods (overrides the profile)")
    p.add_argument("--seeds", help="comma-separated seeds (overrides the profile)")
    p.add_argument("--budgets", help="comma-separated target:fraction pairs, e.g. mobile:0.5,cpu:0.7 "
                                     "(overrides the profile; cpu budgets apply to every model given)")
    p.add_argument("--epochs", type=float, metavar="E",
                   help="compress: every method's fine-tuning epochs; grow and scratch: every method's training "
                        "epochs in all (overrides the profile; a folder holds one E)")
    p.add_argument("--channel-multiple", type=int,
                   help="keep every changed width a multiple of N (default: each target's own, see compress)")
    p.add_argument("--lut", metavar="FILE", help="price the cpu target with this saved latency table (from `energysplit lut FILE`)")
    p.add_argument("--act", help="activation of the zoo models, e.g. silu (default: each model's own)")
    p.add_argument("--device", help=DEVICE_HELP + " (default: the profile's)")
    p.add_argument("--growth", metavar="KEY=VALUE,...",
                   help="grow and scratch: change the splitting methods' growth recipe, e.g. "
                        "seed_fraction=0.6,step_growth=2 (fields of SeedGrowth; a folder holds one recipe)")
    p.add_argument("--tuning", action="store_true",
                   help="a tuning run: rank by the validation split and never read the test split (choose settings "
                        "on it, then run the chosen setting without --tuning)")
    p.add_argument("--worker", action="store_true",
                   help="be one of several processes sharing --out (e.g. on one GPU): each runs the next job "
                        "that no live process has claimed")
    return run_bench


def budget_pair(text: str) -> tuple[str, float]:
    """``"mobile:0.5"`` -> ``("mobile", 0.5)``."""
    target, fraction = text.split(":")
    return target, float(fraction)


def split_list(text: str, parse, flag: str, example: str) -> tuple:
    """A comma-separated flag value, each item parsed by ``parse``."""
    from ..errors import ConfigError

    try:
        return tuple(parse(s) for s in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r}: write it like {example}") from exc


def bench_config(args):
    """The profile's :class:`~energysplit.pipeline.bench.BenchConfig` with the flags that were given."""
    from ..pipeline.bench import profile

    config = profile(args.profile, args.protocol)
    changes = {k: getattr(args, k) for k in ("epochs", "channel_multiple", "act", "device") if getattr(args, k) is not None}
    if args.tuning:
        changes["tuning"] = True
    if args.lut:
        changes["lut"] = lut_setting(args.lut)
    changes.update({k: tuple(getattr(args, k).split(",")) for k in ("models", "methods") if getattr(args, k)})
    if args.seeds:
        changes["seeds"] = split_list(args.seeds, int, "--seeds", "0,1,2")
    if args.growth:
        changes["growth"] = growth_recipe(config, args.growth)
    if args.budgets:  # a cpu budget applies to every model given
        changes["budgets"] = split_list(args.budgets, budget_pair, "--budgets", "mobile:0.5,cpu:0.7")
        changes["latency_models"] = changes.get("models", config.models)
    return replace(config, **changes)


def growth_recipe(config, text: str):
    """``--growth``: the profile's growth recipe with ``key=value`` fields changed (a one-line ConfigError for
    an unknown field, a value of the wrong type, or a protocol without growth)."""
    from dataclasses import fields

    from ..errors import ConfigError

    if config.protocol == "compress":
        raise ConfigError("--growth sets the recipe of --protocol grow or scratch; compress grows with its own")
    names = [f.name for f in fields(config.growth)]
    changes = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"--growth {item!r}: write KEY=VALUE with KEY one of {', '.join(names)}")
        current = getattr(config.growth, key)
        try:
            if isinstance(current, bool):
                changes[key] = {"true": True, "false": False}[value.lower()]
            else:
                changes[key] = type(current)(value) if current is not None else float(value)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"--growth {item!r}: {value!r} is not a {type(current).__name__}") from exc
    return replace(config.growth, **changes)


def lut_setting(lut: str) -> str:
    """``--lut``: the table file, checked (a missing or malformed file is a one-line ConfigError)."""
    from ..cost.estimator import create_target, target_settings

    create_target("cpu", **target_settings("cpu", lut))
    return lut


def run_bench(args) -> int:
    from ..pipeline.bench import run_benchmark
    from ..training.distributed import is_main

    config = bench_config(args)
    prefix = "compare" if args.protocol == "compress" else args.protocol
    out = args.out or f"benchmarks/results/{prefix}-{args.profile}"
    with process_group():  # under torchrun: data-parallel, rank 0 writes
        run_benchmark(config, out, command=command_line(args.argv), worker=args.worker)
        main = is_main()
    if main:
        print((Path(out) / "summary.md").read_text())
    return 0
