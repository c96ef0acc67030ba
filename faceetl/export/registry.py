"""The exportable kinds: what each one exports and how, looked up by name, module or checkpoint.

A kind registers itself with :func:`register_exportable` when its module is imported; the
built-in kinds (``retinaface``, ``parsing``, ``classifier``) are imported on first use. An object
to export is dispatched by the registry alone: a string by kind name, an existing path by the kind
whose ``claims`` accepts it, anything else by ``isinstance`` against each kind's ``modules`` (the
most specific class wins).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..onnx_graph import ExportError

#: built-in kinds, each in ``faceetl.export.<kind>``
BUILTIN = ("retinaface", "parsing", "classifier")

Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


class Loaded(NamedTuple):
    """A network loaded by a kind's ``load`` and the sha256 of its weights (None: unknown)."""

    net: nn.Module
    weights_sha256: str | None = None


def _same(net: nn.Module) -> nn.Module:
    return net


@dataclass(frozen=True)
class Exportable:
    """How one kind of model becomes an ONNX graph and how that graph is checked.

    Callables that take ``**params`` receive the kind's graph parameters (``params``: names and
    defaults, accepted with every source, such as the classifier's input ``size``).
    """

    kind: str
    #: the graph's input batches from RGB uint8 images: ``(images, **params) -> [array]``
    prepare: Callable[..., list[np.ndarray]]
    #: shape of the example input traced: a tuple, or ``(**params) -> tuple``
    example: Sequence[int] | Callable[..., Sequence[int]]
    #: output names: a sequence, or ``(net) -> sequence``
    outputs: Sequence[str] | Callable[[nn.Module], Sequence[str]] = ("output",)
    #: dynamic input axes -> names
    dynamic: Mapping[int, str] = field(default_factory=lambda: {0: "batch"})
    #: classes of the objects this kind exports (matched with ``isinstance``)
    modules: tuple[type, ...] = ()
    #: a matched object -> the network (a detector -> its model); default: itself
    unwrap: Callable[[Any], nn.Module] = _same
    #: the network -> the module traced (a wrapper giving a tuple in ``outputs`` order)
    graph: Callable[[nn.Module], nn.Module] = _same
    #: file metadata: ``(net, **params) -> {key: str}``
    metadata: Callable[..., Mapping[str, str]] | None = None
    #: TensorRT (min, opt, max) input shapes: a tuple, or ``(file metadata) -> tuple``
    profiles: Shapes | Callable[[Mapping[str, str]], Shapes] | None = None
    #: the network by kind name: ``(**load params) -> Loaded | nn.Module``
    load: Callable[..., Any] | None = None
    #: whether an existing path is a checkpoint of this kind
    claims: Callable[[Path], bool] | None = None
    #: the network from a claimed checkpoint path
    load_checkpoint: Callable[[Path], nn.Module] | None = None
    #: graph parameters and their defaults
    params: Mapping[str, Any] = field(default_factory=dict)

    def output_names(self, net: nn.Module) -> list[str]:
        names = list(self.outputs(net) if callable(self.outputs) else self.outputs)
        if len(set(names)) != len(names):
            raise ExportError(f"{self.kind} output names must be distinct, got {names}")
        return names

    def shapes(self, meta: Mapping[str, str]) -> Shapes:
        """TensorRT (min, opt, max) input shapes for a file with metadata ``meta``."""
        if self.profiles is None:
            raise ExportError(f"no TensorRT shapes registered for {self.kind!r}: pass profiles=")
        got = self.profiles(meta) if callable(self.profiles) else self.profiles
        lo, opt, hi = (tuple(int(d) for d in s) for s in got)
        return lo, opt, hi


_KINDS: dict[str, Exportable] = {}


def register_exportable(kind: str, **how: Any) -> Exportable:
    """Register (or replace) the exportable ``kind``; ``how``: the :class:`Exportable` fields.

    ``prepare`` and ``example`` are required; a kind is reached by name when it has ``load``,
    by path when it has ``claims`` and ``load_checkpoint``, by object when it has ``modules``.
    """
    if how.get("claims") is not None and how.get("load_checkpoint") is None:
        raise ValueError(f"exportable {kind!r}: claims= needs load_checkpoint=")
    ex = Exportable(kind, **how)
    _KINDS[kind] = ex
    return ex


def exportable(kind: str) -> Exportable:
    """The registered kind ``kind`` (a built-in one is imported first)."""
    if kind in BUILTIN and kind not in _KINDS:
        importlib.import_module(f"{__package__}.{kind}")
    try:
        return _KINDS[kind]
    except KeyError:
        raise ExportError(f"unknown export kind {kind!r}; registered: {kinds()}") from None


def kinds() -> list[str]:
    """Every registered kind, the built-in ones imported."""
    for name in BUILTIN:
        exportable(name)
    return sorted(_KINDS)


