"""One plug-in registry, used for detector backends and for predictors.

Entries register themselves when their module is imported; built-in entries are imported on first
use by name, so listing or looking up one never imports the others' heavy libraries. Instances
are built once per process and parameter set (models load once per worker).
"""

from __future__ import annotations

import atexit
import importlib
import json
import threading
from typing import Any, Generic, Protocol, TypeVar


class Spec(Protocol):
    name: str
    factory: Any


S = TypeVar("S", bound=Spec)


class Registry(Generic[S]):
    """Named specs (each with a ``factory``) and the instances loaded from them in this process."""

    def __init__(self, kind: str, package: str, builtin: tuple[str, ...]) -> None:
        self.kind, self.package, self.builtin = kind, package, builtin
        self._specs: dict[str, S] = {}
        self._loaded: dict[tuple[str, str], Any] = {}
        self._lock = threading.RLock()
        atexit.register(self.clear)  # release native resources before modules are torn down

    def add(self, spec: S) -> None:
        old = self._specs.get(spec.name)
        if old is not None and old.factory is not spec.factory:
            raise ValueError(f"{self.kind} {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        spec.factory.name = spec.name

    def spec(self, name: str) -> S:
        """The entry for ``name`` (a built-in one is imported first)."""
        if name in self.builtin and name not in self._specs:
            importlib.import_module(f"{self.package}.{name}")
        try:
            return self._specs[name]
        except KeyError:
            known = sorted(set(self._specs) | set(self.builtin))
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {known}") from None

    def plugin(self, name: str) -> S | None:
        """What to send to worker processes so they know ``name``: None for a built-in entry
        (they import it by name), else its spec (the class travels; the model loads there)."""
        spec = self.spec(name)
        return None if name in self.builtin else spec

    def ensure(self, spec: S | None) -> None:
        """Register ``spec`` (from :meth:`plugin`) in this process if it is not known yet."""
        if spec is not None and spec.name not in self._specs:
            self.add(spec)

    def names(self) -> list[str]:
        for name in self.builtin:
            self.spec(name)
        return sorted(self._specs)

    def get(self, name: str, **params: Any) -> Any:
        """The instance for ``name`` and ``params``, built once per process."""
        key = (name, json.dumps(params, sort_keys=True, default=str))
        with self._lock:
            obj = self._loaded.get(key)
            if obj is None:
                obj = self.spec(name).factory(**params)
                self._loaded[key] = obj
        return obj

    def loaded(self) -> list[tuple[str, str]]:
        """(name, parameters) of the instances built in this process."""
        with self._lock:
            return list(self._loaded)

    def clear(self) -> None:
        """Forget the instances built, closing those that hold native resources."""
        with self._lock:
            objs = list(self._loaded.values())
            self._loaded.clear()
        for obj in objs:
            close = getattr(obj, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # best effort: the process may be shutting down
                    pass
