"""Residual streams split jointly: one neuron is a stream channel in every producer that writes it.

A residual add couples the output channels of several producers (a ResNet stage's stem or downsample
conv and each block's last conv; a MobileNetV2 stage's projection convs). Splitting such a channel
duplicates it in every producer p as theta_p + eps v_p and theta_p - eps v_p and halves every consumer's
input column (:mod:`energysplit.graph.surgery`); the two copies then run side by side along the stream,
through its adds and activations, and meet only in the consumers. The joint direction V = (v_1, ..., v_P)
has the splitting matrix

    S = d^2 L / dV^2 at V = 0,

L(V) the loss of the *all-split* network: every channel of the stream split at eps = 0, plus V and -V on
the two copies' producer rows. Its blocks between different channels are zero (their copies meet only in
consumers, which see the copies' mean, unchanged to first order), so one Hessian-vector product of the
all-split network gives S_c u_c for every channel c at once. It is computed without a double backward:
forward-mode tangents along U give each activation input's first-order change t_k (dropped at the
consumers, where the two copies' tangents cancel), one backward gives the gradient G_k at each activation's
output, and a second backward of sum_k <G_k act''(a_k) t_k, a_k> to V gives S U. For a single producer this
is the splitting matrix of :mod:`.exact` (a test checks it). act'' follows the rules of :mod:`.curvature`
(the softplus surrogate at the kinks of ReLU-like activations); the tangents use the activations' true
slopes. A stream with no activation on it (MobileNetV2's linear bottlenecks) has S = 0 exactly: its split
changes nothing at any eps, its lambda is 0 and it never wins a selection; that is seen on the first batch
and the rest are skipped.

Solvers (``method`` of :func:`energysplit.splitting.scores.splitting_scores`): ``exact`` builds each S_c
from D products with unit vectors (D = the joint direction's length) and takes ``eigh`` (the oracle, for
tests and small streams); ``fast`` runs the Rayleigh descent of :mod:`.fast` on the products. Streams whose
producers read one another's channels (a downsample conv reads the previous stream) are scored in
separate all-split copies; the model itself is never changed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError, UnsupportedModelError
from ..graph.inventory import Group, Inventory
from ..graph.ops import ACT_DEFAULTS, ACT_FUNCTIONS, ACT_METHODS, activation_module
from .curvature import CurvatureConfig, derivatives
from .exact import ExactConfig, smallest_eigenpairs
from .fast import FastConfig, rayleigh_descent, unit_rows
from .solver import GroupScores, iterate_batches


def is_joint(group: Group) -> bool:
    """A residual stream: several producers write the group's channels."""
    return len(group.producers) > 1


def joint_scores(model: nn.Module, batches, inventory: Inventory, groups: list[Group], method: str,
                 curvature: CurvatureConfig, config, loss_fn) -> dict[str, GroupScores]:
    """Smallest eigenpair of every channel's joint splitting matrix; eigenvectors flat, shaped
    ``(width, D)`` in :func:`energysplit.graph.surgery.joint_slices` order. The model is in eval mode."""
    if method == "exact":
        return _exact(model, batches, inventory, groups, curvature, config, loss_fn)
    if method != "fast":
        raise ConfigError(f"no joint splitting solver {method!r}; use 'exact' or 'fast'")
    out = {}
    for chosen in stream_rounds(groups):
        out.update(_fast(AllSplit(model, inventory, chosen, curvature, loss_fn), batches, config or FastConfig()))
    return out


def stream_rounds(groups: list[Group]) -> list[list[Group]]:
    """Groups in rounds where no producer of one reads another's channels (each round: one all-split copy)."""
    rounds: list[list[Group]] = []
    for g in groups:
        readers = {c.module for c in g.consumers}
        for r in rounds:
            if not any(readers & set(h.producers) or set(g.producers) & {c.module for c in h.consumers} for h in r):
                r.append(g)
                break
        else:
            rounds.append([g])
    return rounds


