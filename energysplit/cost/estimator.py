"""Cost estimators and named device targets.

An :class:`Estimator` answers, for a model and an input shape (C, H, W; batch 1), the total cost in its
unit, a per-layer breakdown and, per neuron group of the inventory, the marginal cost of one more
channel (the split cost T_i of Wang et al. 2019, Sec. 4) and the saving of one channel fewer. Ops it
cannot cost are listed in ``CostReport.unsupported``, never counted as zero silently.

Estimators and targets come from entry points (groups ``energysplit.estimators`` and
``energysplit.targets``; the built-ins of ``energysplit_estimators`` are registered the same way) and from JSON files in the user directory (``$ENERGYSPLIT_HOME/targets`` or
``~/.config/energysplit/targets``) written by ``energysplit calibrate``. See :mod:`energysplit.cost.plugins`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .._registry import Registry
from ..errors import ConfigError

UNITS = {"MACs": "multiply-accumulates", "FLOPs": "floating-point operations", "ms": "milliseconds",
         "mJ": "millijoules", "J": "joules", "us": "microseconds"}


@dataclass
class CostReport:
    """Total cost in ``unit``, rows ``{layer, op, cost, ...}``, ops that could not be costed, metadata."""

    total: float
    unit: str
    layers: list[dict] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.layers)

    def to_dict(self) -> dict:
        return {"total": self.total, "unit": self.unit, "unsupported": list(self.unsupported),
                "meta": dict(self.meta), "layers": list(self.layers)}


@dataclass(frozen=True)
class MarginalCost:
    """Change of the target's cost from one more channel in a group (``add``, the split cost T_i) and
    the saving from one channel fewer (``remove``, positive when removing saves). NaN where the group's
    width cannot change (not prunable, e.g. the model output) or, for ``remove``, has one channel."""

    add: float
    remove: float
    unit: str = ""


class Estimator:
    """Base class: subclass, set ``name`` and ``unit``, implement :meth:`estimate`.

    ``predict`` is the cost model that marginal costs are consistent with; it equals ``estimate``
    except for measuring estimators (latency: measured total vs lookup-table prediction). The default
    :meth:`marginal_costs` re-estimates copies of the model widened or narrowed by one channel per group
    with :mod:`energysplit.graph.surgery` (slow but exact for any estimator). ``targets`` maps target names
    this estimator provides to ``{"settings": {...}, "description": ...}``.
    """

    name: str = ""
    unit: str = ""
    deterministic: bool = True
    targets: dict[str, dict] = {}
    # widths the device runs fast: methods keep changed widths multiples of this unless told otherwise
    # (MobileNet's multiple of 8 by default; :mod:`energysplit.graph.alignment`)
    channel_multiple: int = 8

    def estimate(self, model, input_shape) -> CostReport:
        raise NotImplementedError

    def predict(self, model, input_shape) -> CostReport:
        return self.estimate(model, input_shape)

    def settings(self) -> dict[str, Any]:
        """The constructor parameters (public attributes), as stored in a target."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")}

    def marginal_costs(self, model, inventory, input_shape, multiple: int = 1) -> dict[str, MarginalCost]:
        """Per group: the cost change of one channel more / fewer; with ``multiple`` > 1, per channel of
        the group's next aligned block (:func:`block_steps`), since runtimes price aligned widths."""
        base = self.predict(model, input_shape).total
        out = {}
        for group in inventory:
            if not group.prunable:  # its width cannot change (e.g. the model output)
                out[group.id] = MarginalCost(math.nan, math.nan, self.unit)
                continue
            up, down = block_steps(group.width, multiple)
            add = (self.predict(resized_copy(model, inventory, group.id, up), input_shape).total - base) / up
            remove = ((base - self.predict(resized_copy(model, inventory, group.id, -down), input_shape).total)
                      / down if group.width > down else math.nan)
            out[group.id] = MarginalCost(add, remove, self.unit)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


