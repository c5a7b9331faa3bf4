"""Latency in ms of a model run by ONNX Runtime on this host (batch 1), measured and predicted.

``estimate`` exports the model (``torch.onnx.export(..., dynamo=False)``), runs it in ORT with fixed
``intra_op_num_threads``, sequential execution and ORT_ENABLE_ALL, after warm-up runs, and reports the
median (total) and P90 of the repeats with the provider, thread count and versions. The per-layer
breakdown and the marginal costs come from a block latency lookup table (:mod:`energysplit_estimators.ort_lut`):
predicted latency = fixed per-run overhead + sum of the blocks' entries, as in Once-for-All and
MetaPruning latency tables, plus the NCHWc layout reorders at layout boundaries. ``predict`` returns that prediction, which the marginal costs match exactly.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from energysplit.cost.estimator import CostReport, LayerwiseEstimator
from energysplit.errors import ConfigError
from .ort_blocks import block_keys, layout_costs, session, time_session, to_onnx_bytes
from .ort_lut import LatencyLUT, ort_versions, read_table


def measure_model(model, input_shape, threads: int = 1, warmup: int = 20, repeats: int = 100) -> dict:
    """Median and P90 latency (ms) of ``model`` in ONNX Runtime on inputs ``(1, *input_shape)``."""
    sess = session(to_onnx_bytes(model, [tuple(input_shape)]), threads)
    times = time_session(sess, warmup, repeats)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "repeats": len(times), "warmup": warmup, "threads": threads,
            "provider": sess.get_providers()[0], **ort_versions()}


def nchwc_block() -> int:
    """Channels per block of ONNX Runtime's NCHWc CPU kernels here: 16 with AVX-512, else 8."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    return 16 if re.search(r"\bavx512f\b", flags) else 8


class OrtLatencyEstimator(LayerwiseEstimator):
    """ONNX Runtime latency (ms). ``measure=False`` reports the lookup-table prediction as the total.

    ``lut``: a latency-table JSON (e.g. one written by ``energysplit lut`` or ``energysplit calibrate``;
    an existing file is checked here: :func:`~energysplit_estimators.ort_lut.read_table`); default: this
    host's table in the cache directory ($ENERGYSPLIT_CACHE or ~/.cache/energysplit), filled on demand.
    """

    name = "ort-latency"
    unit = "ms"
    deterministic = False
    targets = {"cpu": {"settings": {"threads": 1}, "description": "ONNX Runtime CPU on this host, 1 thread, batch 1"}}

    @property
    def channel_multiple(self) -> int:
        """ORT's blocked (NCHWc) kernels work on 16 channels with AVX-512, 8 with AVX2: on this machine
        (AVX-512) MobileNetV2 x0.5 runs 0.25 ms at its zoo widths, 0.28 ms with 8 channels fewer per group
        and 0.21 ms with 16 fewer (``energysplit_estimators.ort_latency.measure_model``)."""
        return nchwc_block()

    def __init__(self, threads: int = 1, warmup: int = 20, repeats: int = 100, measure: bool = True,
                 lut: str | None = None):
        if threads < 1 or warmup < 0 or repeats < 1:
            raise ConfigError("threads and repeats must be >= 1, warmup >= 0")
        self.threads, self.warmup, self.repeats, self.measure, self.lut = threads, warmup, repeats, measure, lut
        if lut is not None and Path(lut).exists():
            read_table(lut)
        self._table: LatencyLUT | None = None

    @property
    def table(self) -> LatencyLUT:
        if self._table is None:
            self._table = LatencyLUT(self.lut, threads=self.threads)
        return self._table

    def layer_rows(self, specs) -> list[dict]:
        keys, heads = block_keys(specs, self.table.meta.get("l2_bytes"))
        entries = {j: self.table.lookup(k) for j, k in enumerate(keys) if isinstance(k, dict)}
        self.table.save()
        costs = layout_costs(specs, keys, heads, entries)
        return [{"cost": c, "note": k if isinstance(k, str) else ("lut" if k else "not in the table")}
                for c, k in zip(costs, keys)]

    def describe_table(self) -> dict:
        """Which latency table prices this estimator's predictions (:meth:`LatencyLUT.describe`)."""
        return self.table.describe()

    def overhead(self, specs) -> float:
        return self.table.overhead()

    def estimate(self, model, input_shape) -> CostReport:
        report = super().estimate(model, input_shape)
        report.meta.update(predicted_ms=report.total, lut=str(self.table.path))
        if self.measure:
            measured = measure_model(model, input_shape, self.threads, self.warmup, self.repeats)
            report.meta.update(measured)
            report.meta["total_is"] = "measured median; layer rows are the lookup-table prediction"
            report.total = measured["median_ms"]
        else:
            report.meta["total_is"] = "lookup-table prediction"
        return report
