"""ONNX Runtime blocks: which captured layers run as one kernel, a module that runs one alone, and
running a module (a block or a whole model) in ORT: export, session, timing.

A block is what ORT's CPU provider runs as one fused kernel after ORT_ENABLE_ALL: a conv (+ BatchNorm,
folded) (+ a residual add, NCHWc "Sum") + activation, a linear (+ activation), a residual add
(+ activation), a pool, or a lone BatchNorm/activation. Blocks are keyed by configuration (op,
channels, kernel, stride, padding, groups, input H/W, activation), as the latency tables of
Once-for-All and MetaPruning are.
"""
from __future__ import annotations

import io
import json
import time
import warnings

from torch import nn

from energysplit.graph.ops import activation_module

COLD_FACTOR = 2  # cold weights: parallel copies holding COLD_FACTOR x L2 bytes of weights
MAX_COPIES = 128


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


def block_keys(specs, l2: int | None = None) -> tuple[list, list[int]]:
    """Per spec: a block key (dict), ``"fused"`` (part of an earlier block), ``"free"`` (a reshape or
    identity, 0 ms) or None (an op the table cannot cost); and per spec the index of the block it
    belongs to (a free op belongs to its input's block; -1: the model input).

    Cache policy (with ``l2``, the L2 size in bytes): when the model's fp32 weights exceed the L2 cache,
    a layer's weights are evicted between two inferences, so conv/linear blocks holding at least
    ``COLD_FACTOR * l2 / MAX_COPIES`` bytes of weights get ``"cold": True`` (measured with cold weights).
    """
    from .flops import layer_params

    cons = _consumers(specs)
    model_bytes = 4 * sum(layer_params(s) for s in specs)
    cold_min = COLD_FACTOR * l2 / MAX_COPIES if l2 and model_bytes > l2 else None
    keys: list = [None] * len(specs)
    heads = list(range(len(specs)))
    for i, s in enumerate(specs):
        if keys[i] == "fused":
            continue
        if s.op == "pass":
            keys[i] = "free"
            heads[i] = heads[s.inputs[0]] if s.inputs and s.inputs[0] >= 0 else -1
            continue
        shape = list(s.in_shape[1:])
        if s.op in ("conv", "linear"):
            key = {"op": s.op, "cin": s.cin, "cout": s.cout, "in": shape}
            if s.op == "conv":
                key.update(k=list(s.kernel), s=list(s.stride), p=list(s.padding), g=s.groups)
            last, bn = i, _fuse(specs, cons, i, "bn")
            if bn is not None:
                keys[bn], heads[bn], last = "fused", i, bn
            key["bn"] = bn is not None
            if cold_min is not None and 4 * layer_params(s) >= cold_min:
                key["cold"] = True
            add = _fused_add(specs, cons, i, last)
            if add is not None:  # ORT's NCHWc conv adds the residual ("Sum") in the same kernel
                keys[add], heads[add], last, key["sum"], key["out"] = "fused", i, add, True, list(s.out_shape[1:])
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
                keys[act], heads[act] = "fused", i
        keys[i] = key
    return keys, heads


def layout_costs(specs, keys, heads, entries: dict[int, dict]) -> list[float | None]:
    """Per spec: its block's cost (ms) in the model, else 0 (fused, free) or None (not costed).

    ``entries[h]`` of block ``h``: ``ms`` (its kernels without layout reorders), ``ri`` / ``ro`` (the
    ReorderInput / ReorderOutput that ORT's NCHWc layout put around it when run alone). Inside a model
    a reorder happens only at a layout boundary: ``ri`` is paid when a producer of the block's inputs
    does not output NCHWc (or is the model input), ``ro`` when a consumer does not read NCHWc or the
    block's output leaves the model.
    """
    preds: dict[int, set[int]] = {h: set() for h in entries}
    succs: dict[int, set[int]] = {h: set() for h in entries}
    for j, s in enumerate(specs):
        for i in s.inputs:
            hi, hj = (heads[i] if i >= 0 else -1), heads[j]
            if hi != hj:
                preds.setdefault(hj, set()).add(hi)
                succs.setdefault(hi, set()).add(hj)

    def out_c(h):
        return h in entries and entries[h]["ro"] > 0

    def in_c(h):
        return h in entries and entries[h]["ri"] > 0

    costs: list[float | None] = []
    for j, key in enumerate(keys):
        if isinstance(key, dict):
            e = entries[j]
            ri = e["ri"] if any(not out_c(p) for p in preds[j]) else 0.0
            ro = e["ro"] if not succs[j] or any(not in_c(c) for c in succs[j]) else 0.0
            costs.append(e["ms"] + ri + ro)
        else:
            costs.append(None if key is None else 0.0)
    return costs


def key_str(key: dict) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def block_module(key: dict):
    """(module, input shapes) that runs one block alone."""
    def act():  # the activation table of the tracer (energysplit.graph.ops): one name, one module
        return activation_module(key["act"]) if key.get("act") else nn.Identity()

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
        return nn.Sequential(kind(out if len(out) == len(shape) - 1 else 1), act()), [shape]  # mean([2, 3]): [C]
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


class BlockCopies(nn.Module):
    """Independent copies of a block reading the same inputs."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, *xs):
        return tuple(b(*xs) for b in self.blocks)


def session(onnx_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def to_onnx_bytes(model, input_shapes) -> bytes:
    """ONNX bytes of ``model`` (a block, or a whole model to time) in eval mode (legacy TorchScript
    exporter: ``dynamo=False``, opset 17); not :func:`energysplit.pipeline.export.export_onnx`, which writes a file."""
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
