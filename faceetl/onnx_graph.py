"""Model-free ONNX machinery: torch module -> checked ONNX file, metadata, onnxruntime sessions.

Nothing here knows a model: callers pass the module to trace, its output names, its dynamic input
axes and the input batches to check with. Graphs are made with torch's ``torch.export``-based
exporter (``dynamo=True``, opset 18), falling back to the TorchScript exporter where that fails.
A written file is compared with the torch module in onnxruntime (CPU): the largest error of each
output relative to that output's largest magnitude must stay below the tolerance, and the errors
go into the file's metadata (``faceetl.check_max_rel_error``). :func:`cached_export` keeps one
such file per weights sha256, opset and graph version under ``$FACEETL_HOME/onnx``.

``onnx`` and ``onnxruntime`` (the ``export`` extra) are imported only when used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .weights import home

log = logging.getLogger(__name__)

#: the opset torch's dynamo exporter writes natively (no version conversion)
DEFAULT_OPSET = 18
#: largest error relative to each output's largest magnitude accepted by the check
TOLERANCE = 1e-3
#: the name of every graph's single input
INPUT_NAME = "input"

Runner = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class ExportError(RuntimeError):
    """An export could not be made or its outputs differ from torch's."""


# ----------------------------------------------------------------------------- inputs


def synthetic_images() -> list[np.ndarray]:
    """Two deterministic RGB images (smooth colour fields plus noise), for a check without images."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((480, 640), (333, 517)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack(
            [128 + 100 * np.sin(xx / 37 + k) * np.cos(yy / 23 - k) for k in range(3)], axis=-1
        )
        img = base + rng.normal(0, 20, (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def check_rgb(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``images`` as a list of RGB uint8 (H, W, 3) arrays; ValueError for anything else."""
    out = []
    for img in images:
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"check images must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}"
            )
        out.append(img)
    if not out:
        raise ValueError("no check images")
    return out


# ----------------------------------------------------------------------------- files


def export_module(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    outputs: Sequence[str],
    dynamic: Mapping[int, str],
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
    label: str = "",
) -> None:
    """Write ``module(example)`` as an ONNX graph with input ``"input"`` and ``outputs``.

    ``dynamic`` maps input axes to names (batch: size >= 1, others >= 16). The dynamo exporter
    is tried first (``dynamo=True``); where it fails the TorchScript one writes the file.
    """
    kwargs: dict[str, Any] = dict(
        input_names=[INPUT_NAME], output_names=list(outputs), opset_version=opset
    )
    if dynamo:
        dims = {
            axis: torch.export.Dim(name, min=1 if axis == 0 else 16)
            for axis, name in dynamic.items()
        }
        try:
            with warnings.catch_warnings():  # torch's own pytree deprecations
                warnings.simplefilter("ignore", FutureWarning)
                torch.onnx.export(
                    module, (example,), os.fspath(path), dynamic_shapes=(dims,),
                    dynamo=True, external_data=False, verbose=False, **kwargs,
                )  # fmt: skip
            return
        except Exception as e:  # the torch.export route fails on some graphs: fall back
            log.warning("dynamo ONNX export of %s failed (%s); using the TorchScript exporter",
                        label or type(module).__name__, e)  # fmt: skip
    axes = {INPUT_NAME: dict(dynamic)}
    for name in outputs:
        axes[name] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), os.fspath(path), dynamic_axes=axes, dynamo=False,
            do_constant_folding=True, **kwargs,
        )  # fmt: skip


def set_metadata(model: Any, meta: Mapping[str, str]) -> None:
    """Set (add or replace) string metadata entries of an ``onnx.ModelProto``."""
    props = {p.key: p for p in model.metadata_props}
    for k, v in meta.items():
        if k in props:
            props[k].value = v
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of an ONNX file (its weights are not read)."""
    import onnx as onnx_lib

    m = onnx_lib.load(os.fspath(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


# ----------------------------------------------------------------------------- comparing


def max_rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    """Largest |ref - got| relative to the largest |ref| (so near-zero values do not blow up)."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    return float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-6))


@torch.no_grad()
def torch_outputs(module: nn.Module, x: np.ndarray, device: torch.device) -> list[np.ndarray]:
    """The module's outputs (a tensor or a tuple of them) for the batch ``x``, as float32 arrays."""
    out = module(torch.from_numpy(x).to(device))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.float().cpu().numpy() for o in out]


