"""A latency lookup table for ONNX Runtime, keyed by block configuration (Once-for-All / MetaPruning style).

Each block configuration (:mod:`energysplit_estimators.ort_blocks`) is exported alone and timed in ORT (fixed
threads, sequential, ORT_ENABLE_ALL, inputs and outputs bound once so no copies are timed); one
profiled run splits its time into the block's own kernels and the NCHWc layout reorders ORT put around
it. Entries ``{"ms", "ri", "ro"}`` (ms) are cached on disk in JSON per host, ORT version and thread
count. Because entries are measured on demand, over days and under whatever else the machine runs, each
new entry is scaled by ``reference_ms / reference now`` (a fixed reference conv timed when the table
started and again, at most every ``scale_ttl_s``, before an entry), so entries measured on a busier
machine stay comparable. Predicted model latency = fixed per-run overhead + the blocks' kernels + the
reorders at layout boundaries (:func:`energysplit_estimators.ort_blocks.layout_costs`).

A table is a file (``energysplit lut FILE`` writes this host's): passed as ``--lut FILE`` it prices a run
elsewhere the same way (read-only there, see :class:`LatencyLUT`); :meth:`LatencyLUT.describe` names it
with a hash of its prices, for the report. :func:`read_table` checks a file given by the user.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from pathlib import Path

from torch import nn

from energysplit.errors import ConfigError, InputFileError

from .ort_blocks import COLD_FACTOR, BlockCopies, block_module, key_str, session, time_session, to_onnx_bytes

FORMAT = 2


def cache_dir() -> Path:
    """``$ENERGYSPLIT_CACHE`` or ~/.cache/energysplit."""
    env = os.environ.get("ENERGYSPLIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "energysplit"


def cpu_name() -> str:
    """This CPU's model name (/proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_slug(limit: int = 48) -> str:
    """:func:`cpu_name` in lower case with runs of other characters as ``-``, at most ``limit`` long
    (for file names: latency tables, benchmark results)."""
    return re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-")[:limit]


