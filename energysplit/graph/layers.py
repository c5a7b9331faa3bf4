"""Per-layer specs captured by one forward pass, and how adding or removing a channel changes them.

:func:`capture_layers` runs the model once (eval mode, batch 1) with forward hooks on leaf modules and
a ``TorchFunctionMode`` for functional ops between modules (residual adds, ``torch.flatten``...). Each
:class:`LayerSpec` records the op's configuration (channels, kernel, stride, groups) and shapes, and
``owners``: the conv/linear producers whose output channels its output carries (through BN, activations,
depthwise convs, pools, adds). :func:`resize_specs` uses the owners to apply "one more channel in
group g" to the specs, so layer-wise estimators compute marginal costs from the same formula as totals.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

ACT_TYPES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
             nn.GELU: "gelu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid",
             nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.Softplus: "softplus", nn.Hardtanh: "hardtanh"}
POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
              nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
PASS_TYPES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)
# functional ops between modules, by function name
ACT_FUNCS = {"relu": "relu", "relu_": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "silu": "silu",
             "hardswish": "hardswish", "gelu": "gelu", "sigmoid": "sigmoid", "tanh": "tanh"}
ADD_FUNCS = {"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "__sub__", "mul", "__mul__",
             "__imul__", "__rmul__"}
POOL_FUNCS = {"adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "adaptive_max_pool2d", "mean"}
PASS_FUNCS = {"flatten", "view", "reshape", "contiguous", "dropout", "clone", "detach", "squeeze"}
CAT_FUNCS = {"cat", "concat"}


@dataclass(frozen=True)
class LayerSpec:
    """One op of the forward pass. ``op``: conv, linear, bn, act, pool, add, pass, concat or other.

    Shapes include the batch dimension. ``cin``/``cout`` are channels (features for linear); ``act``
    names the activation of an ``act`` op; ``repeat`` is how many input columns one channel of the
    input occupies (H*W after a flatten, else 1). ``inputs`` are indices of the specs producing the
    inputs (-1: the model input).
    """

    name: str
    op: str
    type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    cin: int = 0
    cout: int = 0
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = False
    act: str | None = None
    repeat: int = 1
    inputs: tuple[int, ...] = ()
    owners: frozenset[str] = frozenset()
    in_owners: frozenset[str] = frozenset()

    @property
    def depthwise(self) -> bool:
        """A depthwise conv: one group per input channel (not a conv with one output channel)."""
        return _depthwise({"op": self.op, "cin": self.cin, "cout": self.cout, "groups": self.groups})

    @property
    def out_numel(self) -> int:
        return math.prod(self.out_shape[1:])

    @property
    def in_numel(self) -> int:
        return math.prod(self.in_shape[1:])

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["owners"], d["in_owners"] = sorted(self.owners), sorted(self.in_owners)
        return d


def _module_spec(name: str, mod: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    base = dict(name=name, type=type(mod).__name__, in_shape=tuple(x.shape), out_shape=tuple(y.shape))
    if isinstance(mod, (nn.Conv2d, nn.Conv1d)):
        return dict(base, op="conv", cin=mod.in_channels, cout=mod.out_channels, kernel=tuple(mod.kernel_size),
                    stride=tuple(mod.stride), padding=tuple(mod.padding) if not isinstance(mod.padding, str)
                    else (), groups=mod.groups, bias=mod.bias is not None)
    if isinstance(mod, nn.Linear):
        return dict(base, op="linear", cin=mod.in_features, cout=mod.out_features, bias=mod.bias is not None)
    if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return dict(base, op="bn", cin=mod.num_features, cout=mod.num_features)
    if type(mod) in ACT_TYPES:
        return dict(base, op="act", act=ACT_TYPES[type(mod)])
    if isinstance(mod, POOL_TYPES):
        if hasattr(mod, "kernel_size"):
            pair = torch.nn.modules.utils._ntuple(x.dim() - 2)
            return dict(base, op="pool", kernel=pair(mod.kernel_size), stride=pair(mod.stride or mod.kernel_size),
                        padding=pair(mod.padding))
        return dict(base, op="pool")
    if isinstance(mod, PASS_TYPES):
        return dict(base, op="pass")
    return dict(base, op="other")


def _depthwise(spec: dict) -> bool:
    cin, groups = spec.get("cin", 0), spec.get("groups", 1)
    return spec["op"] == "conv" and groups > 1 and groups == cin and spec.get("cout", 0) % cin == 0


def _func_op(name: str) -> str | None:
    if name in ACT_FUNCS:
        return "act"
    if name in ADD_FUNCS:
        return "add"
    if name in POOL_FUNCS:
        return "pool"
    if name in PASS_FUNCS:
        return "pass"
    if name in CAT_FUNCS:
        return "concat"
    return None


class _Recorder(TorchFunctionMode):
    """Records functional ops called outside leaf modules (inside them, the module is the op)."""

    def __init__(self, capture: "_Capture"):
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.capture.depth == 0 and isinstance(out, torch.Tensor):
            tensors = [a for a in _flat(args) if isinstance(a, torch.Tensor)]
            if tensors:
                fname = getattr(func, "__name__", str(func))
                self.capture.add_function(fname, tensors, out)
        return out


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a


class _Capture:
    def __init__(self):
        self.specs: list[dict] = []
        self.source: dict[int, int] = {}  # id(tensor) -> spec index
        self.keep: list[torch.Tensor] = []  # keeps ids unique during the pass
        self.depth = 0
        self.counts: dict[str, int] = {}

    def _inputs(self, tensors) -> tuple[int, ...]:
        return tuple(self.source.get(id(t), -1) for t in tensors)

    def _owners(self, idx: int) -> frozenset[str]:
        return self.specs[idx]["owners"] if idx >= 0 else frozenset()

    def _repeat(self, idx: int) -> int:
        return self.specs[idx]["out_repeat"] if idx >= 0 else 1

    def add(self, spec: dict, tensors, out: torch.Tensor) -> None:
        inputs = self._inputs(tensors)
        in_owners = frozenset().union(*(self._owners(i) for i in inputs))
        spec.update(inputs=inputs, in_owners=in_owners, repeat=self._repeat(inputs[0]) if inputs else 1)
        x = tensors[0]
        if spec["op"] in ("conv", "linear") and not _depthwise(spec):
            owners, out_repeat = frozenset([spec["name"]]), 1
        else:
            owners, out_repeat = in_owners, spec["repeat"]
            if spec["op"] == "pass" and x.dim() > 2 and out.dim() == 2 and out.shape[1] == math.prod(x.shape[1:]):
                out_repeat = out_repeat * math.prod(x.shape[2:])  # flatten: channels become column blocks
        spec.update(owners=owners, out_repeat=out_repeat)
        self.specs.append(spec)
        self.source[id(out)] = len(self.specs) - 1
        self.keep.append(out)

    def add_function(self, fname: str, tensors, out: torch.Tensor) -> None:
        op = _func_op(fname) or "other"
        k = self.counts[fname] = self.counts.get(fname, -1) + 1
        spec = dict(name=f"{fname}#{k}", type=fname, op=op, in_shape=tuple(tensors[0].shape),
                    out_shape=tuple(out.shape), act=ACT_FUNCS.get(fname))
        self.add(spec, tensors, out)


def capture_layers(model: nn.Module, input_shape) -> list[LayerSpec]:
    """Run ``model`` once on zeros of shape ``(1, *input_shape)`` and return its ops in forward order."""
    cap = _Capture()
    leaves = {m: n for n, m in model.named_modules() if not list(m.children()) and n}

    def pre(mod, args):
        cap.depth += 1

    def post(mod, args, out):
        cap.depth -= 1
        if cap.depth == 0 and isinstance(out, torch.Tensor):
            tensors = [a for a in _flat(args) if isinstance(a, torch.Tensor)]
            cap.add(_module_spec(leaves[mod], mod, tensors[0], out), tensors, out)

    handles = [m.register_forward_pre_hook(pre) for m in leaves] + [m.register_forward_hook(post) for m in leaves]
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(1)  # batch-1 shapes only: one thread is fastest, and immune to busy cores
    try:
        with torch.no_grad(), _Recorder(cap):
            model(torch.zeros((1, *tuple(input_shape))))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        torch.set_num_threads(threads)
    return [LayerSpec(**{k: v for k, v in s.items() if k != "out_repeat"}) for s in cap.specs]


def _grow(shape: tuple[int, ...], delta: int) -> tuple[int, ...]:
    return (shape[0], shape[1] + delta, *shape[2:]) if len(shape) > 1 else shape


def resize_specs(specs: list[LayerSpec], producers, delta: int) -> dict[int, LayerSpec]:
    """Specs changed by adding ``delta`` channels (negative: removing) to the group that ``producers``
    define; returns {index: new spec}. Producers gain output channels; ops carrying the channels (BN,
    activations, depthwise convs, pools, adds) grow; consumers gain ``delta * repeat`` input columns."""
    producers = frozenset(producers)
    changed: dict[int, LayerSpec] = {}
    for i, s in enumerate(specs):
        kw: dict = {}
        producer = s.name in producers and s.op in ("conv", "linear")
        if producer:
            kw.update(cout=s.cout + delta, out_shape=_grow(s.out_shape, delta))
        if not producer and s.owners & producers:  # carries the channels: in and out grow together
            mult = s.cout // s.cin if s.depthwise else 1
            grow_in = delta * s.repeat
            flatten = s.op == "pass" and len(s.out_shape) == 2 and len(s.in_shape) > 2
            grow_out = grow_in * (math.prod(s.in_shape[2:]) if flatten else mult)
            kw.update(in_shape=_grow(s.in_shape, grow_in), out_shape=_grow(s.out_shape, grow_out))
            if s.op in ("bn", "conv"):
                kw.update(cin=s.cin + delta, cout=s.cout + delta * mult)
            if s.depthwise:
                kw.update(groups=s.groups + delta)
        elif s.in_owners & producers:  # a consumer reading the channels (it may also be a producer)
            kw.update(in_shape=_grow(s.in_shape, delta * s.repeat))
            if s.op in ("conv", "linear"):
                kw.update(cin=s.cin + delta * s.repeat)
        if kw:
            changed[i] = dataclasses.replace(s, **kw)
    return changed
