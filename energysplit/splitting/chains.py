"""Taps on a neuron group's chain: see the producer's input, each chain op's input and the chain's output.

A splittable group's neurons are the output channels of one producer (conv/linear); its ``chain`` lists
the channel-wise ops (BatchNorm, activation, depthwise conv) between the producer and the consumers
(:class:`energysplit.graph.inventory.ChainOp`). The splitting matrices need exactly those tensors, and the
fast method adds a zero-valued term at the chain's end. :class:`ChainTaps` installs forward hooks (and,
for functional activations, a ``TorchFunctionMode``), matches each call to its chain by tensor identity
(so a module reused at several places is handled), and removes everything on exit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError
from ..graph.inventory import Group

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Step:
    """One resolved chain op: ``module`` is None for a functional activation named ``target``."""

    kind: str
    target: str
    module: nn.Module | None
    act: str | None = None


def bn_scale(bn: nn.Module) -> Tensor:
    """BatchNorm as a fixed affine map (eval mode): c = gamma / sqrt(running_var + eps)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.weight is not None else scale


def apply_linear(producer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The producer's own linear map with ``weight`` and no bias (padding mode, stride... kept)."""
    if isinstance(producer, nn.Linear):
        return nn.functional.linear(x, weight)
    return producer._conv_forward(x, weight, None)


def resolve(model: nn.Module, group: Group) -> tuple[nn.Module, list[Step]]:
    """The producer module and the chain's steps, checked; raises UnsupportedModelError otherwise."""
    modules = dict(model.named_modules())
    if len(group.producers) != 1:
        raise UnsupportedModelError(
            f"group {group.id} has {len(group.producers)} producers ({', '.join(group.producers)}); "
            "splitting scores need exactly one (mark coupled residual groups splittable=False)")
    name = group.producers[0]
    producer = modules.get(name)
    if not isinstance(producer, (nn.Linear,) + CONVS):
        raise UnsupportedModelError(f"producer {name} of group {group.id} is {type(producer).__name__}; "
                                    "only Conv1d/2d/3d and Linear producers can be split")
    steps = []
    for op in group.chain:
        module = modules.get(op.target)
        if op.kind == "bn":
            if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_var is None:
                raise UnsupportedModelError(f"chain op {op.target} of group {group.id} is not a BatchNorm with "
                                            "running statistics; it cannot be treated as a fixed affine map")
        elif op.kind == "dw":
            if not (isinstance(module, CONVS) and module.groups == module.in_channels == module.out_channels):
                raise UnsupportedModelError(f"chain op {op.target} of group {group.id} is not a depthwise conv "
                                            "with one filter per channel")
        elif op.kind != "act":
            raise UnsupportedModelError(f"unknown chain op kind {op.kind!r} in group {group.id}")
        steps.append(Step(op.kind, op.target, module, op.act or "identity"))
    return producer, steps


class Tracker:
    """Follows one group's chain through a forward pass. Subclasses implement the three callbacks."""

    def __init__(self, group: Group, producer: nn.Module, steps: list[Step]):
        self.group, self.producer, self.steps = group, producer, steps
        self.reset()

    def reset(self) -> None:
        self.pos, self.last, self.pending = -1, None, False

    @property
    def done(self) -> bool:
        return self.pos == len(self.steps)

    def channel_shape(self, like: Tensor) -> tuple[int, ...]:
        """Shape that broadcasts a per-channel vector against ``like`` (channel dim 1, or last for Linear)."""
        if isinstance(self.producer, nn.Linear) and like.dim() > 2:
            return (-1,)
        return (1, -1) + (1,) * (like.dim() - 2)

    def on_start(self, x: Tensor, out: Tensor) -> None: ...

    def on_step(self, index: int, step: Step, inp: Tensor) -> None: ...

    def on_end(self, out: Tensor) -> Tensor:
        return out


def _same(a: Tensor, b: Tensor | None) -> bool:
    return b is not None and (a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape))


class ChainTaps:
    """Context manager: hooks that drive every tracker through each forward pass; nothing left behind."""

    def __init__(self, model: nn.Module, trackers: list[Tracker]):
        self.model, self.trackers = model, trackers
        self.handles: list = []
        self.mode: _FunctionalTap | None = None

    def __enter__(self) -> "ChainTaps":
        producers: dict[nn.Module, list[Tracker]] = {}
        ops: dict[nn.Module, list[Tracker]] = {}
        functional = []
        for t in self.trackers:
            producers.setdefault(t.producer, []).append(t)
            for step in t.steps:
                if step.module is not None:
                    ops.setdefault(step.module, []).append(t)
                else:
                    functional.append(t)
        try:
            for module, ts in producers.items():
                self.handles.append(module.register_forward_hook(self._producer_hook(ts)))
            for module, ts in ops.items():
                self.handles.append(module.register_forward_pre_hook(self._pre_hook(module, ts)))
                self.handles.append(module.register_forward_hook(self._post_hook(ts)))
            if functional:
                self.mode = _FunctionalTap(self, list(dict.fromkeys(functional)))
                self.mode.__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.mode is not None:
            self.mode.__exit__(*exc)
            self.mode = None
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def forward(self, x: Tensor) -> Tensor:
        """Run the model once, checking that every chain ran exactly as traced."""
        for t in self.trackers:
            t.reset()
        out = self.model(x)
        for t in self.trackers:
            if not t.done:
                where = "the producer never ran" if t.pos < 0 else \
                    f"op {t.steps[t.pos].target} did not read the output of the previous op"
                raise UnsupportedModelError(
                    f"chain of group {t.group.id} did not run as traced ({where}); the inventory does not "
                    "match this model's forward")
        return out

    # hooks ---------------------------------------------------------------------------------------
    @staticmethod
    def _producer_hook(trackers):
        def hook(module, args, out):
            for t in trackers:
                if t.pos >= 0:
                    raise UnsupportedModelError(f"producer {t.group.producers[0]} runs more than once per "
                                                "forward; splitting a shared layer is not supported")
                t.pos, t.last = 0, out
                t.on_start(args[0], out)
                if t.done:
                    out = t.on_end(out)
            return out
        return hook

    @staticmethod
    def _pre_hook(module, trackers):
        def hook(mod, args):
            for t in trackers:
                if 0 <= t.pos < len(t.steps) and t.steps[t.pos].module is module and _same(args[0], t.last):
                    t.pending = True
                    t.on_step(t.pos, t.steps[t.pos], args[0])
        return hook

    @staticmethod
    def _post_hook(trackers):
        def hook(module, args, out):
            for t in trackers:
                if t.pending and t.steps[t.pos].module is module:
                    out = _advance(t, out)
            return out
        return hook


def _advance(t: Tracker, out: Tensor) -> Tensor:
    t.pending, t.pos, t.last = False, t.pos + 1, out
    return t.on_end(out) if t.done else out


class _FunctionalTap(TorchFunctionMode):
    """Sees functional activations (``F.relu(x)``, ``x.relu()``) whose input is a chain's current tensor."""

    def __init__(self, taps: ChainTaps, trackers: list[Tracker]):
        super().__init__()
        self.trackers = trackers

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "").rstrip("_")
        hits = []
        if args and isinstance(args[0], Tensor):
            for t in self.trackers:
                if 0 <= t.pos < len(t.steps):
                    step = t.steps[t.pos]
                    if step.module is None and step.target.rsplit(".", 1)[-1].rstrip("_") == name \
                            and _same(args[0], t.last):
                        t.on_step(t.pos, step, args[0])
                        hits.append(t)
        out = func(*args, **kwargs)
        for t in hits:
            out = _advance(t, out)
        return out
