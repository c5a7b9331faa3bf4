"""Register this machine as a latency target: measure an ONNX Runtime lookup table and save a user target.

``calibrate("mydevice")`` measures every block of a model (default: the zoo default at 1x28x28) and,
with ``neighbours``, the blocks of the model with one channel more or fewer per neuron group (what the
marginal costs need), into ``<user dir>/tables/<name>-latency.json``, and writes
``<user dir>/targets/<name>.json`` binding the ``ort-latency`` estimator to that table. The user dir is
``$ENERGYSPLIT_HOME`` or ~/.config/energysplit (:func:`energysplit.cost.plugins.user_dir`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..errors import ConfigError, InputFileError, RegistryError


@dataclass(frozen=True)
class CalibrateConfig:
    name: str
    arch: str | None = None
    width: float | None = None
    input_shape: tuple[int, ...] = (1, 28, 28)
    threads: int = 1
    neighbours: bool = True
    force: bool = False

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name or ""):
            raise ConfigError(f"target name {self.name!r}: use letters, digits, '.', '_' and '-'")
        if self.threads < 1:
            raise ConfigError("threads must be >= 1")
        if len(self.input_shape) < 2 or min(self.input_shape) < 1:
            raise ConfigError(f"input shape {self.input_shape} must be C,H,W of positive ints")


def calibrate(config: CalibrateConfig) -> dict:
    """Measure the table, save the target; returns paths, entry count, seconds and the prediction error."""
    import datetime

    from .estimator import TARGETS, create_estimator
    from ..graph.trace import build_inventory
    from .._io import atomic_write_json
    from .plugins import load_plugins, user_dir
    from ..zoo import DEFAULT_MODEL, create_model

    target_path = user_dir() / "targets" / f"{config.name}.json"
    table_path = user_dir() / "tables" / f"{config.name}-latency.json"
    if config.name in TARGETS and not TARGETS.origin(config.name).startswith("user dir"):
        raise RegistryError(f"target {config.name!r} already exists ({TARGETS.origin(config.name)}); "
                               "pick another --name")
    if target_path.exists() and not config.force:
        raise InputFileError(f"{target_path} exists; pass --force to measure it again")
    if table_path.exists():
        table_path.unlink()
    arch = config.arch or DEFAULT_MODEL
    model = create_model(arch, in_channels=config.input_shape[0], width=config.width).eval()
    est = create_estimator("ort-latency", threads=config.threads, measure=False, lut=str(table_path))
    start = time.perf_counter()
    predicted = est.predict(model, config.input_shape).total
    if config.neighbours:
        est.marginal_costs(model, build_inventory(model, config.input_shape), config.input_shape)
    seconds = time.perf_counter() - start
    est.measure = True  # now the whole model, run in ONNX Runtime (its layers are in the table)
    measured = est.estimate(model, config.input_shape).meta
    desc = (f"ONNX Runtime latency table measured on {est.table.meta['host']} ({datetime.date.today()}), "
            f"{config.threads} thread(s), from {arch} at {'x'.join(map(str, config.input_shape))}")
    atomic_write_json(target_path, {"name": config.name, "estimator": "ort-latency",
                                    "settings": {"threads": config.threads, "lut": str(table_path)},
                                    "description": desc})
    load_plugins(force=True)
    return {"name": config.name, "target": str(target_path), "table": str(table_path),
            "entries": len(est.table.entries), "seconds": seconds, "predicted_ms": predicted,
            "measured_ms": measured["median_ms"], "p90_ms": measured["p90_ms"],
            "error_pct": 100 * (predicted - measured["median_ms"]) / measured["median_ms"]}


def write_lut(path: str, archs: tuple[str, ...] = (), width: float | None = None,
              input_shape: tuple[int, ...] = (1, 28, 28), threads: int = 1, neighbours: bool = True) -> dict:
    """Write this host's ONNX Runtime latency table (the one ``cpu`` prices with, in the cache) to ``path``,
    after measuring the blocks of the zoo models ``archs`` (with ``neighbours``, also their widths one
    channel block up and down per group, what marginal costs ask for); ``--lut path`` then prices a run
    elsewhere the same way. Returns the table's description (:meth:`LatencyLUT.describe`) and the seconds."""
    from .estimator import create_estimator
    from ..graph.trace import build_inventory
    from ..zoo import create_model

    if threads < 1 or len(input_shape) < 2 or min(input_shape) < 1:
        raise ConfigError("threads must be >= 1 and the input shape C,H,W of positive ints")
    est = create_estimator("ort-latency", threads=threads, measure=False)
    start = time.perf_counter()
    for arch in archs:
        model = create_model(arch, in_channels=input_shape[0], width=width).eval()
        est.predict(model, input_shape)
        if neighbours:
            for multiple in sorted({1, est.channel_multiple}):
                est.marginal_costs(model, build_inventory(model, input_shape), input_shape, multiple)
    est.table.write(path)
    return {**est.describe_table(), "table": str(path), "seconds": time.perf_counter() - start}
