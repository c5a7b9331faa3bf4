"""First and second derivatives of activations, as used by the splitting matrices.

The splitting matrix of a neuron needs act''(a) (Liu et al. 2019, eq. 3; METHOD.md section 1) and, for
chains such as conv-BN-act-depthwise-BN-act, also act'(a). Smooth activations use their analytic
derivatives. Piecewise-linear ones (ReLU, ReLU6, LeakyReLU, Hardtanh, Hardsigmoid) have act'' = 0
almost everywhere; following the reference code each kink of slope jump ``j`` at ``k`` is replaced by
the second derivative of a softplus of sharpness ``beta``:  j * beta * s(beta (a - k)) (1 - s(beta (a - k))),
s = sigmoid. Linear neurons (a chain with no non-identity activation) have S = 0; the reference scores
them with act'' = 1 as a proxy (``linear="unit"``); ``linear="zero"`` keeps the true 0.

First derivatives of piecewise-linear activations are the true step functions by default (the network's
own first-order response: the split's second-order term from an earlier activation travels through the
real network), or the sigmoid surrogate (the derivative of the same softplus) with
``relu_slope="sigmoid"``.

Rules are keyed by the canonical activation names of the tracer's one table
(:data:`energysplit.graph.ops.ACTIVATIONS`; tests check that every name there has a rule), plus
``identity`` and the alias ``swish``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError, UnsupportedModelError
from .._registry import Registry


@dataclass(frozen=True)
class CurvatureConfig:
    """Which second-derivative rule each kind of activation uses (validated on construction).

    relu: ``"softplus"`` (softplus(beta) bumps at the kinks of ReLU-like activations; reference) or
    ``"zero"`` (their true act'' = 0, so such neurons never split). beta: softplus sharpness (reference 3).
    linear: ``"unit"`` (act'' = 1 proxy for linear neurons; reference) or ``"zero"``.
    relu_slope: act' of ReLU-like activations, ``"step"`` (true) or ``"sigmoid"`` (softplus surrogate).
    """

    relu: str = "softplus"
    beta: float = 3.0
    linear: str = "unit"
    relu_slope: str = "step"

    def __post_init__(self):
        if self.relu not in ("softplus", "zero"):
            raise ConfigError(f"CurvatureConfig.relu must be 'softplus' or 'zero', got {self.relu!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"CurvatureConfig.beta must be a positive number, got {self.beta!r}")
        if self.linear not in ("unit", "zero"):
            raise ConfigError(f"CurvatureConfig.linear must be 'unit' or 'zero', got {self.linear!r}")
        if self.relu_slope not in ("step", "sigmoid"):
            raise ConfigError(f"CurvatureConfig.relu_slope must be 'step' or 'sigmoid', got {self.relu_slope!r}")

    @property
    def linear_value(self) -> float:
        """act'' used for a linear neuron's (virtual) identity activation."""
        return 1.0 if self.linear == "unit" else 0.0


Derivatives = Callable[[Tensor, CurvatureConfig, "nn.Module | None"], "tuple[Tensor, Tensor]"]
ACTIVATIONS = Registry("activation rule")


def derivatives(name: str, a: Tensor, config: CurvatureConfig = CurvatureConfig(),
                module: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """``(act'(a), act''(a))`` for the normalised activation ``name`` under ``config``.

    ``module`` (optional) supplies parameters such as LeakyReLU's slope or GELU's approximation.
    """
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"no splitting rule for activation {name!r}; known: {', '.join(ACTIVATIONS.names())} "
            "(register one in energysplit.splitting.curvature.ACTIVATIONS)")
    return ACTIVATIONS.get(name)(a, config, module)


def is_identity(name: str | None) -> bool:
    return name in (None, "identity")


# --- piecewise-linear activations: kinks (location, slope jump) -----------------------------------

def _const(value: float, like: Tensor) -> Tensor:
    return torch.full((), value, dtype=like.dtype, device=like.device).expand_as(like)


def _piecewise(a: Tensor, config: CurvatureConfig, base: float, kinks: list[tuple[float, float]]):
    """act = base slope plus slope jumps ``j`` at ``k``: act'(a) = base + sum j [a > k]; the softplus
    surrogate act''(a) = sum j beta s (1 - s), s = sigmoid(beta (a - k)). Fused aten kernels: these run
    on every activation of the network at every step of the fast solver."""
    d1 = d2 = None
    for k, j in kinks:
        s = torch.mul(a - k if k else a, config.beta).sigmoid_()
        if config.relu_slope == "step":
            t1 = torch.ops.aten.threshold_backward(_const(j, a), a, k)  # j where a > k, else 0
        else:
            t1 = s * j
        d1 = t1 if d1 is None else d1.add_(t1)
        if config.relu == "softplus":
            t2 = torch.ops.aten.sigmoid_backward(_const(j * config.beta, a), s)  # j beta s (1 - s)
            d2 = t2 if d2 is None else d2.add_(t2)
    if base:
        d1 = d1.add_(base)
    return d1, torch.zeros_like(a) if d2 is None else d2


