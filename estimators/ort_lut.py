"""A latency lookup table for ONNX Runtime, keyed by block configuration (Once-for-All / MetaPruning style).

A block is what ORT runs as one fused kernel: a conv (+ BatchNorm, folded) + activation, a linear
(+ activation), a residual add (+ activation), a pool, or a lone BatchNorm/activation. Each configuration
(op, channels, kernel, stride, padding, groups, input H/W, activation) is exported alone, timed in ORT
(fixed threads, sequential, ORT_ENABLE_ALL, I/O bound once so no copies are timed) and cached on disk
in JSON, per host, ORT version and thread count. The predicted latency of a model is the fixed
per-run overhead plus the sum of its blocks' entries minus that overhead.
"""
from __future__ import annotations

import io
import json
import os
import platform
import re
import time
import warnings
from pathlib import Path

from torch import nn

FORMAT = 1
COLD_FACTOR = 2  # cold weights: parallel copies holding COLD_FACTOR x L2 bytes of weights
MAX_COPIES = 16


def cache_dir() -> Path:
    """``$ENERGYSPLIT_CACHE`` or ~/.cache/energysplit."""
    env = os.environ.get("ENERGYSPLIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "energysplit"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
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

    slug = re.sub(r"[^A-Za-z0-9]+", "-", cpu_name()).strip("-").lower()[:48]
    return f"{slug}-ort{onnxruntime.__version__}-t{threads}"


def session(onnx_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def export_onnx(model, input_shapes) -> bytes:
    """ONNX bytes of ``model`` in eval mode (legacy TorchScript exporter: ``dynamo=False``, opset 17)."""
    import torch

    args = tuple(torch.randn((1, *s)) for s in input_shapes)
    f = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, f, dynamo=False, opset_version=17,
                              input_names=[f"x{i}" for i in range(len(args))])
    finally:
        model.train(was_training)
    return f.getvalue()


def time_session(sess, warmup: int = 10, repeats: int = 50, budget_s: float | None = None):
    """Per-run times in ms with inputs and outputs bound once (``run_with_iobinding``): no copies timed.
    With ``budget_s``, repeats stop early once that much time is spent (at least 10 runs)."""
    import numpy as np
    import onnxruntime as ort

    binding = sess.io_binding()
    rng = np.random.default_rng(0)
    for inp in sess.get_inputs():
        x = rng.standard_normal([d if isinstance(d, int) else 1 for d in inp.shape]).astype(np.float32)
        binding.bind_ortvalue_input(inp.name, ort.OrtValue.ortvalue_from_numpy(x))
    for out in sess.get_outputs():
        binding.bind_output(out.name)
    for _ in range(warmup):
        sess.run_with_iobinding(binding)
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        times.append((time.perf_counter() - t0) * 1e3)
        if budget_s and len(times) >= 10 and time.perf_counter() - start > budget_s:
            break
    return np.asarray(times)


# ---- blocks ------------------------------------------------------------------------------------------

def _consumers(specs) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for j, s in enumerate(specs):
        for i in s.inputs:
            out.setdefault(i, []).append(j)
    return out


def _fuse(specs, cons, i, op):
    """Index of the single consumer of spec ``i`` if it is an ``op`` fed only by ``i``, else None."""
    nxt = cons.get(i, [])
    if len(nxt) == 1 and specs[nxt[0]].op == op and specs[nxt[0]].inputs == (i,):
        return nxt[0]
    return None


def _fused_add(specs, cons, i, last):
    """The residual add that ORT fuses into conv ``i`` (chain ending at ``last``): a two-input add fed
    by ``last`` only through it, whose other input is computed before the conv."""
    nxt = cons.get(last, [])
    if specs[i].op != "conv" or len(nxt) != 1 or specs[nxt[0]].op != "add" or len(specs[nxt[0]].inputs) != 2:
        return None
    other = [j for j in specs[nxt[0]].inputs if j != last]
    if len(other) != 1:
        return None
    j = other[0]
    while j >= 0 and specs[j].op == "pass":  # identities vanish from the ONNX graph
        j = specs[j].inputs[0] if specs[j].inputs else -1
    return nxt[0] if j < i else None


def block_keys(specs, l2: int | None = None) -> list:
    """Per spec: a block key (dict), ``"fused"`` (part of the previous block), ``"free"`` (a reshape or
    identity, 0 ms) or None (an op the table cannot cost).

    Cache policy (with ``l2``, the L2 size in bytes): when the model's fp32 weights exceed the L2 cache,
    a layer's weights are evicted between two inferences, so conv/linear blocks holding at least
    ``COLD_FACTOR * l2 / MAX_COPIES`` bytes of weights get ``"cold": True`` (measured with cold weights).
    """
    from estimators.flops import _params

    cons = _consumers(specs)
    model_bytes = 4 * sum(_params(s) for s in specs)
    cold_min = COLD_FACTOR * l2 / MAX_COPIES if l2 and model_bytes > l2 else None
    keys: list = [None] * len(specs)
    for i, s in enumerate(specs):
        if keys[i] == "fused":
            continue
        if s.op == "pass":
            keys[i] = "free"
            continue
        shape = list(s.in_shape[1:])
        if s.op in ("conv", "linear"):
            key = {"op": s.op, "cin": s.cin, "cout": s.cout, "in": shape}
            if s.op == "conv":
                key.update(k=list(s.kernel), s=list(s.stride), p=list(s.padding), g=s.groups)
            last, bn = i, _fuse(specs, cons, i, "bn")
            if bn is not None:
                keys[bn], last = "fused", bn
            key["bn"] = bn is not None
            if cold_min is not None and 4 * _params(s) >= cold_min:
                key["cold"] = True
            add = _fused_add(specs, cons, i, last)
            if add is not None:  # ORT's NCHWc conv adds the residual ("Sum") in the same kernel
                keys[add], last, key["sum"], key["out"] = "fused", add, True, list(s.out_shape[1:])
        elif s.op in ("add", "bn", "act"):
            key, last = {"op": s.op, "in": shape, "n": len(s.inputs)}, i
            if s.op == "act":
                key["act"] = s.act
        elif s.op == "pool":
            key, last = {"op": "pool", "type": s.type, "in": shape, "out": list(s.out_shape[1:]),
                         "k": list(s.kernel), "s": list(s.stride), "p": list(s.padding)}, i
        else:
            continue  # concat, other: unsupported
        if s.op != "act":
            act = _fuse(specs, cons, last, "act")
            key["act"] = specs[act].act if act is not None else None
            if act is not None:
                keys[act] = "fused"
        keys[i] = key
    return keys


def key_str(key: dict) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def block_module(key: dict):
    """(module, input shapes) that runs one block alone."""
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish, "gelu": nn.GELU,
            "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid, "leaky_relu": nn.LeakyReLU,
            "elu": nn.ELU, "softplus": nn.Softplus, "hardtanh": nn.Hardtanh}

    def act():
        return acts[key["act"]]() if key.get("act") else nn.Identity()

    op, shape = key["op"], tuple(key["in"])
    if op == "conv":
        conv = (nn.Conv2d if len(key["k"]) == 2 else nn.Conv1d)(
            key["cin"], key["cout"], key["k"], key["s"], key["p"], groups=key["g"], bias=not key["bn"])
        bn = (nn.BatchNorm2d if len(key["k"]) == 2 else nn.BatchNorm1d)(key["cout"]) if key["bn"] else nn.Identity()
        if key.get("sum"):
            return _ConvSum(conv, bn, act()), [shape, tuple(key["out"])]
        return nn.Sequential(conv, bn, act()), [shape]
    if op == "linear":
        return nn.Sequential(nn.Linear(key["cin"], key["cout"]), act()), [shape]
    if op == "bn":
        return nn.Sequential(nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0]), act()), [shape]
    if op == "act":
        return act(), [shape]
    if op == "add":
        return _Add(act()), [shape] * key["n"]
    if op == "pool":
        out = tuple(key["out"][1:])
        if key["k"]:
            kind = nn.MaxPool2d if "max" in key["type"].lower() else nn.AvgPool2d
            floor = tuple((h + 2 * p - k) // s + 1 for h, p, k, s in zip(shape[1:], key["p"], key["k"], key["s"]))
            return nn.Sequential(kind(key["k"], key["s"], key["p"], ceil_mode=floor != out), act()), [shape]
        kind = nn.AdaptiveMaxPool2d if "max" in key["type"].lower() else nn.AdaptiveAvgPool2d
        return nn.Sequential(kind(out), act()), [shape]
    raise ValueError(f"no block for {key}")


class _Add(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, *xs):
        return self.act(sum(xs[1:], xs[0]))


class _ConvSum(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x, r):
        return self.act(self.bn(self.conv(x)) + r)


class _Copies(nn.Module):
    """Independent copies of a block reading the same inputs."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, *xs):
        return tuple(b(*xs) for b in self.blocks)


class LatencyLUT:
    """Block latencies (ms, median) of this host, loaded from and saved to ``path`` (JSON).

    A table measured on another host, ORT version or thread count is used read-only: a missing entry
    is then an error rather than a measurement on the wrong machine.
    """

    def __init__(self, path: str | Path | None = None, threads: int = 1, warmup: int = 10, repeats: int = 100,
                 budget_s: float = 0.05):
        self.threads, self.warmup, self.repeats, self.budget_s = threads, warmup, repeats, budget_s
        self.path = Path(path) if path else cache_dir() / "ort-latency" / f"{host_id(threads)}.json"
        self.meta = {"format": FORMAT, "host": cpu_name(), "machine": platform.machine(), "l2_bytes": l2_bytes(),
                     "threads": threads,
                     "provider": "CPUExecutionProvider", "versions": versions()}
        self.entries: dict[str, float] = {}
        self.overhead_ms: float | None = None
        self.foreign = False
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"{self.path}: not an energysplit latency table (format {FORMAT})")
            self.entries = dict(data.get("entries", {}))
            self.overhead_ms = data.get("overhead_ms")
            mine = (self.meta["host"], self.meta["threads"], self.meta["versions"]["onnxruntime"])
            theirs = (data.get("host"), data.get("threads"), data.get("versions", {}).get("onnxruntime"))
            self.foreign = mine != theirs
            if self.foreign:
                self.meta = {k: v for k, v in data.items() if k not in ("entries", "overhead_ms")}
        self.dirty = False

    def _measure(self, module, shapes) -> float:
        """Median ms of one run of ``module``, including the fixed per-run overhead."""
        import numpy as np

        sess = session(export_onnx(module, shapes), self.threads)
        return float(np.median(time_session(sess, self.warmup, self.repeats, self.budget_s)))

    def _measure_block(self, key: dict) -> float:
        """ms of one block without the fixed overhead. Blocks with weights run as ``n`` parallel copies
        on the same input whose weights together exceed the L2 cache, so that weights come from memory
        as they do inside a whole model while the input stays hot; the time is divided by ``n``."""
        module, shapes = block_module(key)
        weight_bytes = 4 * sum(p.numel() for p in module.parameters())
        n = -(-COLD_FACTOR * l2_bytes() // weight_bytes) if key.get("cold") else 1
        if n > 1:
            module = _Copies([module] + [block_module(key)[0] for _ in range(n - 1)])
        return max(self._measure(module, shapes) - self.overhead(), 0.0) / n

    def overhead(self) -> float:
        """Fixed per-run cost (ms): a one-element ReLU graph."""
        if self.overhead_ms is None:
            self._check_local("the fixed overhead")
            self.overhead_ms = self._measure(nn.ReLU(), [(1,)])
            self.dirty = True
        return self.overhead_ms

    def _check_local(self, what: str) -> None:
        if self.foreign:
            raise ValueError(f"latency table {self.path} was measured on {self.meta.get('host')} "
                             f"(threads {self.meta.get('threads')}) and lacks {what}; calibrate on that device")

    def lookup(self, key: dict) -> float:
        """Latency of a block in ms without the fixed per-run overhead; measured and cached when missing."""
        ks = key_str(key)
        if ks not in self.entries:
            self._check_local(f"block {ks}")
            self.entries[ks] = self._measure_block(key)
            self.dirty = True
        return self.entries[ks]

    def save(self) -> Path | None:
        if not self.dirty:
            return None
        from energysplit.io import atomic_write_json

        data = {**self.meta, "overhead_ms": self.overhead_ms, "entries": dict(sorted(self.entries.items()))}
        if self.path.exists():  # merge entries another process added meanwhile
            try:
                old = json.loads(self.path.read_text())
                data["entries"] = {**old.get("entries", {}), **data["entries"]}
            except (OSError, ValueError):
                pass
        atomic_write_json(self.path, data)
        self.dirty = False
        return self.path
