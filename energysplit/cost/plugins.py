"""Loading estimators and targets from entry points and from the user directory.

Entry-point groups: ``energysplit.estimators`` (name -> an :class:`~energysplit.cost.estimator.Estimator`
subclass; its ``targets`` attribute may declare targets) and ``energysplit.targets`` (name -> a
:class:`~energysplit.cost.estimator.Target`, a dict, a list of them, or a callable returning them). The
built-ins (``energysplit_estimators``, the ``estimators/`` folder) are declared in energysplit's own
setup.cfg, exactly as a third-party plugin declares its own. User targets
are ``*.json`` files in ``$ENERGYSPLIT_HOME/targets`` (default ``~/.config/energysplit/targets``).

A plugin that fails (import error, wrong type, duplicate name) is skipped with a
:class:`PluginWarning` naming it and its distribution, and listed in :data:`PLUGIN_ERRORS`.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .estimator import ESTIMATORS, TARGETS, Estimator, Target

ESTIMATOR_GROUP = "energysplit.estimators"
TARGET_GROUP = "energysplit.targets"
PLUGIN_ERRORS: list[dict] = []  # {"plugin", "group", "origin", "error"}
_state = {"loaded": False, "loading": False}


class PluginWarning(UserWarning):
    """A plugin or user target that could not be loaded (it is skipped)."""


def user_dir() -> Path:
    """Where user targets and calibrated tables live: ``$ENERGYSPLIT_HOME`` or ~/.config/energysplit."""
    home = os.environ.get("ENERGYSPLIT_HOME")
    return Path(home) if home else Path.home() / ".config" / "energysplit"


def _origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    if name is None:
        return "plugin (unknown distribution)"
    return "built-in" if name == "energysplit" else f"plugin {name}"


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    return list(entry_points(group=group))


def _fail(plugin: str, group: str, origin: str, exc: BaseException) -> None:
    msg = f"{type(exc).__name__}: {exc}"
    PLUGIN_ERRORS.append({"plugin": plugin, "group": group, "origin": origin, "error": msg})
    warnings.warn(f"energysplit: skipping {group} plugin {plugin!r} from {origin}: {msg}", PluginWarning,
                  stacklevel=3)


def _target_list(obj) -> list:
    if callable(obj) and not isinstance(obj, type):
        obj = obj()
    items = obj if isinstance(obj, (list, tuple)) else [obj]
    return [t if isinstance(t, Target) else Target.from_dict(t) for t in items]


def _load_estimator(ep, origin: str) -> None:
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise TypeError(f"{ep.value} is not an energysplit.cost.estimator.Estimator subclass")
    if not cls.unit:
        raise TypeError(f"{ep.value} declares no unit")
    targets = [Target(n, ep.name, dict(d.get("settings", {})), d.get("description", ""))
               for n, d in (cls.targets or {}).items()]
    if ep.name in ESTIMATORS:
        raise ValueError(f"estimator {ep.name!r} is already registered (from {ESTIMATORS.origin(ep.name)})")
    clash = [t.name for t in targets if t.name in TARGETS]
    if clash:
        raise ValueError(f"target {clash[0]!r} is already registered (from {TARGETS.origin(clash[0])})")
    ESTIMATORS.register(ep.name, cls, origin=origin)
    for t in targets:
        TARGETS.register(t.name, t, origin=origin)


def _register_targets(targets, origin: str) -> None:
    for t in targets:
        if t.name in TARGETS:
            raise ValueError(f"target {t.name!r} is already registered (from {TARGETS.origin(t.name)})")
    for t in targets:
        TARGETS.register(t.name, t, origin=origin)


def load_plugins(force: bool = False) -> None:
    """Register every estimator and target plugin once (``force``: forget them and load again)."""
    if _state["loading"] or (_state["loaded"] and not force):
        return
    _state["loading"] = True
    try:
        if force:
            ESTIMATORS.clear()
            TARGETS.clear()
            PLUGIN_ERRORS.clear()
        for ep in _entry_points(ESTIMATOR_GROUP):
            try:
                _load_estimator(ep, _origin(ep))
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
                _fail(ep.name, ESTIMATOR_GROUP, _origin(ep), exc)
        for ep in _entry_points(TARGET_GROUP):
            try:
                _register_targets(_target_list(ep.load()), _origin(ep))
            except Exception as exc:  # noqa: BLE001
                _fail(ep.name, TARGET_GROUP, _origin(ep), exc)
        for path in sorted((user_dir() / "targets").glob("*.json")):
            try:
                _register_targets(_target_list(json.loads(path.read_text())), f"user dir {path.parent}")
            except Exception as exc:  # noqa: BLE001
                _fail(path.stem, "user targets", str(path), exc)
        _state["loaded"] = True
    finally:
        _state["loading"] = False
