"""Exact splitting matrices: accumulate S per neuron from unfolded patches, then ``torch.linalg.eigh``.

The oracle the fast solver is compared against (METHOD.md section 3; memory O(n_out d^2), time
O(n_out d^3)). For a chain f = ops after the producer, the second-order term of the virtual split comes
from each activation m (and, for a linear neuron, the virtual identity at the end):

    S_k = mean_x sum_m sum_q  gbar_m[q] act_m''(a_m[q]) J_m[q] J_m[q]^T

J_m[q] = d a_m[q] / d theta_k (patches x_p scaled by BN factors and act' and mixed spatially by the
depthwise convs of the chain), gbar_m = the backward of g = dL/do through the chain's linearisation
after m. With no depthwise conv J_m[q] is a per-position multiple of the patch x_q.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .curvature import CurvatureConfig
from .._device import full_float32
from ..errors import ConfigError, EnergySplitError, UnsupportedModelError
from ..graph.inventory import Group
from .chains import ChainTaps, Step, bn_scale
from .solver import SOLVERS, ChainTracker, GroupScores, derivative_pair, iterate_batches


@dataclass(frozen=True)
class ExactConfig:
    """memory_limit: bytes allowed for all the S matrices together (n_out * d^2 floats per group);
    chunk_elements: size of the temporary (samples x channels x d x positions) blocks."""

    memory_limit: float = 2e9
    batch_size: int = 64
    chunk_elements: int = 2 ** 23

    def __post_init__(self):
        if self.memory_limit <= 0 or self.batch_size < 1 or self.chunk_elements < 1:
            raise ConfigError("ExactConfig values must be positive")


class CaptureTracker(ChainTracker):
    """Records the producer input, act'/act'' at every activation, and puts a zero probe at the end."""

    def on_start(self, x: Tensor, out: Tensor) -> None:
        self.x, self.d1, self.d2 = x.detach(), {}, {}

    def on_step(self, index: int, step: Step, inp: Tensor) -> None:
        if step.kind == "act":
            self.d1[index], self.d2[index] = derivative_pair(step, inp, self.curvature)

    def on_end(self, out: Tensor) -> Tensor:
        self.probe = torch.zeros_like(out, requires_grad=True)
        return out + self.probe

    def channel_first(self, t: Tensor) -> Tensor:
        return t.movedim(-1, 1) if isinstance(self.producer, nn.Linear) and t.dim() > 2 else t

    def patches(self) -> Tensor:
        """(N, G, d, *positions): the inputs each output channel sees, G = the producer's groups."""
        p, x = self.producer, self.x
        if isinstance(p, nn.Linear):
            return self.channel_first(x).unsqueeze(1)
        if not isinstance(p, nn.Conv2d) or p.padding_mode != "zeros" or isinstance(p.padding, str):
            raise UnsupportedModelError(f"exact splitting supports Linear and zero-padded Conv2d producers with "
                                        f"numeric padding, not {p}; use method='fast'")
        if p.kernel_size == (1, 1) and p.padding == (0, 0):  # pointwise: the patches are the pixels
            x = x[:, :, ::p.stride[0], ::p.stride[1]]
            return x.reshape(len(x), p.groups, -1, *x.shape[2:])
        cols = nn.functional.unfold(x, p.kernel_size, p.dilation, p.padding, p.stride)
        h = (x.shape[2] + 2 * p.padding[0] - p.dilation[0] * (p.kernel_size[0] - 1) - 1) // p.stride[0] + 1
        return cols.view(len(x), p.groups, -1, h, cols.shape[-1] // h)


def _adjoints(t: CaptureTracker, g: Tensor) -> dict:
    """gbar at every activation with curvature (and at the end, key None): g pulled back through the
    chain's linearisation, by autograd on that linear map."""
    zs, u = {}, None
    with torch.enable_grad():
        for i, step in enumerate(t.steps):
            if u is not None:
                u = _linear_step(t, i, step, u)
            if step.kind == "act" and t.d2[i] is not None:
                zs[i] = torch.zeros_like(t.d1[i], requires_grad=True)
                u = zs[i] if u is None else u + zs[i]
        grads = torch.autograd.grad((u * g).sum(), list(zs.values()), allow_unused=True) if zs else ()
    out = {None: g} if t.end_curvature else {}
    if zs:
        out.update({i: torch.zeros_like(g) if gr is None else gr for i, gr in zip(zs, grads)})
    return out


def _linear_step(t: CaptureTracker, i: int, step: Step, u: Tensor) -> Tensor:
    if step.kind == "bn":
        return u * t.per_channel(bn_scale(step.module), u)
    if step.kind == "dw":
        return step.module._conv_forward(u, step.module.weight.detach(), None)
    return u * t.d1[i]


def _accumulate(t: CaptureTracker, g: Tensor, S: Tensor, chunk_elements: int) -> None:
    """Add this batch's sum over samples of each channel's S (unnormalised) into ``S`` (C, d, d)."""
    gbar = {k: t.channel_first(v) for k, v in _adjoints(t, g).items()}
    if not gbar:
        return
    X = t.patches()
    N, G, d = X.shape[:3]
    C = S.shape[0]
    positions = max(X[0, 0, 0].numel(), max(v[0, 0].numel() for v in gbar.values()))
    per_channel = d * positions
    ck = max(1, min(C, chunk_elements // max(1, N * per_channel)))
    nk = N if ck > 1 else max(1, min(N, chunk_elements // per_channel))
    d1 = {i: t.channel_first(v) for i, v in t.d1.items()}
    d2 = {i: None if v is None else t.channel_first(v) for i, v in t.d2.items()}
    for k0 in range(0, C, ck):
        ks = slice(k0, min(C, k0 + ck))
        for n0 in range(0, N, nk):
            ns = slice(n0, min(N, n0 + nk))
            S[ks] += _chunk(t, X[ns], ks, ns, gbar, d1, d2, C)


def _chunk(t, X, ks, ns, gbar, d1, d2, C) -> Tensor:
    """S contributions of channels ``ks`` from samples ``ns``: J kept as M * X until a depthwise conv
    mixes positions (then materialised as (n, k, d, *positions))."""
    n, G, d = X.shape[:3]
    k_idx = torch.arange(ks.start, ks.stop, device=X.device)
    shared = X[:, 0] if G == 1 else None
    J = None if G == 1 else X[:, k_idx // (C // G)]  # grouped producer: each channel's own inputs
    M = None
    Sk = torch.zeros(len(k_idx), d, d, dtype=X.dtype, device=X.device)

    def cview(vec: Tensor, like: Tensor) -> Tensor:
        return vec.detach()[ks].to(like.dtype).view((1, -1) + (1,) * (like.dim() - 2))

    def contribute(w: Tensor) -> None:
        nonlocal Sk
        if J is None:
            w = w if M is None else w * M * M
            A = shared.unsqueeze(1) * w.unsqueeze(2)                       # (n, k, d, *pos)
            A = A.movedim(0, 2).reshape(len(k_idx) * d, -1)               # (k d, n pos)
            B = shared.movedim(1, -1).reshape(-1, d)                       # (n pos, d)
            Sk = Sk + (A @ B).view(len(k_idx), d, d)
        else:
            A = (J * w.unsqueeze(2)).movedim(0, 2).reshape(len(k_idx), d, -1)
            Sk = Sk + A @ J.movedim(0, 2).reshape(len(k_idx), d, -1).transpose(1, 2)

    for i, step in enumerate(t.steps):
        if step.kind == "bn":
            c = bn_scale(step.module)
            if J is None:
                M = cview(c, shared) * (1 if M is None else M)
            else:
                J = J * cview(c, J[:, :, 0]).unsqueeze(2)
        elif step.kind == "act":
            if i in gbar:
                contribute(gbar[i][ns, ks] * d2[i][ns, ks])
            a1 = d1[i][ns, ks]
            if J is None:
                M = a1 if M is None else M * a1
            else:
                J = J * a1.unsqueeze(2)
        else:  # depthwise conv: per-channel spatial mixing of every column of J
            if J is None:
                J = shared.unsqueeze(1) * (1 if M is None else M.unsqueeze(2))
                J = J.expand(n, len(k_idx), *J.shape[2:])
            m = step.module
            if not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise UnsupportedModelError(f"exact splitting supports zero-padded Conv2d depthwise convs, "
                                            f"not {m}; use method='fast'")
            w = m.weight.detach()[ks].repeat_interleave(d, 0)
            flat = J.reshape(n, len(k_idx) * d, *J.shape[3:])
            out = nn.functional.conv2d(flat, w, None, m.stride, m.padding, m.dilation, len(k_idx) * d)
            J = out.view(n, len(k_idx), d, *out.shape[2:])
    if None in gbar:
        contribute(gbar[None][ns, ks] * t.end_curvature)
    return Sk


def splitting_matrices(model, batches, groups: list[Group], curvature: CurvatureConfig = CurvatureConfig(),
                       config: ExactConfig | None = None, loss_fn=None) -> dict[str, Tensor]:
    """S (width, d, d) for each group: the mean over all samples, symmetrised. The model must already be in
    eval mode (use :func:`energysplit.splitting_scores`, or :func:`energysplit.splitting.solver.evaluating`)."""
    config = config or ExactConfig()
    if not isinstance(config, ExactConfig):
        raise TypeError(f"the exact solver takes an ExactConfig, got {type(config).__name__}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    trackers = [CaptureTracker(g, model, curvature) for g in groups]
    sizes = {t.group.id: (t.producer.weight.shape[0], t.producer.weight[0].numel()) for t in trackers}
    need = sum(c * d * d for c, d in sizes.values()) * torch.finfo(dtype).bits // 8
    if need > config.memory_limit:
        big = max(sizes, key=lambda k: sizes[k][0] * sizes[k][1] ** 2)
        c, d = sizes[big]
        raise EnergySplitError(
            f"exact splitting matrices need {need / 1e9:.2f} GB (largest: {big}, {c} x {d}^2 floats) > "
            f"memory_limit {config.memory_limit / 1e9:.2f} GB; use method='fast' or raise the limit")
    S = {gid: torch.zeros(c, d, d, dtype=dtype, device=device) for gid, (c, d) in sizes.items()}
    total = 0
    with ChainTaps(model, trackers) as taps:
        for x, target in iterate_batches(batches, config.batch_size):
            x, target = x.to(device), target.to(device)
            loss = loss_fn(taps.forward(x), target)
            grads = torch.autograd.grad(loss, [t.probe for t in trackers])
            with torch.no_grad():
                for t, g in zip(trackers, grads):
                    _accumulate(t, g * len(x), S[t.group.id], config.chunk_elements)
                    t.x = t.d1 = t.d2 = t.probe = None
            total += len(x)
    for gid, mat in S.items():
        mat /= max(total, 1)
        S[gid] = (mat + mat.transpose(1, 2)) / 2
    return S


@SOLVERS.register("exact")
def exact_scores(model, batches, groups: list[Group], curvature: CurvatureConfig, config, loss_fn) -> dict:
    """Smallest eigenpair of each exact S (``torch.linalg.eigh``), in full float32 (no TF32) on a GPU."""
    out = {}
    with full_float32():
        matrices = splitting_matrices(model, batches, groups, curvature, config, loss_fn)
    for g in groups:
        vals, vecs = smallest_eigenpairs(matrices.pop(g.id))
        shape = (g.width,) + tuple(_weight_shape(model, g)[1:])
        out[g.id] = GroupScores(vals, vecs.reshape(shape))
    return out


def smallest_eigenpairs(S: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of each S scaled to unit max-abs entry (tiny S make LAPACK fail), in
    chunks; a chunk that fails to converge is retried in float64."""
    vals, vecs = [], []
    for block in S.split(chunk):
        scale = block.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(S.dtype).tiny)
        try:
            lam, vec = torch.linalg.eigh(block / scale)
        except RuntimeError:  # torch.linalg.LinAlgError
            lam, vec = torch.linalg.eigh((block / scale).double())
        vals.append((lam[:, 0] * scale[:, 0, 0]).to(S.dtype))
        vecs.append(vec[:, :, 0].to(S.dtype))
    return torch.cat(vals), torch.cat(vecs)


def _weight_shape(model: nn.Module, group: Group) -> torch.Size:
    return model.get_submodule(group.producers[0]).weight.shape
