"""What the command modules share: flags documented from the config dataclasses, the command line as run,
and the process group of a data-parallel run."""
from __future__ import annotations

import argparse
import contextlib
import shlex
from dataclasses import MISSING, fields

DEVICE_HELP = ("where training, evaluation and scoring run: cpu, cuda, cuda:N, or auto (a GPU when present); "
               "the model moves there for each step and back")


def field_default(config_class, name: str):
    """The default of field ``name`` of a config dataclass (the flags take their defaults from the configs)."""
    default = {f.name: f.default for f in fields(config_class)}[name]
    if default is MISSING:
        raise TypeError(f"{config_class.__name__}.{name} has no default")
    return default


def shown(value) -> str:
    """A default as the help shows it: 2 for 2.0, 1,28,28 for a shape."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def option(parser: argparse.ArgumentParser, config_class, name: str, help: str, *, layered: bool = False,
           **kwargs) -> None:
    """Add ``--<name>`` for the field ``name`` of ``config_class``; the help ends with the field's default.

    ``layered``: the flag itself defaults to None (unset), so that a config file or a preset beneath the
    command line can set the field; otherwise the flag defaults to the field's default. A bool field is a
    switch (``store_true``)."""
    default = field_default(config_class, name)
    if isinstance(default, bool):
        kwargs.setdefault("action", "store_true")
    elif default is not None:
        help += f" (default: {shown(default)})".replace("%", "%%")
        kwargs.setdefault("type", type(default))
    parser.add_argument("--" + name.replace("_", "-"), default=None if layered else default, help=help, **kwargs)


def command_line(argv: list[str]) -> str:
    """The command as the user typed it (saved with the results)."""
    return "energysplit " + " ".join(shlex.quote(a) for a in argv)


@contextlib.contextmanager
def process_group():
    """Under torchrun, join its process group for the block (data-parallel; rank 0 writes); else nothing."""
    from ..training.distributed import destroy_distributed, init_distributed

    init_distributed()
    try:
        yield
    finally:
        destroy_distributed()



def interrupted(name: str, out: str) -> int:
    """After Ctrl-C in a job writing to ``out``: say how to continue; the exit status (130, as a shell says)."""
    import sys
    from pathlib import Path

    hint = "; continue with the same command and --resume" if (Path(out) / ".work").is_dir() else ""
    print(f"energysplit {name}: interrupted{hint}", file=sys.stderr)
    return 130
