"""The parameter names the built-in backends share, and the old names they replace.

Every built-in backend that has one of these settings calls it by the same name:

* ``score_threshold``: the least score (:attr:`Detections.scores`, in [0, 1]) a face needs to be
  kept; every built-in backend takes it.
* ``nms_threshold``: the overlap above which the lower-scoring of two faces is dropped.
* ``max_side``: images whose longer side exceeds it are shrunk for the search (``None``: never);
  boxes still come back in input pixels.
* ``min_face_size``: the least face width and height, in pixels, searched for or kept.
* ``device``: where a torch model runs ("cpu", "cuda", "cuda:1"; ``None``: CUDA when available).
* ``weights``: a local weight file used instead of the registered release.

The names used before stay accepted for one release: :func:`renamed` translates them with a
:class:`FutureWarning` (shown by default, at the user's line) that names the new name; passing an old name together with its new
one is a :class:`TypeError`.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..registry import user_stacklevel

#: the shared names and what they mean (see the module docstring)
VOCABULARY: dict[str, str] = {
    "score_threshold": "least score in [0, 1] a face needs to be kept",
    "nms_threshold": "overlap above which the lower-scoring of two faces is dropped",
    "max_side": "longer image side above which images are shrunk for the search (None: never)",
    "min_face_size": "least face width and height in pixels searched for or kept",
    "device": "where a torch model runs (None: CUDA when available)",
    "weights": "local weight file used instead of the registered release",
}

#: an old parameter's new name, or a function from its value to the new parameters
Rename = str | Callable[[Any], dict[str, Any]]

F = TypeVar("F", bound=Callable[..., Any])


def translate(
    owner: str, renames: Mapping[str, Rename], params: Mapping[str, Any], warn: bool = True
) -> dict:
    """``params`` with each deprecated name in ``renames`` replaced by its new parameters.

    Warns (a FutureWarning, shown by default, pointing at the user's own line) once per old
    name used, unless ``warn`` is False (the call that used them warned already); an old name
    given together with one of its new names is a TypeError (``owner`` names the class in both
    messages).
    """
    out = dict(params)
    for old, rename in renames.items():
        if old not in out:
            continue
        value = out.pop(old)
        new = rename(value) if callable(rename) else {rename: value}
        both = sorted(set(new) & set(params))
        if both:
            raise TypeError(
                f"{owner}() got both {old!r} and {both[0]!r}; {old!r} is the deprecated name "
                f"of {both[0]!r}: pass only {both[0]!r}"
            )
        if warn:
            names = " and ".join(repr(n) for n in new)
            warnings.warn(
                f"{owner}: the parameter {old!r} is deprecated and will be removed in the next "
                f"release; use {names} instead",
                FutureWarning,
                stacklevel=user_stacklevel(),
            )
        out.update(new)
    return out


def renamed(**renames: Rename) -> Callable[[F], F]:
    """Decorator of a backend's ``__init__``: accept the deprecated names in ``renames``.

    ``renamed(conf_threshold="score_threshold")`` passes ``conf_threshold=x`` on as
    ``score_threshold=x``; a function value maps an old value to several new parameters (or
    converts its units), e.g. ``thresholds=lambda t: {"score_threshold": t[2], ...}``.
    """

    def wrap(init: F) -> F:
        @functools.wraps(init)
        def init_accepting_old_names(self: Any, *args: Any, **params: Any) -> Any:
            return init(self, *args, **translate(type(self).__name__, renames, params))

        init_accepting_old_names.renamed = dict(renames)  # type: ignore[attr-defined]
        # what the registry's check calls on the driver: the warning (or the TypeError for an
        # old name given with its new one) where the user wrote the call
        init_accepting_old_names.translate_params = functools.partial(  # type: ignore[attr-defined]
            translate, init.__qualname__.split(".")[0], dict(renames)
        )
        return init_accepting_old_names  # type: ignore[return-value]

    return wrap


def canonical_params(
    factory: Callable[..., Any], params: Mapping[str, Any], warn: bool = True
) -> dict[str, Any]:
    """``params`` of ``factory`` (a backend class) with deprecated names translated (with a
    warning at the user's line unless ``warn`` is False)."""
    renames = getattr(getattr(factory, "__init__", None), "renamed", None)
    if not renames:
        return dict(params)
    return translate(getattr(factory, "__name__", str(factory)), renames, params, warn)


def effective_params(factory: Callable[..., Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """What ``params`` do to ``factory`` (a backend class), for comparing two runs' settings:
    deprecated names translated (silently: the call that used them warned already), every
    parameter's default filled in, a ``weights`` file named by its sha256 (``"sha256:<hex>"``),
    so that the default given explicitly, an old name, or the same file by another path compare
    equal. JSON-ready."""
    import inspect
    import json

    out = canonical_params(factory, params, warn=False)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: no defaults to fill in
        sig = None
    if sig is not None:
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for p in sig.parameters.values():
            if p.kind in named and p.default is not inspect.Parameter.empty:
                out.setdefault(p.name, p.default)
    weights = out.get("weights")
    if isinstance(weights, (str, os.PathLike)) and not str(weights).startswith("sha256:"):
        path = os.path.expanduser(os.fspath(weights))
        if os.path.isfile(path):
            from ..weights import sha256sum

            out["weights"] = f"sha256:{sha256sum(path)}"
    return json.loads(json.dumps(out, sort_keys=True, default=str))
