"""S v for every neuron of a group from one backward pass: the auxiliary-variable trick.

Wang et al. 2019 (arXiv 1910.03103, section 3; METHOD.md section 3). With y = 0 and v the current
directions (both shaped like the producer's weight), the chain's output becomes o + D^2 o[y, v]; the
bilinear term is a second-order jet carried along the chain:

    producer: z1 = conv(x, .)            bn: z *= c            dw: z = dw(z)   (no bias)
    act:      z2 = act''(a) z1v z1y + act'(a) z2,    z1 = act'(a) z1

Its value is 0 (z1y = conv(x, 0)), and dL/dy = sum over samples and positions of g . D^2 o[., v] = S v.

Two trackers compute the same dL/dy:

- :class:`TermJet` adds the term literally (autograd differentiates it): the direct reading of the
  method, kept as the reference implementation.
- :class:`AdjointJet` (default) skips the zero-valued y path in the forward pass: a custom autograd
  function at the chain's end receives g and pulls it back through the chain's linearisation, picking
  up act''(a) (z1v) at each activation, then forms the producer's weight gradient with it. Same
  result, without the y-side convolution and its elementwise jet in the forward pass.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import grad as conv_grad

from ..graph.inventory import Group
from .chains import Step, apply_linear, bn_scale
from .curvature import CurvatureConfig
from .solver import ChainTracker, derivative_pair


class TermJet(ChainTracker):
    """Carries (z1v, z1y, z2) along the chain and adds z2 = D^2 o[y, v] at its end."""

    def __init__(self, group: Group, model: nn.Module, curvature: CurvatureConfig, v: Tensor, y: Tensor):
        super().__init__(group, model, curvature)
        self.v, self.y = v, y

    def on_start(self, x: Tensor, out: Tensor) -> None:
        x = x.detach()
        with torch.no_grad():
            self.zv = apply_linear(self.producer, x, self.v)
        self.zy = apply_linear(self.producer, x, self.y)
        self.z2 = None

    def on_step(self, index: int, step: Step, inp: Tensor) -> None:
        if step.kind == "bn":
            c = self.per_channel(bn_scale(step.module), inp)
            self._map(lambda z: z * c)
        elif step.kind == "dw":
            weight = step.module.weight.detach()
            self._map(lambda z: step.module._conv_forward(z, weight, None))
        else:
            d1, d2 = derivative_pair(step, inp, self.curvature)
            z2 = None if self.z2 is None else d1 * self.z2
            if d2 is not None:
                term = (d2 * self.zv) * self.zy
                z2 = term if z2 is None else z2 + term
            self.z2 = z2
            self._map(lambda z: d1 * z, second=False)

    def _map(self, fn, second: bool = True) -> None:
        with torch.no_grad():
            self.zv = fn(self.zv)
        self.zy = fn(self.zy)
        if second and self.z2 is not None:
            self.z2 = fn(self.z2)

    def on_end(self, out: Tensor) -> Tensor:
        if self.end_curvature:
            term = (self.end_curvature * self.zv) * self.zy
            self.z2 = term if self.z2 is None else self.z2 + term
        z2, self.zv, self.zy, self.z2 = self.z2, None, None, None
        return out if z2 is None else out + z2


class AdjointJet(TermJet):
    """Same dL/dy as :class:`TermJet`; the y side is done in the backward pass (see the module doc)."""

    def on_start(self, x: Tensor, out: Tensor) -> None:
        self.x = x.detach()
        with torch.no_grad():
            self.zv = apply_linear(self.producer, self.x, self.v)
        self.ops: list[tuple] = []         # op i maps level i -> i+1: ("scale", c) or ("dw", module, in_shape)
        self.terms: dict[int, Tensor] = {}  # act op i -> act''(a) * z1v at level i

    def on_step(self, index: int, step: Step, inp: Tensor) -> None:
        with torch.no_grad():
            if step.kind == "bn":
                c = self.per_channel(bn_scale(step.module), inp)
                self.ops.append(("scale", c))
                self.zv = self.zv * c
            elif step.kind == "dw":
                self.ops.append(("dw", step.module, self.zv.shape))
                self.zv = step.module._conv_forward(self.zv, step.module.weight.detach(), None)
            else:
                d1, d2 = derivative_pair(step, inp, self.curvature)
                if d2 is not None:
                    self.terms[len(self.ops)] = d2 * self.zv
                self.ops.append(("scale", d1))
                self.zv = d1 * self.zv

    def on_end(self, out: Tensor) -> Tensor:
        end = self.end_curvature * self.zv if self.end_curvature else None
        self.zv = None
        if end is None and not self.terms:
            return out  # no curvature anywhere in this chain under the rule: S = 0
        return _Tap.apply(out, self.y, self, end)

    def pullback(self, g: Tensor, end: Tensor | None) -> Tensor:
        """dL/dy = weight gradient of the producer for the signal sum_i L_{0..i}^T (r_{i+1} * terms_i)."""
        acc = None if end is None else g * end
        r, lowest = g, min(self.terms, default=len(self.ops))
        for i in range(len(self.ops) - 1, -1, -1):
            op = self.ops[i]
            if acc is not None:
                acc = _adjoint(op, acc)
            if i in self.terms:
                q = r * self.terms[i]
                acc = q if acc is None else acc + q
            if i > lowest:
                r = _adjoint(op, r)
        x, self.x, self.ops, self.terms = self.x, None, None, None
        return weight_grad(self.producer, x, acc)


class _Tap(torch.autograd.Function):
    """Identity on the chain's output (cloned: downstream in-place ops stay legal); backward returns
    dL/dy = S v for the zero-valued y."""

    @staticmethod
    def forward(ctx, out, y, tracker, end):
        ctx.tracker, ctx.end = tracker, end
        return out.clone()

    @staticmethod
    def backward(ctx, g):
        with torch.no_grad():
            sv = ctx.tracker.pullback(g, ctx.end)
        ctx.tracker = ctx.end = None
        return g, sv, None, None


# (input gradient, weight gradient) of a zero-padded conv with numeric padding, by its number of spatial dims;
# other padding modes go through autograd on the module's own forward
CONV_GRADS = {1: (conv_grad.conv1d_input, conv_grad.conv1d_weight),
              2: (conv_grad.conv2d_input, conv_grad.conv2d_weight),
              3: (conv_grad.conv3d_input, conv_grad.conv3d_weight)}


def _adjoint(op: tuple, r: Tensor) -> Tensor:
    if op[0] == "scale":
        return r * op[1]
    module, in_shape = op[1], op[2]
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        conv_input = CONV_GRADS[len(module.kernel_size)][0]
        return conv_input(in_shape, module.weight.detach(), r, module.stride, module.padding, module.dilation,
                          module.groups)
    z = torch.zeros(in_shape, dtype=r.dtype, device=r.device, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad(module._conv_forward(z, module.weight.detach(), None), z, r)[0]


def weight_grad(producer: nn.Module, x: Tensor, grad_out: Tensor) -> Tensor:
    """d/dW of sum(grad_out * producer(x; W)) without bias: the producer's own weight gradient."""
    w = producer.weight
    if isinstance(producer, nn.Linear):
        return (grad_out.reshape(-1, w.shape[0]).t() @ x.reshape(-1, w.shape[1])).view_as(w)
    if producer.padding_mode == "zeros" and not isinstance(producer.padding, str):
        conv_weight = CONV_GRADS[len(producer.kernel_size)][1]
        return conv_weight(x, w.shape, grad_out, producer.stride, producer.padding, producer.dilation,
                           producer.groups)
    z = torch.zeros_like(w, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad(producer._conv_forward(x, z, None), z, grad_out)[0]
