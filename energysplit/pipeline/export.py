"""ONNX export of a (compressed) model, checked against PyTorch in ONNX Runtime."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import EnergySplitError
from .._io import atomic_write


@dataclass
class ExportCheck:
    path: str
    max_abs_diff: float
    atol: float
    opset: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def export_onnx(model: nn.Module, path: str | Path, input_shape, opset: int = 17, atol: float = 1e-4,
                samples: int = 4, seed: int = 0) -> ExportCheck:
    """Export with the TorchScript exporter (``dynamo=False``; dynamic batch axis), then run the file in
    ONNX Runtime on ``samples`` random inputs and compare with PyTorch. Raises if they differ by more
    than ``atol``; nothing is written in that case."""
    import onnxruntime as ort

    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_shape)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            except Exception as exc:  # the exporter raises many types
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise EnergySplitError(f"ONNX export of {type(model).__name__} failed: {first}") from exc
        data = buffer.getvalue()
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        x = torch.randn(samples, *input_shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
    finally:
        model.train(was_training)
    diff = float(abs(expected - got).max())
    if diff > atol:
        raise EnergySplitError(f"ONNX export does not match PyTorch (max abs diff {diff:.3g} > {atol:g}); "
                               "not writing it")
    atomic_write(path, lambda f: f.write(data))
    return ExportCheck(str(path), diff, atol, opset)
