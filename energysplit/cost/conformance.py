"""Conformance checks that estimator authors can run (scikit-learn's ``check_estimator`` in spirit).

>>> from energysplit.cost.conformance import check_estimator
>>> check_estimator(MyEstimator)            # raises AssertionError listing every failed check
"""
from __future__ import annotations

import math

import torch
from torch import nn

INPUT_SHAPE = (1, 8, 8)


class TinyNet(nn.Module):
    """conv-BN-ReLU, depthwise conv-BN-ReLU, pointwise conv-BN, residual add, pool, linear."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.head = nn.Sequential(nn.Conv2d(width, 6, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        return self.fc(torch.flatten(self.pool(self.head(x)), 1))


class MysteryNet(nn.Module):
    """A net with an op no estimator should silently cost as zero (a cumulative sum)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return torch.cumsum(self.conv(x), dim=1)


def _close(a: float, b: float, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel * 1e-12)


def check_estimator(estimator, model: nn.Module | None = None, input_shape=INPUT_SHAPE, rel_tol: float = 1e-9,
                    check_unsupported: bool = True) -> dict:
    """Run the conformance checks on an estimator instance or class (instantiated with no arguments).

    Checks: name and unit declared; costs finite and non-negative (total and rows); the report's unit
    is the estimator's; deterministic (``estimate`` twice, or ``predict`` twice when not
    ``deterministic``); marginal consistency: for every prunable group of the model's inventory, one
    channel more / fewer made by :mod:`energysplit.graph.surgery` changes the predicted total by the marginal
    cost (relative tolerance ``rel_tol``); an op it cannot cost is listed in ``unsupported`` (a list of
    str). Raises AssertionError naming every failure; returns a summary dict on success.
    """
    from .estimator import Estimator, resized_copy
    from ..graph.trace import build_inventory

    est = estimator() if isinstance(estimator, type) else estimator
    failures: list[str] = []

    def need(cond: bool, msg: str) -> bool:
        if not cond:
            failures.append(msg)
        return cond

    need(isinstance(est, Estimator), f"{type(est).__name__} is not an energysplit Estimator")
    need(isinstance(est.name, str) and bool(est.name), "no name declared")
    need(isinstance(est.unit, str) and bool(est.unit), "no unit declared")
    torch.manual_seed(0)
    model = (model or TinyNet()).eval()
    report = est.estimate(model, input_shape)
    need(report.unit == est.unit, f"report unit {report.unit!r} != estimator unit {est.unit!r}")
    need(math.isfinite(report.total) and report.total >= 0, f"total {report.total!r} is not finite and >= 0")
    bad = [r.get("layer") for r in report.layers
           if r.get("cost") is not None and not (math.isfinite(r["cost"]) and r["cost"] >= 0)]
    need(not bad, f"negative or non-finite layer costs: {bad}")
    need(isinstance(report.unsupported, list) and all(isinstance(u, str) for u in report.unsupported),
         "unsupported must be a list of str")
    need(not report.unsupported, f"ops of the conformance model reported unsupported: {report.unsupported}")

    fn = est.estimate if est.deterministic else est.predict
    first, second = fn(model, input_shape).total, fn(model, input_shape).total
    need(first == second, f"{fn.__name__} is not deterministic: {first!r} then {second!r}")

    inventory = build_inventory(model, input_shape)
    base = est.predict(model, input_shape).total
    marginal = est.marginal_costs(model, inventory, input_shape)
    need(set(marginal) == {g.id for g in inventory}, "marginal_costs must return every group of the inventory")
    checked = 0
    for group in inventory:
        mc = marginal.get(group.id)
        if mc is None or not group.prunable:
            continue
        grown = est.predict(resized_copy(model, inventory, group.id, +1), input_shape).total
        need(_close(mc.add, grown - base, rel_tol), f"{group.id}: marginal add {mc.add!r} but re-estimate "
                                                    f"changes the total by {grown - base!r}")
        if group.width > 1:
            shrunk = est.predict(resized_copy(model, inventory, group.id, -1), input_shape).total
            need(_close(mc.remove, base - shrunk, rel_tol), f"{group.id}: marginal remove {mc.remove!r} but "
                                                            f"re-estimate saves {base - shrunk!r}")
        checked += 1
    need(checked > 0, "no group was checked")

    if check_unsupported:
        mystery = est.estimate(MysteryNet().eval(), input_shape)
        need(any("cumsum" in u for u in mystery.unsupported),
             f"a cumsum op was not reported as unsupported (got {mystery.unsupported})")
    if failures:
        raise AssertionError(f"estimator {est.name or type(est).__name__} fails {len(failures)} check(s):\n  - "
                             + "\n  - ".join(failures))
    return {"estimator": est.name, "unit": est.unit, "total": report.total, "groups_checked": checked}
