"""Multiply-accumulate count (MACs; FLOPs = 2 x MACs) from an analytic per-layer formula.

conv: Cout * Cin/groups * kh * kw * Hout * Wout; linear: in * out (times any leading non-batch dims);
attention over C channels, T queries and K keys each: 4 T C^2 (query, key, value and output projections)
+ 2 T K C (scores and weighted sum; the softmax is not a MAC); einsum or matmul of two activations: the
product of every index's size. BatchNorm, LayerNorm, activations,
pooling, adds and reshapes are element-wise (no multiply-accumulate) and count 0 MACs, as in the mobile
literature (MobileNetV2: 300 M MACs at 224 px). Other ops are reported as unsupported. The count is cross-checked against ``torch.utils.flop_counter`` (2 FLOPs per MAC) or
fvcore (whose "flop" is one MAC); ops those counters see but the analytic count does not (e.g. a
matmul inside a custom module) are reported as unsupported.
"""
from __future__ import annotations

import math
import warnings

from energysplit.cost.estimator import CostReport, LayerwiseEstimator
from energysplit.errors import ConfigError
from energysplit.graph.layers import LayerSpec

ZERO_MAC_OPS = {"bn", "norm", "act", "pool", "add", "pass", "concat"}


def layer_macs(spec: LayerSpec) -> int | None:
    """MACs of one op (batch 1); None for an op this formula does not cover."""
    if spec.op == "conv":
        return spec.cout * (spec.cin // spec.groups) * math.prod(spec.kernel) * math.prod(spec.out_shape[2:])
    if spec.op == "linear":
        return spec.cin * spec.cout * math.prod(spec.out_shape[1:-1])
    if spec.op == "attention":
        return projection_macs(spec) + 2 * spec.tokens * spec.keys * spec.cin
    if spec.op == "contract":
        return spec.macs
    if spec.op in ZERO_MAC_OPS:
        return 0
    return None


def projection_macs(spec: LayerSpec) -> int:
    """MACs of an attention op's query, key, value and output projections (linear layers inside it)."""
    return 4 * spec.tokens * spec.cin * spec.cin


def counter_macs(model, input_shape, counter: str = "torch") -> dict[str, int]:
    """MACs per operator from ``torch.utils.flop_counter`` (FLOPs / 2) or fvcore (flops = MACs)."""
    import torch

    x = torch.zeros((1, *input_shape))
    was_training = model.training
    model.eval()
    try:
        if counter == "fvcore":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                from fvcore.nn import FlopCountAnalysis
            fca = FlopCountAnalysis(model, x)
            fca.unsupported_ops_warnings(False)
            fca.uncalled_modules_warnings(False)
            return {k: int(v) for k, v in fca.by_operator().items()}
        from torch.utils.flop_counter import FlopCounterMode

        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused MultiheadAttention kernel is not counted
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                model(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        return {str(k).split(".")[1] if str(k).startswith("aten.") else str(k): int(v) // 2
                for k, v in fc.get_flop_counts().get("Global", {}).items()}
    finally:
        model.train(was_training)


# counter op names that the analytic conv/linear count covers; fvcore also costs BN and pooling
_COVERED = {"convolution", "conv", "addmm", "mm", "linear", "batch_norm", "layer_norm", "group_norm",
            "adaptive_avg_pool2d", "upsample_nearest2d"}
# the score and weighted-sum products of attention ops (covered when the model has attention ops)
_ATTENTION = {"bmm", "baddbmm", "matmul", "einsum", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention"}


class FlopsEstimator(LayerwiseEstimator):
    """MACs of conv and linear layers (FLOPs = 2 x MACs in ``meta``); deterministic and exact."""

    name = "flops"
    unit = "MACs"
    targets = {"flops": {"settings": {}, "description": "multiply-accumulates of conv and linear layers "
                                                        "(FLOPs = 2 x MACs), analytic"}}

    def __init__(self, cross_check: str | None = "torch"):
        if cross_check not in (None, "torch", "fvcore"):
            raise ConfigError(f"cross_check must be 'torch', 'fvcore' or None, not {cross_check!r}")
        self.cross_check = cross_check

    def layer_rows(self, specs) -> list[dict]:
        rows = []
        for s in specs:
            macs = layer_macs(s)
            extra = {"projection_macs": projection_macs(s)} if s.op == "attention" else {}
            rows.append({"cost": macs, "params": layer_params(s), **extra})
        return rows

    def estimate(self, model, input_shape) -> CostReport:
        report = super().estimate(model, input_shape)
        report.meta.update(flops=2 * report.total, flops_note="FLOPs = 2 x MACs (one multiply + one add)")
        if self.cross_check:
            by_op = counter_macs(model, input_shape, self.cross_check)
            analytic = sum(r["cost"] for r in report.layers if r["op"] in ("conv", "linear")) + sum(
                r["projection_macs"] for r in report.layers if r["op"] == "attention")
            counted = sum(v for k, v in by_op.items() if k in ("convolution", "conv", "addmm", "mm", "linear"))
            report.meta.update(cross_check=self.cross_check, counter_macs=by_op)
            products = any(r["op"] in ("attention", "contract") for r in report.layers)
            covered = _COVERED | (_ATTENTION if products else set())
            extra = sorted(k for k, v in by_op.items() if v and k not in covered)
            report.unsupported += [f"{k} (seen by the {self.cross_check} counter)" for k in extra]
            if counted != analytic:
                report.unsupported.append(f"conv/linear MACs differ: analytic {analytic}, "
                                          f"{self.cross_check} counter {counted}")
        return report


def layer_params(s: LayerSpec) -> int:
    """Parameters of one op: conv/linear weights and bias, BatchNorm scale and shift (folded)."""
    if s.op == "conv":
        return s.cout * (s.cin // s.groups) * math.prod(s.kernel) + (s.cout if s.bias else 0)
    if s.op == "linear":
        return s.cin * s.cout + (s.cout if s.bias else 0)
    if s.op == "attention":
        return 4 * s.cin * s.cin + (4 * s.cin if s.bias else 0)
    if s.op == "bn":
        return 2 * s.cin
    return 0
