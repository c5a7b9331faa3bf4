"""The compute device: where training, evaluation, importance and splitting scores run.

Models live on the CPU between those steps (surgery, cost estimates, archives, ONNX export all work on
the CPU). Each heavy step wraps its work in ``on_compute_device(model)``, which moves the model's
parameters in place to the device chosen with ``use_device`` and back afterwards, so a model handed to
or returned by any public function is on the device it came in on.

The choice is process-wide, like ``torch.set_default_device``; the CLI sets it for one command
(``--device``) and restores it after. Under torchrun, ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .errors import ConfigError

_current = torch.device("cpu")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> a torch device."""
    text = str(name).strip().lower()
    if text == "auto":
        return process_device()
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this torch sees no CUDA GPU: use --device cpu")
    if dev.index is None:
        return process_device()
    if dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def process_device() -> torch.device:
    """This process's default device: its current CUDA device when CUDA is available (``cuda:LOCAL_RANK``
    under torchrun, see :func:`energysplit.training.distributed.init_distributed`), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def compute_device() -> torch.device:
    return _current


@contextmanager
def use_device(name: str | torch.device):
    """Run the enclosed work's heavy steps on ``name`` (see :func:`resolve_device`); restore after."""
    global _current
    previous, _current = _current, resolve_device(name)
    try:
        yield _current
    finally:
        _current = previous


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def on_compute_device(model: nn.Module):
    """Move ``model`` to the compute device for the enclosed work and back to where it was after.

    Parameters are moved in place (their identity is kept), so hooks and references taken inside stay
    valid. Nested uses are free: a model already on the compute device is left where it is.
    """
    home, target = model_device(model), _current
    if home == target:
        yield model
        return
    model.to(target)
    try:
        yield model
    finally:
        model.to(home)


_in_channels_last: set[int] = set()  # ids of the models inside channels_last_on_cpu


@contextmanager
def channels_last_on_cpu(model: nn.Module, enabled: bool = True):
    """Convolution weights in channels-last memory format for the enclosed loop when it runs on the CPU,
    the default format again after (surgery and the splitting scores reshape tensors of that format).

    On the CPU, training is 1.5-2.1x faster in channels-last at one thread (MobileNetV1/V2, ResNet-20;
    ``benchmarks/bench_training_speed.py`` measures it side by side). A convolution with channels-last
    weights returns channels-last activations, so the inputs need no conversion. The results differ from
    the default format's in float rounding only (oneDNN's channels-last BatchNorm rounds a little more). Parameters are converted in place (identity kept), so an
    optimizer, momentum buffers and hooks taken on them stay valid. Nested uses are free (the outermost
    one converts back).
    """
    if (not enabled or id(model) in _in_channels_last or model_device(model).type != "cpu"
            or not any(p.dim() == 4 for p in model.parameters())):
        yield model
        return
    _in_channels_last.add(id(model))
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)
        _in_channels_last.discard(id(model))


@contextmanager
def full_float32():
    """No TF32 inside: CUDA convolutions and matrix products keep full float32 precision (cuDNN uses TF32
    for convolutions by default, about 1e-3 relative error). The exact splitting solver runs under it, being
    the oracle; training and the fast solver keep TF32's speed."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
