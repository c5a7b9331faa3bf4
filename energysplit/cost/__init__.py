"""What a model costs on a device: the estimator protocol, the registries of estimators and targets (filled
from plugins on first lookup), budgets, calibration and the conformance checks for estimator authors."""
from __future__ import annotations

from .estimator import ESTIMATORS, TARGETS
from .plugins import load_plugins

# the registries load the plugins themselves, on their first lookup
ESTIMATORS.loader = TARGETS.loader = load_plugins