def block_steps(width: int, multiple: int = 1) -> tuple[int, int]:
    """Channels in a group's next aligned block up and down (1, 1 without a channel multiple)."""
    from ..graph.alignment import first_block

    if multiple <= 1:
        return 1, 1
    return first_block(width, multiple, grow=True), first_block(width, multiple, grow=False)


def marginal_costs_of(estimator, model, inventory, input_shape, multiple: int = 1) -> dict[str, MarginalCost]:
    """``estimator.marginal_costs`` per aligned block; an estimator whose ``marginal_costs`` takes no
    ``multiple`` (an older plugin) gives per-channel costs."""
    import inspect

    if multiple > 1 and "multiple" in inspect.signature(estimator.marginal_costs).parameters:
        return estimator.marginal_costs(model, inventory, input_shape, multiple=multiple)
    return estimator.marginal_costs(model, inventory, input_shape)


def resized_copy(model, inventory, group_id: str, delta: int):
    """A copy of ``model`` with ``delta`` channels more (exact duplicates of the first ones) or fewer
    (the last ones removed) in a group, made by :mod:`energysplit.graph.surgery`."""
    import copy

    from ..graph.plan import Plan, Remove, Split
    from ..graph.surgery import apply_plan_

    model = copy.deepcopy(model)
    width = inventory[group_id].width
    if delta < 0:
        apply_plan_(model, inventory, Plan([Remove(group_id, tuple(range(width + delta, width)))]))
    while delta > 0:  # a plan splits each channel at most once: wider steps take several plans
        k = min(delta, inventory[group_id].width)
        inventory = apply_plan_(model, inventory, Plan([Split(group_id, c) for c in range(k)]))
        delta -= k
    return model


class LayerwiseEstimator(Estimator):
    """An estimator whose cost is a sum over captured layers (:mod:`energysplit.graph.layers`) plus a fixed
    overhead. Subclasses implement :meth:`layer_rows`; marginal costs re-evaluate the same formula on the
    specs resized by one channel, so they match a re-estimate of the widened model exactly."""

    def layer_rows(self, specs) -> list[dict]:
        """One dict per spec with ``cost`` (float, or None when the op cannot be costed) and extras."""
        raise NotImplementedError

    def overhead(self, specs) -> float:
        return 0.0

    def total_of(self, specs) -> float:
        rows = self.layer_rows(specs)
        return self.overhead(specs) + sum(r["cost"] for r in rows if r["cost"] is not None)

    def report(self, specs) -> CostReport:
        rows, unsupported = [], []
        for spec, row in zip(specs, self.layer_rows(specs)):
            if row["cost"] is None:
                unsupported.append(f"{spec.name} ({spec.type})")
            rows.append({"layer": spec.name, "op": spec.op, "type": spec.type,
                         "in_shape": "x".join(map(str, spec.in_shape[1:])),
                         "out_shape": "x".join(map(str, spec.out_shape[1:])), **row})
        over = self.overhead(specs)
        if over:
            rows.append({"layer": "(overhead)", "op": "overhead", "type": "", "in_shape": "", "out_shape": "",
                         "cost": over})
        total = sum(r["cost"] for r in rows if r["cost"] is not None)
        return CostReport(total, self.unit, rows, unsupported, {"estimator": self.name, **self.settings()})

    def estimate(self, model, input_shape) -> CostReport:
        from ..graph.layers import capture_layers

        return self.report(capture_layers(model, input_shape))

    def predict(self, model, input_shape) -> CostReport:
        return LayerwiseEstimator.estimate(self, model, input_shape)

    def marginal_costs(self, model, inventory, input_shape, multiple: int = 1) -> dict[str, MarginalCost]:
        from ..graph.layers import capture_layers, resize_specs

        specs = capture_layers(model, input_shape)
        base = self.total_of(specs)

        def total(group, delta):
            changed = resize_specs(specs, group.producers, delta)
            return self.total_of([changed.get(i, s) for i, s in enumerate(specs)])

        def cost(g):
            if not g.prunable:
                return MarginalCost(math.nan, math.nan, self.unit)
            up, down = block_steps(g.width, multiple)
            return MarginalCost((total(g, up) - base) / up,
                                (base - total(g, -down)) / down if g.width > down else math.nan, self.unit)

        return {g.id: cost(g) for g in inventory}


