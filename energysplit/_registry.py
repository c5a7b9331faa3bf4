"""One small name -> object registry, used for models, estimators, targets, methods."""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterator

from .errors import RegistryError


class Registry:
    """Maps names to objects (classes or factories) together with where they came from.

    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def tiny(): ...
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self.loader = loader  # called before every lookup (e.g. to load plugins once); None: nothing to load
        self._items: dict[str, Any] = {}
        self._origins: dict[str, str] = {}

    def _load(self) -> None:
        if self.loader is not None:
            self.loader()

    def register(self, name: str | None = None, obj: Any = None, *, origin: str = "built-in"):
        """Register ``obj`` under ``name``; usable as a decorator. Duplicate names raise."""

        def add(item: Any) -> Any:
            key = name or getattr(item, "name", None) or item.__name__
            if key in self._items:
                raise RegistryError(
                    f"{self.kind} {key!r} is already registered (from {self._origins[key]}); "
                    "pick another name"
                )
            self._items[key] = item
            self._origins[key] = origin
            return item

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)
        self._origins.pop(name, None)

    def clear(self) -> None:
        """Forget every entry (a loader fills the registry again on the next lookup)."""
        self._items.clear()
        self._origins.clear()

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[name]

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origins[name]

    def names(self, pattern: str = "*") -> list[str]:
        self._load()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Look ``name`` up and call it, dropping keyword arguments that are None."""
        factory: Callable[..., Any] = self.get(name)
        return factory(*args, **{k: v for k, v in kwargs.items() if v is not None})
