"""ONNX -> TensorRT engine, checked against torch on CUDA (needs a GPU and ``tensorrt``)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..onnx_graph import (
    INPUT_NAME,
    TOLERANCE,
    ExportError,
    check_rgb,
    compare,
    placed,
    read_metadata,
    synthetic_images,
)
from .exporter import graph_for_file
from .registry import exportable

log = logging.getLogger(__name__)

#: largest error relative to each output's largest magnitude accepted for an fp16 engine
FP16_TOLERANCE = 2e-2


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or an :class:`ExportError` naming everything that is missing."""
    missing = []
    trt = None
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except Exception as e:
        missing.append(
            "the TensorRT Python package (`pip install tensorrt`, 10.x, for this machine's CUDA "
            f"major version; `import tensorrt` failed: {type(e).__name__}: {e})"
        )
    if not torch.cuda.is_available():
        cuda = torch.version.cuda
        why = (
            "this torch is a CPU-only build" if cuda is None
            else f"torch (CUDA {cuda}) sees no GPU"
        )  # fmt: skip
        missing.append(f"an NVIDIA GPU visible to a CUDA build of torch ({why})")
    if missing:
        raise ExportError(
            "building a TensorRT engine needs " + " and ".join(missing) + ". The ONNX file runs "
            "without them in onnxruntime (faceetl.export.onnx_session)."
        )
    return trt


def default_profiles(meta: Mapping[str, str]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``{"input": (min, opt, max)}`` registered for the kind of a file with metadata ``meta``."""
    kind = meta.get("faceetl.kind")
    if kind is None:
        raise ExportError("not a faceetl ONNX export (kind None): pass profiles=")
    try:
        ex = exportable(kind)
    except ExportError:
        raise ExportError(f"not a faceetl ONNX export (kind {kind!r}): pass profiles=") from None
    return {INPUT_NAME: ex.shapes(meta)}


def tensorrt(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    fp16: bool = True,
    *,
    profiles: Mapping[str, Sequence[Sequence[int]]] | None = None,
    workspace_gb: float = 4.0,
    check: bool = True,
    model: Any = None,
    images: Sequence[np.ndarray] | None = None,
    tolerance: float | None = None,
    **params: Any,
) -> Path:
    """Build a TensorRT engine from a faceetl ONNX export and check it against torch on CUDA.

    ``profiles`` maps input names to (min, opt, max) shapes (defaults: those registered for the
    file's kind). With ``check`` the engine runs on ``images`` (default: a synthetic image) and is
    compared with the torch model (``model``, or what the file was exported from) on CUDA in
    float32: :class:`ExportError` where an output's max relative error reaches ``tolerance``
    (default 2e-2 for fp16, 1e-3 for fp32). The errors, profiles and versions are written to
    ``<engine_path>.json``. Needs CUDA and the ``tensorrt`` package (:class:`ExportError`
    saying what is missing otherwise).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist")
    trt = require_tensorrt()
    engine_path = Path(engine_path)
    meta = read_metadata(onnx_path)
    shapes = {k: tuple(tuple(int(d) for d in s) for s in v) for k, v in (profiles or {}).items()}
    shapes = shapes or default_profiles(meta)

    logger = trt.Logger(trt.Logger.WARNING)
    serialized, half = _build_engine(trt, logger, onnx_path, shapes, fp16, workspace_gb)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(memoryview(serialized))
    os.replace(tmp, engine_path)

    report: dict[str, Any] = {
        "onnx": str(onnx_path),
        "fp16": half,
        "profiles": {k: [list(s) for s in v] for k, v in shapes.items()},
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
    }
    if check:
        tol = tolerance if tolerance is not None else (FP16_TOLERANCE if half else TOLERANCE)
        engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(memoryview(serialized)))
        graph = graph_for_file(onnx_path, model, dict(params))
        imgs = check_rgb(images) if images is not None else synthetic_images()
        with placed(graph.module, "cuda"):
            errors = compare(graph.module, graph.outputs, _trt_runner(trt, engine),
                             graph.batches(imgs), "cuda")  # fmt: skip
        report["check_max_rel_error"] = errors
        log.info("TensorRT %s vs torch, max relative error: %s", graph.kind.kind, errors)
        bad = {k: v for k, v in errors.items() if not v < tol}
        if bad:
            raise ExportError(f"TensorRT engine outputs differ from torch: {bad} >= {tol}")
    engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(report, indent=1))
    return engine_path


def _build_engine(
    trt: Any, logger: Any, onnx_path: Path, shapes: Mapping[str, Any], fp16: bool,
    workspace_gb: float,
) -> tuple[Any, bool]:  # fmt: skip
    """The serialized engine built from ``onnx_path`` with one optimisation profile of
    ``shapes``, and whether it is fp16 (asked for, and the GPU has fast fp16)."""
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    half = False
    if fp16:
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            half = True
        else:
            log.warning("this GPU has no fast fp16: building an fp32 engine")
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise ExportError(f"no (min, opt, max) shapes for input {name!r}: pass profiles=")
        lo, opt, hi = shapes[name]
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    log.info("TensorRT engine built in %.1f s", time.perf_counter() - t0)
    return serialized, half


def _trt_runner(trt: Any, engine: Any) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function running one input batch through the engine on the current CUDA stream."""
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        xt = torch.from_numpy(x).cuda().contiguous()
        in_dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(INPUT_NAME))))
        xt = xt.to(in_dtype.dtype)
        context.set_input_shape(INPUT_NAME, tuple(xt.shape))
        context.set_tensor_address(INPUT_NAME, xt.data_ptr())
        bufs = {}
        for name in outputs:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            bufs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            context.set_tensor_address(name, bufs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in bufs.items()}

    return run


__all__ = ["FP16_TOLERANCE", "default_profiles", "require_tensorrt", "tensorrt"]
