"""The input of a command, resolved in one place: the data (:func:`load_data`), an input shape
(:func:`parse_shape`), a model named by the user (:func:`resolve_model`: an archive or a model name, for
``inspect`` and ``estimate``) and the input model of ``energysplit compress`` (:func:`load_input_model`:
archive, state dict + ``--arch``, or an opt-in pickled module), checked so that the whole job can handle it."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, InputFileError, UnsupportedModelError, first_line

# the input shape (without the batch dim) of a model built from its name: zoo models are sized for
# Fashion-MNIST, torchvision and package.module:factory models for ImageNet
ZOO_SHAPE, OTHER_SHAPE = (1, 28, 28), (3, 224, 224)


def load_data(name: str, data_dir: str | None = None, subset: int | None = None):
    """The dataset ``name`` (:func:`energysplit.training.data.load_dataset`); with ``subset``, only the first
    ``subset`` training images and a tenth as many (at least 500) validation images."""
    from ..training.data import load_dataset

    data = load_dataset(name, data_dir=data_dir)
    return data.subset(train=subset, val=max(500, subset // 10)) if subset else data


def parse_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``: an input shape without the batch dim, C,H,W of positive ints."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"{flag} must be comma-separated ints like 1,28,28, got {text!r}") from exc
    if len(shape) < 2 or min(shape) < 1:
        raise ConfigError(f"{flag} must be C,H,W of positive ints, got {text!r}")
    return shape


def resolve_model(name: str, input_shape: tuple[int, ...] | None = None,
                  kwargs: dict | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    """(model, input shape) that a command names: a saved archive (its own weights and input shape) or a zoo,
    ``torchvision:<name>`` or ``package.module:factory`` name built with random weights from ``kwargs``
    (a zoo model takes ``in_channels`` from the input shape: by default :data:`ZOO_SHAPE`, else
    :data:`OTHER_SHAPE`)."""
    from ..graph.archive import load_model

    if Path(name).is_file():
        model, record = load_model(name)
        return model, tuple(input_shape or record["input_shape"])
    zoo = ":" not in name
    shape = tuple(input_shape or (ZOO_SHAPE if zoo else OTHER_SHAPE))
    kwargs = {**({"in_channels": shape[0]} if zoo else {}), **(kwargs or {})}
    return build_arch({"name": name, "kwargs": kwargs}).eval(), shape


def build_arch(arch: dict) -> nn.Module:
    """:func:`~energysplit.graph.archive.build_model`, with arguments the constructor does not take as a
    :class:`ConfigError`."""
    from ..graph.archive import build_model

    try:
        return build_model(arch)
    except TypeError as exc:
        raise ConfigError(f"cannot build {arch['name']} with {arch['kwargs']}: {first_line(exc)}; check --arch "
                          "and --arch-kwargs") from exc


def _torch_load(path: Path, weights_only: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def load_input_model(config, data) -> tuple[nn.Module, dict]:
    """(model, arch spec) from ``config.model``: an archive, a state dict with ``config.arch``, or (only with
    ``config.trust_pickle``) a pickled module (``torch.load(weights_only=False)`` runs code from the file)."""
    from ..graph.archive import MAGIC, load_model

    path = Path(config.model)
    if not path.is_file():
        raise InputFileError(f"model file {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        obj = _torch_load(path, weights_only=True)
    except Exception as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        pickled = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # a torch zip file, or a bare pickle
        if not (pickled and str(exc).startswith("Weights only load failed")):
            raise InputFileError(f"cannot read model file {path}: not a PyTorch file, or truncated "
                                 f"({type(exc).__name__}: {first_line(exc)})") from exc
        if not config.trust_pickle:
            raise InputFileError(f"{path} is a pickled object, not a state dict or energysplit archive; "
                                 "loading it runs code from the file: pass --trust-pickle if you trust it") from exc
        try:
            obj = _torch_load(path, weights_only=False)
        except Exception as exc2:  # unpickling runs the file's code: any error means an unusable file
            raise InputFileError(f"cannot read model file {path}: {first_line(exc2)}") from exc2
        if not isinstance(obj, nn.Module):
            raise InputFileError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
        cls = type(obj)
        return obj, {"name": f"{cls.__module__}:{cls.__qualname__}", "kwargs": {}}
    if isinstance(obj, dict) and obj.get("format") == MAGIC:
        arch = str(obj.get("arch", {}).get("name", ""))
        if ":" in arch and not arch.startswith("torchvision:") and not config.trust_pickle:
            raise InputFileError(f"{path} rebuilds its model by importing {arch!r}; pass --trust-pickle if you "
                                 "trust it")
        model, record = load_model(path)
        if tuple(record["input_shape"]) != tuple(data.input_shape):
            raise InputFileError(f"{path} was saved for inputs of shape {tuple(record['input_shape'])} but "
                                 f"{data.name} has {tuple(data.input_shape)}; pass the data it was trained on (--data)")
        return model, record["arch"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(f"{path} is neither a state dict (names -> tensors) nor an energysplit archive; for a "
                             "training checkpoint, save model.state_dict() alone")
    if not config.arch:
        raise ConfigError(f"{path} is a state dict: name its architecture with --arch (e.g. --arch mobilenet_v2)")
    arch = arch_spec(config, data.in_channels, data.num_classes)
    model = build_arch(arch)
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as exc:
        lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0])[:160]
        raise InputFileError(f"the state dict in {path} does not match --arch {config.arch} "
                             f"(width {config.width or 'default'}): {detail}") from exc
    return model, arch


def arch_spec(config, in_channels: int, num_classes: int) -> dict:
    """``{"name", "kwargs"}`` of ``config.arch`` sized for the data: a zoo name takes ``in_channels``,
    ``width`` and ``act``; a ``torchvision:<name>`` or ``package.module:factory`` name only ``num_classes``;
    ``config.arch_kwargs`` adds (or overrides) constructor arguments of either."""
    kwargs = {"num_classes": num_classes}
    if ":" not in config.arch:
        kwargs["in_channels"] = in_channels
        if config.width is not None:
            kwargs["width"] = config.width
        if config.act is not None:
            kwargs["act"] = config.act
    return {"name": config.arch, "kwargs": {**kwargs, **(getattr(config, "arch_kwargs", None) or {})}}


def check_model(model: nn.Module, arch: dict, data) -> None:
    """The model traces, has prunable layers, gives one logit per class, and can be saved and rebuilt."""
    from ..graph.archive import build_model, resize_
    from ..graph.trace import build_inventory

    inventory = build_inventory(model, data.input_shape)  # UnsupportedModelError names the layer
    if not inventory.prunable():
        raise UnsupportedModelError(f"{arch['name']} has no layer whose channels can be removed or split")
    with torch.no_grad():
        was = model.training
        logits = model.eval()(torch.zeros(2, *data.input_shape))
        model.train(was)
    if tuple(logits.shape) != (2, data.num_classes):
        raise UnsupportedModelError(f"the model outputs shape {tuple(logits.shape[1:])} per image but {data.name} "
                                    f"has {data.num_classes} classes")
    try:
        rebuilt = build_model(arch)
        resize_(rebuilt, inventory.widths(), data.input_shape)
        ok = {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    except Exception as exc:  # a user's class that cannot be built from its name alone (any error of its own)
        raise UnsupportedModelError(f"the result could not be archived: {arch['name']} cannot be rebuilt from its "
                                    f"name ({first_line(exc)}); save a state dict and pass --arch") from exc
    if not ok:
        raise UnsupportedModelError(f"the result could not be archived: {arch['name']}() built without arguments "
                                    "differs from the given model; save a state dict and pass --arch")


