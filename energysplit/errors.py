"""Exception types that mean "the user's input is wrong": the CLI prints them as one line."""
from __future__ import annotations

from .training.data import DataError
from ._registry import RegistryError


class EnergySplitError(Exception):
    """Base for user-facing errors raised by energysplit (unsupported layer, unreachable budget...)."""


class UnsupportedModelError(EnergySplitError):
    """A layer or op that the tracer or surgery cannot handle; the message names it."""


class BudgetError(EnergySplitError):
    """A budget that is already met or cannot be reached."""


USER_ERRORS = (EnergySplitError, DataError, RegistryError, FileNotFoundError, FileExistsError, ValueError)