class AllSplit:
    """A copy of the model with every channel of ``groups`` split at eps = 0, and :meth:`products`: S_c u_c of
    every channel for joint directions ``U[gid]`` (width x D), put on the copies' producer rows as +U on
    the kept slot and -U on the new one (:meth:`rows`)."""

    def __init__(self, model: nn.Module, inventory: Inventory, groups: list[Group], curvature: CurvatureConfig,
                 loss_fn):
        from ..graph.plan import Plan, Split
        from ..graph.surgery import apply_plan_, group_edits, joint_slices

        self.groups, self.curvature, self.loss_fn = groups, curvature, loss_fn
        for g in groups:
            for name in g.producers:
                rows = model.get_submodule(name).weight.shape[0]
                if rows != g.width:
                    raise UnsupportedModelError(f"producer {name} of group {g.id} has {rows} output channels, the "
                                                f"group {g.width}; the inventory does not match this model")
        plan = Plan([Split(g.id, c) for g in groups for c in range(g.width)])
        edits = group_edits(inventory, plan)
        self.slices = {g.id: joint_slices(model, g.producers) for g in groups}
        self.model = copy.deepcopy(model)
        apply_plan_(self.model, inventory, plan)
        self.places = {}  # gid -> (kept rows, new rows): channel c at kept[c] and new[c]
        for g in groups:
            seen, kept, new = set(), [0] * g.width, [0] * g.width
            for j, c in enumerate(edits[g.id].index):
                (new if c in seen else kept)[c] = j
                seen.add(c)
            device = next(self.model.parameters()).device
            self.places[g.id] = (torch.tensor(kept, device=device), torch.tensor(new, device=device))
        self.dims = {g.id: max(s.stop for s in self.slices[g.id].values()) for g in groups}
        self.model.requires_grad_(False)
        self.producer_weights = {f"{p}.weight": self.model.get_submodule(p).weight for g in groups for p in g.producers}
        self.consumers = {c.module for g in groups for c in g.consumers}
        self.curved = True  # False once a product shows no activation on these streams: S = 0 on every batch

    def zeros(self) -> dict[str, Tensor]:
        w = next(self.model.parameters())
        return {g.id: torch.zeros(g.width, self.dims[g.id], dtype=w.dtype, device=w.device, requires_grad=True)
                for g in self.groups}

    def rows(self, V: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per producer weight, the change that ``V`` makes: +V on the kept slots' rows, -V on the new ones'."""
        out = {}
        for g in self.groups:
            kept, new = self.places[g.id]
            for name, part in self.slices[g.id].items():
                weight = self.model.get_submodule(name).weight
                v = V[g.id][:, part].reshape((g.width,) + weight.shape[1:]).to(weight)
                out[f"{name}.weight"] = torch.zeros_like(weight).index_add(0, kept, v).index_add(0, new, -v)
        return out

    def products(self, x: Tensor, target: Tensor, U: dict[str, Tensor]) -> dict[str, Tensor]:
        """S_c u_c for every channel of every group on one batch: the tangent t_k of every activation input
        a_k along U (forward mode, dropped at the consumers, where the copies' tangents cancel exactly), the
        gradient G_k at its output, then one backward of sum_k <G_k act''(a_k) t_k, a_k> to V."""
        V = self.zeros()
        if not self.curved:
            return {gid: torch.zeros_like(v).detach() for gid, v in V.items()}
        device = next(self.model.parameters()).device
        offsets, tangents = self.rows(V), self.rows(U)
        with fwAD.dual_level():
            params = {k: fwAD.make_dual(self.producer_weights[k] + offsets[k], tangents[k]) for k in offsets}
            records: list = []
            with _TangentStops(self.model, self.consumers), _Curvatures(records, self.curvature):
                loss = self.loss_fn(functional_call(self.model, params, (x.to(device),)), target.to(device))
        if not records:  # no activation on these streams (linear ones): S = 0, whatever the data
            self.curved = False
            return {gid: torch.zeros_like(v).detach() for gid, v in V.items()}
        grads = torch.autograd.grad(loss, [out for _, out, _ in records], retain_graph=True, allow_unused=True)
        inputs, weights = [], []
        for (a, _, curvature_term), g in zip(records, grads):
            if g is not None:
                inputs.append(a)
                weights.append(g * curvature_term)
        hv = torch.autograd.grad(inputs, list(V.values()), weights, allow_unused=True) if inputs else [None] * len(V)
        return {gid: torch.zeros_like(V[gid]).detach() if h is None else h.detach() for gid, h in zip(V, hv)}


def joint_matrices(model: nn.Module, batches, inventory: Inventory, groups: list[Group],
                   curvature: CurvatureConfig = CurvatureConfig(), config: ExactConfig | None = None,
                   loss_fn=nn.functional.cross_entropy) -> dict[str, Tensor]:
    """The joint splitting matrix of every channel, ``{group id: (width, D, D)}`` in float64, built column by
    column from products with unit vectors (the ``exact`` solver; the model in eval mode)."""
    config = config or ExactConfig()
    need = sum(g.width * sum(model.get_submodule(p).weight[0].numel() for p in g.producers) ** 2 * 8 for g in groups)
    if need > config.memory_limit:
        raise ConfigError(f"exact joint splitting matrices need {need / 1e9:.2f} GB (limit "
                          f"{config.memory_limit / 1e9:.2f} GB); use method='fast'")
    batches = list(iterate_batches(batches, config.batch_size))
    total = sum(len(x) for x, _ in batches)
    out = {}
    for chosen in stream_rounds(groups):
        split = AllSplit(model, inventory, chosen, curvature, loss_fn)
        S = {g.id: torch.zeros(g.width, split.dims[g.id], split.dims[g.id], dtype=torch.float64) for g in chosen}
        eyes = {g.id: torch.eye(split.dims[g.id]) for g in chosen}
        for x, target in batches:
            for i in range(max(split.dims.values())):
                U = {g.id: eyes[g.id][i % split.dims[g.id]].expand(g.width, -1) for g in chosen}
                for gid, sv in split.products(x, target, U).items():
                    if i < split.dims[gid]:
                        S[gid][:, :, i] += sv.double().cpu() * (len(x) / total)
        out.update({gid: 0.5 * (m + m.transpose(1, 2)) for gid, m in S.items()})
    return out


def _exact(model, batches, inventory, groups, curvature, config, loss_fn) -> dict[str, GroupScores]:
    out, dtype = {}, next(model.parameters()).dtype
    for gid, matrix in joint_matrices(model, batches, inventory, groups, curvature, config, loss_fn).items():
        vals, vecs = smallest_eigenpairs(matrix)
        out[gid] = GroupScores(vals.to(dtype), vecs.to(dtype))
    return out


@dataclass
class _Directions:
    """What :func:`.fast.rayleigh_descent` moves: one group's unit joint directions."""

    group: Group
    v: Tensor


def _fast(split: AllSplit, batches, config: FastConfig) -> dict[str, GroupScores]:
    gen = torch.Generator().manual_seed(config.seed)
    w = next(split.model.parameters())
    trackers = [_Directions(g, unit_rows(torch.randn(g.width, split.dims[g.id], generator=gen,
                                                      dtype=torch.float64)).to(w.device, w.dtype))
                for g in split.groups]

    def products(x, target):
        sv = split.products(x, target, {t.group.id: t.v.detach() for t in trackers})
        return [sv[t.group.id] for t in trackers]

    return rayleigh_descent(trackers, products, batches, config)


# --- forward-mode tangents along the streams -------------------------------------------------

class _TangentStops:
    """Forward pre-hooks that drop the tangent of every consumer's input: there the two copies' tangents
    cancel (each column halved), exactly in arithmetic but not in rounding."""

    def __init__(self, model: nn.Module, consumers: set[str]):
        self.modules = [model.get_submodule(name) for name in sorted(consumers)]
        self.handles: list = []

    def __enter__(self):
        def drop(module, args):
            return (fwAD.unpack_dual(args[0]).primal,) + tuple(args[1:])
        self.handles = [m.register_forward_pre_hook(drop) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


class _Curvatures(TorchFunctionMode):
    """Records ``(input, output, act''(input) * tangent)`` of every activation call (functional, method, or
    module: they call the functional) whose input carries a tangent; act'' follows the curvature rules,
    with the call's parameters (LeakyReLU's slope, Hardtanh's range: ReLU6)."""

    def __init__(self, records: list, curvature: CurvatureConfig):
        super().__init__()
        self.records, self.curvature = records, curvature

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = ACT_FUNCTIONS.get(func)
        if name is None and getattr(torch.Tensor, getattr(func, "__name__", ""), None) is func:
            name = ACT_METHODS.get(func.__name__)
        tangent = fwAD.unpack_dual(args[0]).tangent if name and args and isinstance(args[0], Tensor) else None
        if tangent is None:
            return func(*args, **kwargs)
        # out of place (the input must survive for the backward to it): relu_ -> relu, inplace=True -> False
        params = ACT_DEFAULTS.get(name, ())
        if func.__name__.endswith("_"):
            func = getattr(torch, func.__name__.rstrip("_"))
        args = args[:len(params) + 1]
        if "inplace" in kwargs:
            kwargs["inplace"] = False
        out = func(*args, **kwargs)
        module = activation_module(name)
        for key, value in dict(zip([k for k, _ in params], args[1:]), **kwargs).items():
            if key != "inplace":
                setattr(module, key, value)
        if name == "gelu" and kwargs.get("approximate") == "tanh":
            name = "gelu_tanh"
        with torch.no_grad():
            _, d2 = derivatives(name, fwAD.unpack_dual(args[0]).primal.detach(), self.curvature, module)
        self.records.append((args[0], out, d2 * tangent.detach()))
        return out
