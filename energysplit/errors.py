"""The project's error types. Only these mean "the user's input is wrong": the CLI prints them as one line
and exits 2. Anything else is a bug in energysplit: the CLI shows its traceback and exits 1."""
from __future__ import annotations


class EnergySplitError(Exception):
    """Base for user-facing errors raised by energysplit (unsupported layer, unreachable budget...)."""


class UnsupportedModelError(EnergySplitError):
    """A layer or op that the tracer or surgery cannot handle; the message names it."""


class BudgetError(EnergySplitError):
    """A budget that is already met or cannot be reached."""


class ConfigError(EnergySplitError, ValueError):
    """A setting out of its range (a config field, a command-line flag); the message names it."""


class DataError(EnergySplitError):
    """A dataset is missing or unreadable; the message says how to fix it."""


class InputFileError(EnergySplitError):
    """An input or output path that cannot be used (missing model file, output folder already full)."""


class RegistryError(EnergySplitError, KeyError):
    """Unknown or duplicate registry name; ``str()`` is a one-line message."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


USER_ERRORS = (EnergySplitError,)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type name if the message is empty), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