def ort_versions() -> dict:
    """Versions of ONNX Runtime, onnx, torch and Python (they change measured latencies)."""
    import onnx
    import onnxruntime
    import torch

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def l2_bytes() -> int:
    """Size of this CPU's L2 cache (default 2 MiB when unknown)."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip().upper()
        return int(text[:-1]) * {"K": 1024, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text)
    except (OSError, ValueError, KeyError):
        return 2 << 20


def host_id(threads: int) -> str:
    """File-name-safe id of this host, ORT version and thread count."""
    import onnxruntime

    return f"{cpu_slug(48)}-ort{onnxruntime.__version__}-t{threads}"


def _kernel_times(onnx_bytes: bytes, threads: int, runs: int = 30) -> dict[str, float]:
    """Median kernel time (us) per node over ``runs`` profiled runs, summed into ReorderInput,
    ReorderOutput and other nodes. ORT reports whole microseconds (truncated), hence the +0.5."""
    import tempfile

    import numpy as np
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling, so.profile_file_prefix, so.log_severity_level = True, os.path.join(tmp, "p"), 3
        sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        time_session(sess, 5, runs)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[tuple, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node.setdefault((e["name"], e["args"].get("op_name", "")), []).append(e["dur"])
    out = {"ReorderInput": 0.0, "ReorderOutput": 0.0, "other": 0.0}
    count = dict.fromkeys(out, 0)
    for (_, op), durs in per_node.items():
        cat = op if op in out else "other"
        out[cat] += float(np.median(durs)) + 0.5
        count[cat] += 1
    return {**out, **{f"n_{k}": v for k, v in count.items()}}


def read_table(path: str | Path) -> dict:
    """The JSON of a latency table file the user gave (``--lut``), checked: a missing, unreadable or
    malformed file, or one of another format, is a one-line ConfigError naming the problem and the fix."""
    path, fix = Path(path), "write one with `energysplit lut FILE` on the host whose prices you want"
    if not path.is_file():
        raise ConfigError(f"latency table {path}: no such file; {fix}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"latency table {path} is not readable JSON ({type(exc).__name__}); {fix}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict) or "format" not in data:
        raise ConfigError(f"{path} is not an energysplit latency table (no 'format' and 'entries'); {fix}")
    if data["format"] != FORMAT:
        raise ConfigError(f"latency table {path} has format {data['format']!r}, this energysplit reads format "
                          f"{FORMAT}; measure it again with `energysplit lut FILE` on {data.get('host', 'its host')}")
    bad = [k for k, v in data["entries"].items() if not (isinstance(v, dict) and {"ms", "ri", "ro"} <= set(v))]
    if bad or not isinstance(data.get("overhead_ms"), (int, float)):
        what = f"entry {bad[0]}" if bad else "overhead_ms"
        raise ConfigError(f"latency table {path}: {what} is missing or malformed; {fix}")
    return data


def _valid_entries(data: dict) -> dict[str, dict]:
    """The ``{"ms", "ri", "ro"}`` entries of a table of this format (an older cache's are dropped)."""
    if data.get("format") != FORMAT:
        return {}
    return {k: v for k, v in data.get("entries", {}).items() if isinstance(v, dict) and {"ms", "ri", "ro"} <= set(v)}


class _Reference(nn.Module):
    """The fixed workload that ties entries measured at different times (and loads) together."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x).relu()


REFERENCE_SHAPES = [(32, 14, 14)]


class LatencyLUT:
    """Block latencies (ms, median) of this host, loaded from and saved to ``path`` (JSON).

    A table measured on another host, ORT version or thread count is used read-only: a missing entry
    is then an error rather than a measurement on the wrong machine.
    """

    scale_ttl_s = 2.0  # how long one timing of the reference workload stands for the machine's load

    def __init__(self, path: str | Path | None = None, threads: int = 1, warmup: int = 10, repeats: int = 100,
                 budget_s: float = 0.05):
        self.threads, self.warmup, self.repeats, self.budget_s = threads, warmup, repeats, budget_s
        self.path = Path(path) if path else cache_dir() / "ort-latency" / f"{host_id(threads)}.json"
        self.meta = {"format": FORMAT, "host": cpu_name(), "machine": platform.machine(), "l2_bytes": l2_bytes(),
                     "threads": threads, "provider": "CPUExecutionProvider", "versions": ort_versions()}
        self.entries: dict[str, dict] = {}
        self.overhead_ms: float | None = None
        self.reference_ms: float | None = None
        self.foreign = False
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT and path:
                raise InputFileError(f"{self.path}: not an energysplit latency table of format {FORMAT}; "
                                     "calibrate again")
            if data.get("format") != FORMAT:  # an old cache of this host: measure again
                data = {**self.meta, "entries": {}}
            self.entries = _valid_entries(data)
            self.overhead_ms = data.get("overhead_ms")
            self.reference_ms = data.get("reference_ms")
            mine = (self.meta["host"], self.meta["threads"], self.meta["versions"]["onnxruntime"])
            theirs = (data.get("host"), data.get("threads"), data.get("versions", {}).get("onnxruntime"))
            self.foreign = mine != theirs
            if self.foreign:
                self.meta = {k: v for k, v in data.items() if k not in ("entries", "overhead_ms", "reference_ms")}
        self.dirty = False
        self._scale = (-float("inf"), 1.0)  # (monotonic time, load scale) of the last reference timing

    def _measure(self, module, shapes, profile: bool = False):
        """Median ms of one run of ``module`` including the fixed per-run overhead; with ``profile`` also
        the kernel time of its ReorderInput, ReorderOutput and other nodes (profiled runs, us)."""
        import numpy as np

        onnx_bytes = to_onnx_bytes(module, shapes)
        wall = float(np.median(time_session(session(onnx_bytes, self.threads), self.warmup, self.repeats,
                                            self.budget_s)))
        return (wall, _kernel_times(onnx_bytes, self.threads)) if profile else wall

    def _measure_block(self, key: dict) -> dict:
        """``{"ms", "ri", "ro"}`` of one block without the fixed overhead: the wall time split in
        proportion to the profiled kernel times. Blocks with weights run as ``n`` parallel copies on the
        same input whose weights together exceed the L2 cache (weights come from memory, as inside a
        whole model, while the input stays hot); times are divided by ``n``."""
        module, shapes = block_module(key)
        weight_bytes = 4 * sum(p.numel() for p in module.parameters())
        n = -(-COLD_FACTOR * l2_bytes() // weight_bytes) if key.get("cold") else 1
        if n > 1:
            module = BlockCopies([module] + [block_module(key)[0] for _ in range(n - 1)])
        scale = self._load_scale()
        wall, k = self._measure(module, shapes, profile=True)
        net = max(wall - self.overhead(), 0.0)
        # profiling adds a roughly constant time to every node: remove it so the kernels add up to the
        # unprofiled wall time, then take the reorders' share (us -> ms)
        nodes = k["n_ReorderInput"] + k["n_ReorderOutput"] + k["n_other"]
        bias = max((k["ReorderInput"] + k["ReorderOutput"] + k["other"] - 1e3 * net) / max(nodes, 1), 0.0)
        ri = max(k["ReorderInput"] - bias * k["n_ReorderInput"], 0.0) * 1e-3
        ro = max(k["ReorderOutput"] - bias * k["n_ReorderOutput"], 0.0) * 1e-3
        ri, ro = min(ri, net), min(ro, max(net - ri, 0.0))
        return {"ms": scale * (net - ri - ro) / n, "ri": scale * ri / n, "ro": scale * ro / n}

    def _load_scale(self) -> float:
        """``reference_ms`` (timed when the table started) / the reference timed now, within [0.5, 2]:
        an entry measured while the machine is busier is scaled back to the table's conditions. Entries
        measured within ``scale_ttl_s`` of the last reference timing share its scale."""
        taken_at, scale = self._scale
        if time.monotonic() - taken_at < self.scale_ttl_s:
            return scale
        now = self._measure(_Reference(), REFERENCE_SHAPES)
        if self.reference_ms is None:
            self.reference_ms, self.dirty = now, True
        scale = min(2.0, max(0.5, self.reference_ms / now)) if now > 0 else 1.0
        self._scale = (time.monotonic(), scale)
        return scale

    def overhead(self) -> float:
        """Fixed per-run cost (ms): a one-element ReLU graph."""
        if self.overhead_ms is None:
            self._check_local("the fixed overhead")
            self.overhead_ms = self._measure(nn.ReLU(), [(1,)])
            self.dirty = True
        return self.overhead_ms

    def _check_local(self, what: str) -> None:
        if self.foreign:
            raise InputFileError(f"latency table {self.path} was measured on {self.meta.get('host')} "
                             f"(threads {self.meta.get('threads')}) and lacks {what}; calibrate on that device")

    def lookup(self, key: dict) -> dict:
        """``{"ms", "ri", "ro"}`` of a block (ms, no fixed overhead); measured and cached when missing."""
        ks = key_str(key)
        if ks not in self.entries:
            self._check_local(f"block {ks}")
            self.entries[ks] = self._measure_block(key)
            self.dirty = True
        return self.entries[ks]

    def digest(self) -> str:
        """SHA-256 of what prices a model (the overhead and the entries, canonical JSON): equal digests,
        equal costs."""
        prices = {"overhead_ms": self.overhead_ms, "entries": dict(sorted(self.entries.items()))}
        return hashlib.sha256(json.dumps(prices, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def describe(self) -> dict:
        """Which table priced a run: its file (or this host's cache), host, threads, ORT, entries, digest."""
        cached = self.path.parent == cache_dir() / "ort-latency"
        return {"table": str(self.path), "source": f"measured on {self.meta.get('host')}" if cached else "file",
                "host": self.meta.get("host"), "threads": self.meta.get("threads"),
                "onnxruntime": self.meta.get("versions", {}).get("onnxruntime"), "entries": len(self.entries),
                "foreign": self.foreign, "sha256": self.digest()}

    def write(self, path: str | Path) -> Path:
        """Write the table (what :meth:`save` holds) to ``path``, e.g. to commit it beside results."""
        from energysplit._io import atomic_write_json

        self.overhead()
        self.save()
        return atomic_write_json(Path(path), {**self.meta, "overhead_ms": self.overhead_ms,
                                              "reference_ms": self.reference_ms,
                                              "entries": dict(sorted(self.entries.items()))})

    def save(self) -> Path | None:
        if not self.dirty:
            return None
        from energysplit._io import atomic_write_json

        data = {**self.meta, "overhead_ms": self.overhead_ms, "reference_ms": self.reference_ms,
                "entries": dict(sorted(self.entries.items()))}
        if self.path.exists():  # merge entries another process added meanwhile
            try:
                old = json.loads(self.path.read_text())
                data["entries"] = {**_valid_entries(old), **data["entries"]}
            except (OSError, ValueError):
                pass
        atomic_write_json(self.path, data)
        self.dirty = False
        return self.path
