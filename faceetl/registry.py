"""One plug-in registry, used for detector backends and for predictors.

Entries register themselves when their module is imported; built-in entries are imported on first
use by name, so listing or looking up one never imports the others' heavy libraries. Instances
are built once per process and parameter set (models load once per worker) when the entry's
class says ``thread_safe = True``; otherwise once per thread, because dlib's and OpenCV's objects (and many
a user's plug-in) must not be shared by threads running at once (Dask's default scheduler, or a
worker with several threads, runs partitions side by side).
"""

from __future__ import annotations

import atexit
import importlib
import inspect
import json
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called here (stacklevel 1) that points at the
    first caller outside faceetl: the user's own line, however deep inside faceetl the warning
    is made (Python 3.12's ``skip_file_prefixes``, for 3.10 and 3.11 too)."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package + os.sep
    ):
        frame, level = frame.f_back, level + 1
    return level


class Spec(Protocol):
    name: str
    factory: Any  # a class; ``factory.thread_safe = True`` shares one instance between threads


S = TypeVar("S", bound=Spec)


def _weak(obj: Any) -> Callable[[], Any]:
    """A weak reference to ``obj``, or a strong one where it does not support weak references."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


class Plugin:
    """A spec registered outside faceetl, sent to the workers with the task graph.

    Its class pickles by value when it lives in a script or notebook (``__main__``), and such a
    pickle is not deterministic, which Dask's graph tokenizer refuses; the token is therefore the
    entry's name and the class's qualified name.
    """

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __dask_tokenize__(self) -> tuple[str, ...]:
        f = self.spec.factory
        where = (getattr(f, "__module__", ""), getattr(f, "__qualname__", repr(f)))
        return ("faceetl-plugin", type(self.spec).__name__, self.spec.name, *where)


class Registry(Generic[S]):
    """Named specs (each with a ``factory``) and the instances loaded from them in this process."""

    def __init__(self, kind: str, package: str, builtin: tuple[str, ...]) -> None:
        self.kind, self.package, self.builtin = kind, package, builtin
        self._specs: dict[str, S] = {}
        self._shared: dict[tuple[str, str], Any] = {}  # thread-safe entries: one per process
        self._local = threading.local()  # the others: one per thread (``.cache``, ``.generation``)
        # every instance built, for loaded() and clear(); weakly held where possible, so that a
        # thread's instances go with the thread (its threading.local holds the only strong ref)
        self._built: list[tuple[tuple[str, str], Callable[[], Any]]] = []
        self._generation = 0  # bumped by clear(): other threads' caches are then stale
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

    def plugin(self, name: str) -> Plugin | None:
        """What to send to worker processes so they know ``name``: None for a built-in entry
        (they import it by name), else its spec (the class travels; the model loads there)."""
        spec = self.spec(name)
        return None if name in self.builtin else Plugin(spec)

    def ensure(self, plugin: Plugin | None) -> None:
        """Register the spec of ``plugin`` (from :meth:`plugin`) here if it is not known yet."""
        if plugin is not None and plugin.spec.name not in self._specs:
            self.add(plugin.spec)

    def names(self) -> list[str]:
        for name in self.builtin:
            self.spec(name)
        return sorted(self._specs)

    def check(self, name: str, params: dict[str, Any]) -> None:
        """Fail where the call is written when ``params`` are not ``name``'s constructor's.

        Checked against the signature (and deprecated names a backend still accepts), without
        loading anything: a misspelt parameter is a TypeError listing the valid names, before
        any cluster starts. Entries whose constructor takes ``**kwargs`` accept anything.
        """
        factory = self.spec(name).factory
        translate = getattr(getattr(factory, "__init__", None), "translate_params", None)
        if callable(translate):  # old parameter names: said here, at the user's line
            translate(params)
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
            return
        kinds = sig.parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in kinds):
            self.check_installed(name, params)
            return
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        valid = {p.name for p in kinds if p.kind in named}
        valid |= set(getattr(getattr(factory, "__init__", None), "renamed", None) or ())
        unknown = sorted(set(params) - valid)
        if unknown:
            listed = ", ".join(sorted(valid)) or "none"
            raise TypeError(
                f"{self.kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {listed}"
            )
        self.check_installed(name, params)

    def check_installed(self, name: str, params: dict[str, Any]) -> None:
        """MissingExtraError, naming the extra, when what ``name`` needs with ``params`` is not
        installed: the entry's class says so in ``needs(params)`` (a list of (module, extra,
        what)), checked without importing anything."""
        needs = getattr(self.spec(name).factory, "needs", None)
        if callable(needs):
            from .extras import check

            check(needs(dict(params)))

    def get(self, name: str, **params: Any) -> Any:
        """The instance for ``name`` and ``params``: built once per process (thread-safe entries)
        or once per thread (the others)."""
        spec = self.spec(name)
        key = (name, json.dumps(params, sort_keys=True, default=str))
        if getattr(spec.factory, "thread_safe", False):
            with self._lock:
                obj = self._shared.get(key)
                if obj is None:
                    obj = self._build(spec, key, params)
                    self._shared[key] = obj
            return obj
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            local.cache, local.generation = {}, self._generation
        obj = local.cache.get(key)
        if obj is None:
            obj = self._build(spec, key, params)
            local.cache[key] = obj
        return obj

    def _build(self, spec: S, key: tuple[str, str], params: dict[str, Any]) -> Any:
        obj = spec.factory(**params)
        with self._lock:
            self._built.append((key, _weak(obj)))
        return obj

    def loaded(self) -> list[tuple[str, str]]:
        """(name, parameters) of the instances built in this process (one per thread where the
        entry is not thread-safe)."""
        with self._lock:
            self._built = [(k, ref) for k, ref in self._built if ref() is not None]
            return [key for key, _ in self._built]

    def clear(self) -> None:
        """Forget the instances built, closing those that hold native resources."""
        with self._lock:
            objs = [obj for _, ref in self._built if (obj := ref()) is not None]
            self._built.clear()
            self._shared.clear()
            self._generation += 1
            self._local = threading.local()
        for obj in objs:
            close = getattr(obj, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # best effort: the process may be shutting down
                    pass
