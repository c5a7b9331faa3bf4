"""Command-line interface: parse, build a config, call the API, write outputs.

One module per group of commands (:mod:`.models`, :mod:`.compress`, :mod:`.grow`, :mod:`.costs`, :mod:`.bench`); each
``add_<name>(parser)`` adds a command's flags (their defaults come from the config dataclasses) and
returns its handler. Only the command being run gets its flags, and heavy imports happen inside the
handlers, so ``energysplit --help`` stays fast. Errors: the project's own types (:mod:`energysplit.errors`)
are the user's and print one line (exit 2); anything else is a bug: traceback, and exit 1.
"""
from __future__ import annotations

import argparse
import sys

from .bench import add_bench
from .compress import add_compress
from .grow import add_grow
from .costs import add_calibrate, add_estimate, add_lut, add_targets
from .models import add_inspect, add_models, add_train

COMMANDS = {  # name: (one-line help, the function that adds its flags and returns its handler)
    "models": ("list the model zoo", add_models),
    "train": ("train a zoo model from scratch and report accuracy", add_train),
    "inspect": ("print a model's neuron groups: width, splittable or why not", add_inspect),
    "compress": ("compress a model to a device budget (splitting or a pruning baseline)", add_compress),
    "grow": ("design a network for a device budget: grow a small seed by energy-aware splitting", add_grow),
    "targets": ("list device targets with their units and origins", add_targets),
    "estimate": ("cost of a model on a target: total and per-layer table", add_estimate),
    "calibrate": ("measure an ONNX Runtime latency table on this machine and save it as a new target in the "
                  "user directory", add_calibrate),
    "lut": ("write this host's ONNX Runtime latency table (what prices the cpu target) to a file, for --lut "
            "elsewhere", add_lut),
    "bench": ("compare splitting with the pruning baselines at equal budgets", add_bench),
}
BUG_REPORT = ("this is a bug in energysplit {version}, not in your input; please report it with the command and "
              "the traceback above")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command gets its flags (the others their name and help)."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="energysplit", description=(
        "Energy-aware splitting steepest descent: compress a network to a device's energy, latency or "
        "FLOPs budget."))
    parser.add_argument("--version", action="version", version=f"energysplit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help, add) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")
        if command in (None, name):
            p.set_defaults(func=add(p))
    return parser


def one_line(exc: BaseException) -> str:
    """A user error's message on one line."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    from ..errors import USER_ERRORS

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    args.argv = argv  # the command line, saved with the results
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe (e.g. `| head`) shows up here at the latest
        return code
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, as a shell reports a command that a closed pipe stopped
    except USER_ERRORS as exc:
        print(f"energysplit {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"energysplit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        from .. import __version__

        traceback.print_exc()
        print(f"energysplit {args.command}: internal error: " + BUG_REPORT.format(version=__version__),
              file=sys.stderr)
        return 1