@dataclass
class Graph:
    """One model ready to export: the module traced, its outputs and how to check it."""

    kind: Exportable
    module: nn.Module
    outputs: list[str]
    params: dict[str, Any]
    metadata: dict[str, str]

    @property
    def example(self) -> torch.Tensor:
        ex = self.kind.example
        return torch.zeros(*(ex(**self.params) if callable(ex) else ex))

    def batches(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return self.kind.prepare(images, **self.params)


def _split(
    ex: Exportable, params: Mapping[str, Any], load: Callable[..., Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(graph params, load params), each with its defaults; TypeError for names neither takes."""
    sig = inspect.signature(load) if load is not None else None
    names = set() if sig is None else {
        n for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }  # fmt: skip
    unknown = set(params) - set(ex.params) - names
    if unknown:
        raise TypeError(f"unexpected parameters for a {ex.kind} export: {sorted(unknown)}")
    graph = {k: params.get(k, v) for k, v in ex.params.items()}
    if sig is None:
        return graph, {}
    bound = sig.bind_partial(**{k: v for k, v in params.items() if k in names})
    bound.apply_defaults()
    return graph, dict(bound.arguments)


def _by_module(obj: Any) -> Exportable | None:
    """The kind whose ``modules`` match ``obj``, the most specific class first."""
    mro = type(obj).__mro__
    matches = [
        (mro.index(cls) if cls in mro else len(mro), i, ex)
        for i, ex in enumerate(_KINDS.values())
        for cls in ex.modules
        if isinstance(obj, cls)
    ]
    return min(matches, key=lambda m: m[:2])[2] if matches else None


def _jsonable(v: Any) -> Any:
    return os.fspath(v) if isinstance(v, os.PathLike) else v


def build(obj: Any, params: Mapping[str, Any], kind: str | None = None) -> Graph:
    """The :class:`Graph` of a kind name, a checkpoint path or a module (``kind``: the kind a
    checkpoint path belongs to, where known)."""
    if isinstance(obj, str) and obj in BUILTIN:
        exportable(obj)
    if isinstance(obj, str) and obj in _KINDS and _KINDS[obj].load is not None:
        ex = _KINDS[obj]
        gparams, lparams = _split(ex, params, ex.load)
        loaded = ex.load(**lparams)
        loaded = loaded if isinstance(loaded, Loaded) else Loaded(loaded)
        record = {**gparams, **{k: _jsonable(v) for k, v in lparams.items()}}
        return _graph(ex, loaded.net.eval(), gparams, obj, record, loaded.weights_sha256)
    kinds()  # dispatching by path or class: every built-in kind takes part
    if isinstance(obj, (str, os.PathLike)) and Path(obj).exists():
        path = Path(obj)
        # kinds registered outside faceetl are asked before the built-in ones
        claiming = sorted(_KINDS.values(), key=lambda ex: ex.kind in BUILTIN)
        claiming = [_KINDS[kind]] if kind in _KINDS else claiming
        for ex in claiming:
            if ex.claims is not None and ex.load_checkpoint is not None and ex.claims(path):
                gparams, _ = _split(ex, params, None)
                net = ex.load_checkpoint(path).eval()
                source = os.path.abspath(os.fspath(obj))
                return _graph(ex, net, gparams, source, gparams, None)
    if not isinstance(obj, (str, os.PathLike)):
        ex = _by_module(obj)
        if ex is not None:
            gparams, _ = _split(ex, params, None)
            return _graph(ex, ex.unwrap(obj), gparams, None, None, None)
    if isinstance(obj, nn.Module):
        classes = sorted({c.__name__ for ex in _KINDS.values() for c in ex.modules})
        raise ExportError(
            f"cannot export a {type(obj).__name__}: pass a module of a registered kind "
            f"({', '.join(classes)}), a kind name or a checkpoint path"
        )
    names = sorted(k for k, ex in _KINDS.items() if ex.load is not None)
    paths = sorted(k for k, ex in _KINDS.items() if ex.claims is not None)
    raise ExportError(
        f"cannot export {obj!r}: use a kind name ({', '.join(map(repr, names))}), a checkpoint "
        f"path of {', '.join(paths)} or a torch module"
    )


def _graph(
    ex: Exportable,
    net: nn.Module,
    gparams: dict[str, Any],
    source: str | None,
    record: dict[str, Any] | None,
    sha: str | None,
) -> Graph:
    outputs = ex.output_names(net)
    meta = {"faceetl.kind": ex.kind}
    if ex.metadata is not None:
        meta.update(ex.metadata(net, **gparams))
    if sha:
        meta["faceetl.weights_sha256"] = sha
    if source is not None:
        meta["faceetl.source"] = source
    if record is not None:
        meta["faceetl.params"] = json.dumps(record)
    return Graph(ex, ex.graph(net), outputs, gparams, meta)


__all__ = [
    "BUILTIN",
    "Exportable",
    "Graph",
    "Loaded",
    "build",
    "exportable",
    "kinds",
    "register_exportable",
]
