"""Run settings that travel with Dask tasks: a weights mirror, offline mode, the pixel limit.

Settings captured on the driver travel inside each task; a worker's own environment is the
fallback. :func:`current` answers, in this order:

1. the :class:`Settings` applied with :func:`applied` in this thread / task (a
   :class:`contextvars.ContextVar`, so concurrent tasks on one worker each see their own);
2. the values given to :func:`configure` in this process (field by field);
3. the environment, read at each call: ``FACEETL_WEIGHTS_URL``, ``FACEETL_OFFLINE``,
   ``FACEETL_MAX_PIXELS``.

A graph builder calls :func:`capture` on the driver and wraps each task's body in
``with config.applied(settings):``, so workers on other machines need no hand setup.
``FACEETL_HOME`` (the weights cache) is not a setting: it is a folder of each machine.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

ENV_WEIGHTS_URL = "FACEETL_WEIGHTS_URL"
ENV_OFFLINE = "FACEETL_OFFLINE"
ENV_MAX_PIXELS = "FACEETL_MAX_PIXELS"

_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """The settings in force for a task (frozen, picklable, compared field by field).

    ``weights_url``: an fsspec URL or local folder holding weight files by their file names (a
    mirror), tried before the release URL. ``weights_storage_options``: fsspec options for it
    (left out of ``repr`` and ``hash``: it may hold credentials, and it may hold dicts).
    ``offline``: never download from the release URL. ``max_pixels``: the image pixel limit
    (None: :data:`faceetl.images.MAX_PIXELS`; 0: no limit).
    """

    weights_url: str | None = None
    weights_storage_options: dict[str, Any] | None = field(default=None, repr=False, hash=False)
    offline: bool = False
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        url = self.weights_url
        if url is not None:
            url = os.fspath(url)
            if not isinstance(url, str):
                raise TypeError(f"weights_url must be a str or path, got {type(url).__name__}")
            url = url or None
        opts = self.weights_storage_options
        if opts is not None:
            if not isinstance(opts, dict):
                raise TypeError(f"weights_storage_options must be a dict, got {type(opts)}")
            opts = dict(opts)  # a copy: the caller's dict may change later
        mp = self.max_pixels
        if mp is not None:
            if isinstance(mp, bool) or int(mp) != mp or mp < 0:
                raise ValueError(f"max_pixels must be an integer >= 0 or None, got {mp!r}")
            mp = int(mp)
        object.__setattr__(self, "weights_url", url)
        object.__setattr__(self, "weights_storage_options", opts)
        object.__setattr__(self, "offline", bool(self.offline))
        object.__setattr__(self, "max_pixels", mp)


_applied: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "faceetl_settings", default=None
)
_configured: dict[str, Any] = {}
_lock = threading.Lock()
_UNSET: Any = object()


def configure(
    *,
    weights_url: str | os.PathLike | None = _UNSET,
    weights_storage_options: dict[str, Any] | None = _UNSET,
    offline: bool = _UNSET,
    max_pixels: int | None = _UNSET,
) -> Settings:
    """Set settings for this process; a keyword given (even None) wins over the environment,
    one left out keeps its earlier value or the environment's. Returns :func:`current`."""
    given = {
        "weights_url": weights_url,
        "weights_storage_options": weights_storage_options,
        "offline": offline,
        "max_pixels": max_pixels,
    }
    given = {k: v for k, v in given.items() if v is not _UNSET}
    checked = Settings(**given)  # validated (and normalised) before anything is kept
    with _lock:
        _configured.update({k: getattr(checked, k) for k in given})
    return current()


def reset() -> None:
    """Forget what :func:`configure` set (the environment decides again)."""
    with _lock:
        _configured.clear()


def _from_env(name: str) -> Any:
    """The environment's value of setting ``name``, read now."""
    if name == "weights_url":
        return os.environ.get(ENV_WEIGHTS_URL, "").strip() or None
    if name == "offline":
        return os.environ.get(ENV_OFFLINE, "").strip().lower() not in _FALSE
    if name == "max_pixels":
        raw = os.environ.get(ENV_MAX_PIXELS, "").strip()
        try:
            return int(raw) if raw else None
        except ValueError:
            raise ValueError(f"{ENV_MAX_PIXELS}={raw!r} is not an integer") from None
    return None  # weights_storage_options: fsspec reads its own environment (FSSPEC_*)


def from_environment() -> Settings:
    """The settings the environment alone gives (no :func:`configure`, no :func:`applied`)."""
    return Settings(**{f.name: _from_env(f.name) for f in fields(Settings)})


def current() -> Settings:
    """The settings in force here: :func:`applied`'s, else :func:`configure`'s over the
    environment's (read at each call, so a worker's own environment is the fallback)."""
    override = _applied.get()
    if override is not None:
        return override
    with _lock:
        given = dict(_configured)
    return Settings(
        **{
            f.name: given[f.name] if f.name in given else _from_env(f.name)
            for f in fields(Settings)
        }
    )


def capture() -> Settings:
    """:func:`current`, called on the driver while a graph is built: the settings captured
    there travel inside each task and are put in force there with :func:`applied`."""
    return current()


@contextlib.contextmanager
def applied(settings: Settings | None) -> Iterator[Settings]:
    """Put ``settings`` in force in this thread / task for the ``with`` block (None: no change,
    so a task built without captured settings uses the worker's own)."""
    if settings is None:
        yield current()
        return
    if not isinstance(settings, Settings):
        raise TypeError(f"applied() takes a faceetl.config.Settings, got {type(settings)}")
    token = _applied.set(settings)
    try:
        yield settings
    finally:
        _applied.reset(token)
