import pytest
import torch
from torch import nn

from energysplit.splitting.curvature import ACTIVATIONS, CurvatureConfig, derivatives
from energysplit.errors import ConfigError, UnsupportedModelError

# activation name -> (the function itself, module passed for parameters)
ANALYTIC = {
    "sigmoid": (torch.sigmoid, None),
    "tanh": (torch.tanh, None),
    "silu": (nn.functional.silu, None),
    "swish": (nn.functional.silu, None),
    "gelu": (nn.functional.gelu, nn.GELU()),
    "gelu_tanh": (lambda a: nn.functional.gelu(a, approximate="tanh"), None),
    "softplus": (lambda a: nn.functional.softplus(a, beta=2.0), nn.Softplus(beta=2.0)),
    "elu": (lambda a: nn.functional.elu(a, alpha=0.7), nn.ELU(alpha=0.7)),
    "mish": (nn.functional.mish, None),
    "hardswish": (nn.functional.hardswish, None),
    "identity": (lambda a: a, None),
}


def autograd_derivatives(fn, a):
    a = a.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(fn(a).sum(), a, create_graph=True)
    if not d1.requires_grad:  # constant first derivative
        return d1.detach(), torch.zeros_like(a)
    (d2,) = torch.autograd.grad(d1.sum(), a, allow_unused=True)
    return d1.detach(), torch.zeros_like(a) if d2 is None else d2


def points(kinks=()):
    a = torch.linspace(-8, 8, 1601, dtype=torch.float64)
    for k in kinks:  # stay away from kinks, where autograd picks a one-sided value
        a = a[(a - k).abs() > 1e-3]
    return a


@pytest.mark.parametrize("name", sorted(ANALYTIC))
def test_analytic_derivatives_match_double_backward(name):
    fn, module = ANALYTIC[name]
    a = points(kinks=(-3, 3, 0))
    d1, d2 = derivatives(name, a, CurvatureConfig(), module)
    e1, e2 = autograd_derivatives(fn, a)
    torch.testing.assert_close(d1, e1, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(d2, e2, rtol=1e-9, atol=1e-12)


def test_gelu_module_with_tanh_approximation_uses_its_own_formula():
    a = points()
    d1, d2 = derivatives("gelu", a, CurvatureConfig(), nn.GELU(approximate="tanh"))
    e1, e2 = autograd_derivatives(lambda t: nn.functional.gelu(t, approximate="tanh"), a)
    torch.testing.assert_close(d2, e2, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(d2, derivatives("gelu", a)[1])


def softplus(a, beta):
    return nn.functional.softplus(a, beta=beta)


@pytest.mark.parametrize("beta", [1.0, 3.0, 10.0])
def test_relu_and_relu6_surrogates_are_softplus_curvatures(beta):
    cfg = CurvatureConfig(beta=beta)
    a = points(kinks=(0, 6))
    _, d2 = derivatives("relu", a, cfg)
    torch.testing.assert_close(d2, autograd_derivatives(lambda t: softplus(t, beta), a)[1])
    # ReLU6 = relu(a) - relu(a - 6): difference of two softplus bumps at 0 and 6
    _, d2 = derivatives("relu6", a, cfg)
    e2 = autograd_derivatives(lambda t: softplus(t, beta) - softplus(t - 6, beta), a)[1]
    torch.testing.assert_close(d2, e2)
    assert d2[(a - 6).abs().argmin()] < 0 < d2[a.abs().argmin()]


@pytest.mark.parametrize("name,fn,module", [
    ("relu", torch.relu, None), ("relu6", nn.functional.relu6, None),
    ("leaky_relu", lambda t: nn.functional.leaky_relu(t, 0.2), nn.LeakyReLU(0.2)),
    ("hardtanh", lambda t: nn.functional.hardtanh(t, -2.0, 1.5), nn.Hardtanh(-2.0, 1.5)),
    ("hardsigmoid", lambda t: nn.functional.relu6(t + 3) / 6, None),
])
def test_piecewise_linear_first_derivative_is_the_true_step(name, fn, module):
    a = points(kinks=(0, 6, -2, 1.5, -3, 3))
    d1, _ = derivatives(name, a, CurvatureConfig(), module)
    torch.testing.assert_close(d1, autograd_derivatives(fn, a)[0])
    _, d2 = derivatives(name, a, CurvatureConfig(relu="zero"), module)
    assert torch.count_nonzero(d2) == 0


def test_sigmoid_slope_option_is_the_softplus_derivative():
    a = points()
    d1, d2 = derivatives("relu", a, CurvatureConfig(relu_slope="sigmoid", beta=3.0))
    e1, e2 = autograd_derivatives(lambda t: softplus(t, 3.0), a)
    torch.testing.assert_close(d1, e1)
    torch.testing.assert_close(d2, e2)


def test_config_validates_and_linear_proxy_value():
    assert CurvatureConfig().linear_value == 1.0 and CurvatureConfig(linear="zero").linear_value == 0.0
    for bad, field in [({"relu": "exact"}, "relu"), ({"beta": 0}, "beta"), ({"beta": float("nan")}, "beta"),
                       ({"linear": "one"}, "linear"), ({"relu_slope": "x"}, "relu_slope")]:
        with pytest.raises(ConfigError, match=rf"CurvatureConfig\.{field} must be .*, got {bad[field]!r}"):
            CurvatureConfig(**bad)


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="no splitting rule for activation 'softsign'"):
        derivatives("softsign", torch.zeros(3))
    assert {"relu", "relu6", "silu", "hardswish", "gelu", "tanh", "sigmoid", "identity"} <= set(ACTIVATIONS)
