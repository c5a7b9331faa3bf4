"""Save and reload reshaped models without their original class widths.

An archive is ``torch.save`` of plain data only (it loads with ``torch.load(weights_only=True)``):
``{"format": "energysplit-model", "version", "arch", "input_shape", "widths", "state_dict", "meta"}``.
Loading builds the base architecture from ``arch``, traces it, resizes every neuron group to the saved
width (removing trailing channels or duplicating channels with eps = 0), then loads the state dict
strictly. ``arch`` is ``{"name": ..., "kwargs": {...}}`` where name is a zoo model (``mobilenet_v2``),
``torchvision:<name>`` (built with ``weights=None``) or an importable ``"package.module:qualname"``
factory. Loading imports that module: only load archives you trust.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, EnergySplitError, InputFileError

MAGIC = "energysplit-model"
VERSION = 1
_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings, got {k!r}")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise ValueError(f"{where} must hold plain data (str, int, float, bool, None, lists, dicts), "
                         f"got {type(value).__name__}")


def normalise_arch(arch: dict | str) -> dict:
    """``"resnet20"`` or ``{"name": ..., "kwargs": {...}}`` -> a validated ``{"name", "kwargs"}`` dict."""
    if isinstance(arch, str):
        arch = {"name": arch}
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not arch["name"]:
        raise ConfigError(f"arch must be a model name or a dict with a 'name' string, got {arch!r}")
    extra = set(arch) - {"name", "kwargs"}
    if extra:
        raise ConfigError(f"arch has unknown keys {sorted(extra)}; use 'name' and 'kwargs'")
    kwargs = dict(arch.get("kwargs") or {})
    _check_plain(kwargs, "arch kwargs")
    return {"name": arch["name"], "kwargs": kwargs}


def build_model(arch: dict | str) -> nn.Module:
    """Build the base model an arch spec names (zoo name, ``torchvision:<name>`` or ``module:qualname``)."""
    arch = normalise_arch(arch)
    name, kwargs = arch["name"], arch["kwargs"]
    if name.startswith("torchvision:"):
        import torchvision

        try:
            return torchvision.models.get_model(name.split(":", 1)[1], weights=None, **kwargs)
        except ValueError as exc:
            raise EnergySplitError(f"unknown torchvision model {name!r}: {exc}") from exc
    if ":" in name:
        module, _, qualname = name.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise EnergySplitError(f"cannot import model factory {name!r}: {exc}") from exc
        return obj(**kwargs)
    from ..zoo import create_model

    return create_model(name, **kwargs)


def resize_(model: nn.Module, widths: dict[str, int], input_shape) -> None:
    """Resize every neuron group of ``model`` to ``widths`` (trailing channels removed, or duplicated)."""
    from .trace import build_inventory
    from .plan import Plan, Remove, Split
    from .surgery import apply_plan_

    inv = build_inventory(model, input_shape)
    if set(widths) != set(inv.groups):
        diff = sorted(set(widths) ^ set(inv.groups))
        raise EnergySplitError(f"saved neuron groups do not match the architecture (differ: {', '.join(diff[:5])})")
    while True:
        ops = []
        for gid, target in widths.items():
            width = inv[gid].width
            if target < width:
                ops.append(Remove(gid, tuple(range(target, width))))
            elif target > width:
                ops += [Split(gid, c) for c in range(min(width, target - width))]
        if not ops:
            return
        inv = apply_plan_(model, inv, Plan(ops))


def save_model(model: nn.Module, path: str | Path, arch: dict | str, input_shape, meta: dict | None = None) -> Path:
    """Atomically save ``model`` (possibly reshaped) so that :func:`load_model` rebuilds it anywhere."""
    from .trace import build_inventory
    from .._io import atomic_save
    from .. import __version__

    arch = normalise_arch(arch)
    meta = dict(meta or {})
    _check_plain(meta, "meta")
    input_shape = [int(s) for s in input_shape]
    widths = build_inventory(model, input_shape).widths()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    base = build_model(arch)
    resize_(base, widths, input_shape)  # fail now, not at load time, if the arch cannot be rebuilt
    shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in state.items()}:
        bad = sorted(set(shapes.items()) ^ {(k, tuple(v.shape)) for k, v in state.items()})[:3]
        raise EnergySplitError(f"arch {arch['name']!r} resized to the model's widths does not match it: {bad}")
    record = {"format": MAGIC, "version": VERSION, "energysplit": __version__, "arch": arch,
              "input_shape": input_shape, "widths": widths, "state_dict": state, "meta": meta}
    return atomic_save(record, path)


def read_archive(path: str | Path) -> dict:
    """The archive's record (weights_only load); a one-line EnergySplitError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"no such model archive: {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EnergySplitError(f"{path}: not an energysplit model archive, or truncated "
                               f"({type(exc).__name__})") from exc
    if not isinstance(record, dict) or record.get("format") != MAGIC:
        raise EnergySplitError(f"{path}: not an energysplit model archive")
    if record.get("version") != VERSION:
        raise EnergySplitError(f"{path}: archive version {record.get('version')} is not supported "
                               f"(this energysplit reads version {VERSION})")
    return record


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model`; returns ``(model, record)`` (model on CPU, eval mode)."""
    record = read_archive(path)
    model = build_model(record["arch"])
    resize_(model, record["widths"], record["input_shape"])
    try:
        model.load_state_dict(record["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise EnergySplitError(f"{path}: weights do not fit the rebuilt model ({first[1].strip() if len(first) > 1 else first[0]})") from exc
    return model.eval(), record