@ACTIVATIONS.register("relu")
def _relu(a, config, module=None):
    return _piecewise(a, config, 0.0, [(0.0, 1.0)])


@ACTIVATIONS.register("relu6")
def _relu6(a, config, module=None):
    """ReLU6: kinks at 0 (+1) and 6 (-1): the difference of two softplus bumps (METHOD.md section 1)."""
    return _piecewise(a, config, 0.0, [(0.0, 1.0), (6.0, -1.0)])


@ACTIVATIONS.register("leaky_relu")
def _leaky_relu(a, config, module=None):
    slope = float(getattr(module, "negative_slope", 0.01))
    return _piecewise(a, config, slope, [(0.0, 1.0 - slope)])


@ACTIVATIONS.register("hardtanh")
def _hardtanh(a, config, module=None):
    lo, hi = float(getattr(module, "min_val", -1.0)), float(getattr(module, "max_val", 1.0))
    return _piecewise(a, config, 0.0, [(lo, 1.0), (hi, -1.0)])


@ACTIVATIONS.register("hardsigmoid")
def _hardsigmoid(a, config, module=None):
    return _piecewise(a, config, 0.0, [(-3.0, 1 / 6), (3.0, -1 / 6)])


# --- smooth or piecewise-smooth activations: analytic derivatives -----------------------------

@ACTIVATIONS.register("identity")
def _identity(a, config, module=None):
    """Identity inside a chain: act' = 1, act'' = 0 (the linear proxy is applied per neuron, not here)."""
    return torch.ones_like(a), torch.zeros_like(a)


@ACTIVATIONS.register("sigmoid")
def _sigmoid(a, config, module=None):
    s = torch.sigmoid(a)
    return s * (1 - s), s * (1 - s) * (1 - 2 * s)


@ACTIVATIONS.register("tanh")
def _tanh(a, config, module=None):
    t = torch.tanh(a)
    return 1 - t * t, -2 * t * (1 - t * t)


@ACTIVATIONS.register("silu")
def _silu(a, config, module=None):
    """SiLU/Swish a s(a): act' = s + a s (1-s), act'' = 2 s (1-s) + a s (1-s)(1-2s)."""
    s = torch.sigmoid(a)
    ds = s * (1 - s)
    return s + a * ds, 2 * ds + a * ds * (1 - 2 * s)


ACTIVATIONS.register("swish", _silu)


@ACTIVATIONS.register("hardswish")
def _hardswish(a, config, module=None):
    """a relu6(a+3)/6: act' = (2a+3)/6 on (-3, 3), 1 above; act'' = 1/3 on (-3, 3), 0 elsewhere."""
    inside = ((a > -3) & (a < 3)).to(a.dtype)
    d1 = inside * (2 * a + 3) / 6 + (a >= 3).to(a.dtype)
    return d1, inside / 3


@ACTIVATIONS.register("gelu")
def _gelu(a, config, module=None):
    """a Phi(a): act' = Phi + a phi, act'' = phi (2 - a^2); tanh approximation if the module says so."""
    if getattr(module, "approximate", "none") == "tanh":
        return _gelu_tanh(a, config, module)
    phi = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    return Phi + a * phi, phi * (2 - a * a)


@ACTIVATIONS.register("gelu_tanh")
def _gelu_tanh(a, config, module=None):
    """0.5 a (1 + tanh(u)), u = k (a + 0.044715 a^3), k = sqrt(2/pi)."""
    k, c = math.sqrt(2 / math.pi), 0.044715
    t = torch.tanh(k * (a + c * a ** 3))
    du, ddu = k * (1 + 3 * c * a * a), 6 * k * c * a
    sech2 = 1 - t * t
    d1 = 0.5 * (1 + t) + 0.5 * a * sech2 * du
    d2 = sech2 * du + 0.5 * a * (-2 * t * sech2 * du * du + sech2 * ddu)
    return d1, d2


@ACTIVATIONS.register("softplus")
def _softplus(a, config, module=None):
    beta = float(getattr(module, "beta", 1.0))
    s = torch.sigmoid(beta * a)
    return s, beta * s * (1 - s)


@ACTIVATIONS.register("elu")
def _elu(a, config, module=None):
    alpha = float(getattr(module, "alpha", 1.0))
    neg = alpha * torch.exp(torch.clamp(a, max=0.0))
    pos = (a > 0).to(a.dtype)
    return pos + (1 - pos) * neg, (1 - pos) * neg


@ACTIVATIONS.register("mish")
def _mish(a, config, module=None):
    """a tanh(softplus(a)): derivatives via t = tanh(sp), sp' = s."""
    s = torch.sigmoid(a)
    t = torch.tanh(nn.functional.softplus(a))
    sech2 = 1 - t * t
    d1 = t + a * sech2 * s
    d2 = 2 * sech2 * s + a * (-2 * t * sech2 * s * s + sech2 * s * (1 - s))
    return d1, d2
