"""Export a registered kind of model to a checked ONNX file, and check a file again later."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import extras
from ..extras import EXPORT
from ..onnx_graph import (
    DEFAULT_OPSET,
    TOLERANCE,
    ExportError,
    check_file,
    check_rgb,
    read_metadata,
    synthetic_images,
    write_checked,
)
from .registry import Graph, build

log = logging.getLogger(__name__)


def onnx(
    model_or_name: Any,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
    check: bool = True,
    images: Sequence[np.ndarray] | None = None,
    tolerance: float = TOLERANCE,
    **params: Any,
) -> Path:
    """Export a model to the ONNX file ``path`` (written atomically) and check it; returns ``path``.

    ``model_or_name``: ``"retinaface"`` (params ``network``, ``weights``: a local state dict in
    place of the registered file), ``"parsing"`` (param ``weights``), a classifier checkpoint
    (file, or folder holding ``last.pt``; param ``size``: the crop side used for the example and
    the check, default 224), a module: ``RetinaFace``, BiSeNet, ``MultiHeadClassifier`` (or a
    ``RetinaFaceDetector`` / ``ParsingPredictor``), or anything of a kind registered with
    :func:`~faceetl.export.register_exportable`. With ``check`` the graph runs in onnxruntime
    on ``images`` (RGB uint8, preprocessed as the model's own code does; default: a synthetic
    image) and :class:`ExportError` is raised where an output's max error relative to its largest
    magnitude reaches ``tolerance``; the errors go into the file's metadata.
    """
    needs = [m for m in EXPORT if dynamo or m != "onnxscript"]
    if not check:
        needs = [m for m in needs if m != "onnxruntime"]
    extras.check((m, "export", "faceetl.export.onnx") for m in needs)
    graph = build(model_or_name, params)
    t0 = time.perf_counter()
    batches = None
    if check:
        batches = graph.batches(check_rgb(images) if images is not None else synthetic_images())
    write_checked(
        graph.module, path, outputs=graph.outputs, dynamic=graph.kind.dynamic,
        example=graph.example, batches=batches, metadata=graph.metadata, opset=opset,
        dynamo=dynamo, tolerance=tolerance, label=graph.kind.kind,
    )  # fmt: skip
    log.info("exported %s to %s in %.1f s", graph.kind.kind, path, time.perf_counter() - t0)
    return Path(path)


def check_onnx(
    path: str | os.PathLike,
    model_or_name: Any = None,
    images: Sequence[np.ndarray] | None = None,
    **params: Any,
) -> dict[str, float]:
    """Max relative error per output of the ONNX file against torch, measured with onnxruntime.

    ``model_or_name`` defaults to what the file was exported from (its ``faceetl.source``
    metadata: a kind name or a checkpoint path, with the same parameters).
    """
    extras.check((m, "export", "faceetl.export.check_onnx") for m in ("onnx", "onnxruntime"))
    graph = graph_for_file(path, model_or_name, params)
    imgs = check_rgb(images) if images is not None else synthetic_images()
    return check_file(path, graph.module, graph.outputs, graph.batches(imgs))


def graph_for_file(path: str | os.PathLike, model_or_name: Any, params: dict[str, Any]) -> Graph:
    """The torch side of an ONNX export: ``model_or_name``, else the file's recorded source."""
    meta = read_metadata(path)
    if model_or_name is None:
        source = meta.get("faceetl.source")
        if source is None:
            raise ExportError(
                f"{path} was exported from a module in memory: pass the torch model to compare with"
            )
        params = {**json.loads(meta.get("faceetl.params", "{}")), **params}
        params = {k: v for k, v in params.items() if v is not None}
        return build(source, params, kind=meta.get("faceetl.kind"))
    return build(model_or_name, params)


__all__ = ["check_onnx", "graph_for_file", "onnx"]
