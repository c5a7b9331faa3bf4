"""The input model of ``energysplit compress``: read it from a file (archive, state dict + ``--arch``, or an
opt-in pickled module) or build the default architecture, and check that the whole job can handle it."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import EnergySplitError


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:160]


def _torch_load(path: Path, weights_only: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def load_input_model(config, data) -> tuple[nn.Module, dict]:
    """(model, arch spec) from ``config.model``: an archive, a state dict with ``config.arch``, or (only with
    ``config.trust_pickle``) a pickled module (``torch.load(weights_only=False)`` runs code from the file)."""
    from ..graph.archive import MAGIC, build_model, load_model

    path = Path(config.model)
    if not path.is_file():
        raise EnergySplitError(f"model file {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        obj = _torch_load(path, weights_only=True)
    except Exception as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        pickled = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # a torch zip file, or a bare pickle
        if not (pickled and str(exc).startswith("Weights only load failed")):
            raise EnergySplitError(f"cannot read model file {path}: not a PyTorch file, or truncated "
                                   f"({type(exc).__name__}: {_first_line(exc)})") from None
        if not config.trust_pickle:
            raise EnergySplitError(f"{path} is a pickled object, not a state dict or energysplit archive; "
                                   "loading it runs code from the file: pass --trust-pickle if you trust it") from None
        try:
            obj = _torch_load(path, weights_only=False)
        except Exception as exc2:
            raise EnergySplitError(f"cannot read model file {path}: {_first_line(exc2)}") from None
        if not isinstance(obj, nn.Module):
            raise EnergySplitError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module") from None
        cls = type(obj)
        return obj, {"name": f"{cls.__module__}:{cls.__qualname__}", "kwargs": {}}
    if isinstance(obj, dict) and obj.get("format") == MAGIC:
        arch = str(obj.get("arch", {}).get("name", ""))
        if ":" in arch and not arch.startswith("torchvision:") and not config.trust_pickle:
            raise EnergySplitError(f"{path} rebuilds its model by importing {arch!r}; pass --trust-pickle if you "
                                   "trust it")
        model, record = load_model(path)
        if tuple(record["input_shape"]) != tuple(data.input_shape):
            raise EnergySplitError(f"{path} was saved for inputs of shape {tuple(record['input_shape'])} but "
                                   f"{data.name} has {tuple(data.input_shape)}; pass the data it was trained on (--data)")
        return model, record["arch"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EnergySplitError(f"{path} is neither a state dict (names -> tensors) nor an energysplit archive; for a "
                               "training checkpoint, save model.state_dict() alone")
    if not config.arch:
        raise EnergySplitError(f"{path} is a state dict: name its architecture with --arch (e.g. --arch mobilenet_v2)")
    arch = arch_spec(config, data.in_channels, data.num_classes)
    model = build_model(arch)
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as exc:
        lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0])[:160]
        raise EnergySplitError(f"the state dict in {path} does not match --arch {config.arch} "
                               f"(width {config.width or 'default'}): {detail}") from None
    return model, arch


def arch_spec(config, in_channels: int, num_classes: int) -> dict:
    """``{"name", "kwargs"}`` of ``config.arch`` (zoo or ``torchvision:<name>``) sized for the data."""
    if config.arch.startswith("torchvision:"):
        return {"name": config.arch, "kwargs": {"num_classes": num_classes}}
    kwargs = {"in_channels": in_channels, "num_classes": num_classes}
    if config.width is not None:
        kwargs["width"] = config.width
    if config.act is not None:
        kwargs["act"] = config.act
    return {"name": config.arch, "kwargs": kwargs}


def check_model(model: nn.Module, arch: dict, data) -> None:
    """The model traces, has prunable layers, gives one logit per class, and can be saved and rebuilt."""
    from ..graph.archive import build_model, resize_
    from ..graph.trace import build_inventory

    inventory = build_inventory(model, data.input_shape)  # UnsupportedModelError names the layer
    if not inventory.prunable():
        raise EnergySplitError(f"{arch['name']} has no layer whose channels can be removed or split")
    with torch.no_grad():
        was = model.training
        logits = model.eval()(torch.zeros(2, *data.input_shape))
        model.train(was)
    if tuple(logits.shape) != (2, data.num_classes):
        raise EnergySplitError(f"the model outputs shape {tuple(logits.shape[1:])} per image but {data.name} has "
                               f"{data.num_classes} classes")
    try:
        rebuilt = build_model(arch)
        resize_(rebuilt, inventory.widths(), data.input_shape)
        ok = {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    except Exception as exc:
        raise EnergySplitError(f"the result could not be archived: {arch['name']} cannot be rebuilt from its name "
                               f"({_first_line(exc)}); save a state dict and pass --arch") from None
    if not ok:
        raise EnergySplitError(f"the result could not be archived: {arch['name']}() built without arguments "
                               "differs from the given model; save a state dict and pass --arch")