@dataclass(frozen=True)
class Target:
    """A named device target: an estimator name and its settings (e.g. ``mobile`` = lut-energy with the
    mobile table)."""

    name: str
    estimator: str
    settings: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("a target needs a non-empty string name")
        if not isinstance(self.estimator, str) or not self.estimator:
            raise ConfigError(f"target {self.name!r} needs an estimator name")
        if not isinstance(self.settings, dict):
            raise ConfigError(f"target {self.name!r}: settings must be a dict")

    @classmethod
    def from_dict(cls, d: dict) -> "Target":
        unknown = set(d) - {"name", "estimator", "settings", "description", "unit"}
        if unknown:
            raise ConfigError(f"unknown target fields {sorted(unknown)}")
        return cls(d.get("name", ""), d.get("estimator", ""), dict(d.get("settings") or {}),
                   d.get("description", ""))


# filled by energysplit.cost.plugins.load_plugins on first lookup (energysplit/cost/__init__.py sets the loader)
ESTIMATORS = Registry("estimator")
TARGETS = Registry("target")


def create_estimator(name: str, **settings) -> Estimator:
    """Instantiate a registered estimator with ``settings``."""
    cls = ESTIMATORS.get(name)
    return cls(**settings)


def create_target(name: str, **overrides) -> Estimator:
    """The configured estimator a target binds, e.g. ``create_target("mobile")``; ``overrides`` replace
    some of the target's settings (``create_target("cpu", lut="table.json")``)."""
    target = TARGETS.get(name)
    est = create_estimator(target.estimator, **{**target.settings, **overrides})
    est.target_ = name
    return est


LUT_TARGETS = ("cpu",)  # the targets that ``--lut FILE`` prices with a saved latency table


def target_settings(name: str, lut: str | None = None) -> dict:
    """The overrides of target ``name`` for a run given ``--lut FILE``: ``{"lut": FILE}`` for
    :data:`LUT_TARGETS` (a missing FILE is a ConfigError; the estimator checks its content)."""
    from pathlib import Path

    if lut and not Path(lut).is_file():
        raise ConfigError(f"--lut {lut}: no such file; write one with `energysplit lut FILE` on the host whose "
                          "prices you want, or leave --lut out to price on this host")
    return {"lut": str(lut)} if lut and name in LUT_TARGETS else {}


def target_info(name: str) -> dict:
    """``{name, estimator, unit, origin, settings, description}`` of a target."""
    target = TARGETS.get(name)
    unit = getattr(ESTIMATORS.get(target.estimator), "unit", "?") if target.estimator in ESTIMATORS else "?"
    return {"name": name, "estimator": target.estimator, "unit": unit, "origin": TARGETS.origin(name),
            "settings": dict(target.settings), "description": target.description}


def resolve_estimator(target: str | Estimator) -> Estimator:
    """An Estimator as it is, or the one a target name binds."""
    return target if isinstance(target, Estimator) else create_target(target)


def estimate(model, input_shape, target: str | Estimator = "flops") -> CostReport:
    """Cost of ``model`` on inputs of shape ``input_shape`` (C, H, W) for a target name or estimator."""
    return resolve_estimator(target).estimate(model, tuple(input_shape))


def marginal_costs(model, inventory, input_shape, target: str | Estimator = "flops",
                   multiple: int = 1) -> dict[str, MarginalCost]:
    """Per neuron group: cost of one more channel (split cost T_i) and saving of one fewer."""
    return marginal_costs_of(resolve_estimator(target), model, inventory, tuple(input_shape), multiple)