def compare(
    module: nn.Module,
    outputs: Sequence[str],
    run: Runner,
    batches: Iterable[np.ndarray],
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Max relative error per output of ``run`` against the torch module on ``device``."""
    errors = dict.fromkeys(outputs, 0.0)
    for x in batches:
        ref = torch_outputs(module, x, torch.device(device))
        got = run(x)
        for name, r in zip(outputs, ref, strict=True):
            errors[name] = max(errors[name], max_rel_error(r, got[name]))
    return errors


@contextlib.contextmanager
def placed(module: nn.Module, device: torch.device | str = "cpu") -> Iterator[nn.Module]:
    """Within: the module on ``device`` in eval mode; put back where and as it was afterwards."""
    p = next(module.parameters(), None)
    old = p.device if p is not None else torch.device("cpu")
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module.to(torch.device(device)).eval()
    finally:
        module.to(old)
        for m, training in modes:
            m.training = training


# ----------------------------------------------------------------------------- onnxruntime


def session(path: str | os.PathLike, device: str | None = None) -> Any:
    """An onnxruntime InferenceSession of ``path``: CUDAExecutionProvider first when onnxruntime
    has it and ``device`` is None or CUDA, then the CPU provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers: list[Any] = []
    if "CUDAExecutionProvider" in available and (device is None or str(device).startswith("cuda")):
        index = torch.device(device).index if device is not None else None
        providers.append(("CUDAExecutionProvider", {"device_id": index or 0}))
    providers.append("CPUExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)


def cached_session(path: str | os.PathLike, device: str | None = None) -> Any:
    """:func:`session`, one per file version and device in this process (sessions are
    thread-safe to run); a file rewritten since is opened again."""
    p = Path(path).resolve()
    st = p.stat()
    return _cached_session(str(p), st.st_mtime_ns, st.st_size, device)


@functools.lru_cache(maxsize=8)
def _cached_session(path: str, mtime_ns: int, size: int, device: str | None) -> Any:
    return session(path, device)


def ort_runner(sess: Any, outputs: Sequence[str]) -> Runner:
    """A function running one input batch through ``sess``, giving ``{output name: array}``."""
    names = [o.name for o in sess.get_outputs()]
    if names != list(outputs):
        raise ExportError(f"the graph has outputs {names}, expected {list(outputs)}")

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(None, {INPUT_NAME: x}), strict=True))

    return run


def check_file(
    path: str | os.PathLike,
    module: nn.Module,
    outputs: Sequence[str],
    batches: Iterable[np.ndarray],
) -> dict[str, float]:
    """Max relative error per output of the ONNX file (onnxruntime, CPU) against ``module``."""
    with placed(module):
        return compare(module, outputs, ort_runner(session(path, "cpu"), outputs), batches)


# ----------------------------------------------------------------------------- checked files


def write_checked(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    outputs: Sequence[str],
    dynamic: Mapping[int, str],
    example: torch.Tensor,
    batches: Iterable[np.ndarray] | None,
    metadata: Mapping[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
    tolerance: float = TOLERANCE,
    label: str = "",
) -> Path:
    """Export ``module`` to ``path`` (written atomically), checked on ``batches`` unless None.

    The file carries ``metadata`` plus ``faceetl.opset`` and ``faceetl.torch_version``, and,
    after a check, ``faceetl.check_max_rel_error``. :class:`ExportError` where an output's max
    relative error reaches ``tolerance`` (nothing is written then).
    """
    import onnx as onnx_lib

    label = label or type(module).__name__
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with placed(module):
            export_module(
                module, example, tmp, outputs, dynamic, opset=opset, dynamo=dynamo, label=label
            )
            model = onnx_lib.load(str(tmp))
            meta = {
                "faceetl.opset": str(opset),
                "faceetl.torch_version": torch.__version__,
                **(metadata or {}),
            }
            set_metadata(model, meta)
            onnx_lib.checker.check_model(model)
            onnx_lib.save(model, str(tmp))
            if batches is not None:
                errors = check_file(tmp, module, outputs, batches)
                log.info("ONNX %s vs torch, max relative error: %s", label, errors)
                bad = {k: v for k, v in errors.items() if not v < tolerance}
                if bad:
                    raise ExportError(
                        f"ONNX {label} outputs differ from torch: max relative error {bad} "
                        f">= {tolerance}"
                    )
                set_metadata(model, {"faceetl.check_max_rel_error": json.dumps(errors)})
                onnx_lib.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cached_export(
    module: nn.Module,
    name: str,
    weights_sha256: str,
    *,
    outputs: Sequence[str],
    dynamic: Mapping[int, str],
    example: torch.Tensor,
    prepare: Callable[[list[np.ndarray]], list[np.ndarray]],
    metadata: Mapping[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    version: int = 1,
) -> Path:
    """The ONNX graph of ``module``, exported once into ``$FACEETL_HOME/onnx``.

    The file, ``<name>_<sha256[:16]>_opset<opset>_v<version>.onnx``, is keyed by the weights'
    sha256 (also in its metadata, ``faceetl.weights_sha256``), the opset and the graph
    ``version`` (bump it when the graph changes). A missing, unreadable or foreign file is
    exported again, checked against torch on :func:`synthetic_images` made into batches by
    ``prepare``.
    """
    path = home() / "onnx" / f"{name}_{weights_sha256[:16]}_opset{opset}_v{version}.onnx"
    if path.is_file():
        try:
            if read_metadata(path).get("faceetl.weights_sha256") == weights_sha256:
                return path
            log.warning("%s does not hold the expected weights: exporting it again", path)
        except Exception as e:  # a truncated or foreign file: export again
            log.warning("cannot read %s (%s): exporting it again", path, e)
    meta = {**(metadata or {}), "faceetl.weights_sha256": weights_sha256}
    write_checked(
        module, path, outputs=outputs, dynamic=dynamic, example=example,
        batches=prepare(synthetic_images()), metadata=meta, opset=opset, label=name,
    )  # fmt: skip
    log.info("%s ONNX cached at %s", name, path)
    return path


__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "TOLERANCE",
    "ExportError",
    "cached_export",
    "cached_session",
    "check_file",
    "check_rgb",
    "compare",
    "export_module",
    "max_rel_error",
    "ort_runner",
    "placed",
    "read_metadata",
    "session",
    "set_metadata",
    "synthetic_images",
    "torch_outputs",
]
