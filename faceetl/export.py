"""Export RetinaFace, BiSeNet face parsing and trained classifiers to ONNX, and ONNX to TensorRT.

>>> from faceetl import export
>>> export.onnx("retinaface", "retinaface.onnx", network="mobilenet0.25")
>>> export.onnx("parsing", "parsing.onnx")                       # the registered 79999_iter.pth
>>> export.onnx("runs/fairface", "fairface.onnx", size=224)      # a classifier checkpoint
>>> export.tensorrt("retinaface.onnx", "retinaface.engine", fp16=True)   # CUDA + TensorRT only

What each graph takes and gives (input ``"input"``, float32, NCHW):

- ``retinaface``: BGR pixels minus the training mean (104, 117, 123), dynamic batch, height and
  width (any size; the detector pads nothing when an image runs alone). Outputs ``loc`` (B, P, 4)
  box deltas, ``conf`` (B, P, 2) softmaxed (background, face) and ``landmarks`` (B, P, 10)
  deltas, over the priors of :func:`faceetl.backends.retinaface.priors_for` (decode with
  ``decode_boxes`` / ``decode_landmarks``, variances 0.1 / 0.2).
- ``parsing``: 512x512 RGB in [0, 1] normalised with the ImageNet mean and std (as
  :func:`faceetl.predictors.parsing.preprocess`), dynamic batch; output ``logits`` (B, 19, 512,
  512) of the main head (label = argmax over axis 1).
- classifier (:class:`faceetl.train.classifier.MultiHeadClassifier`): RGB in [0, 1] (the model
  normalises inside), dynamic batch, height and width; one output of logits per head, named by
  its label column, in ``model.label_columns`` order. The vocabularies are in the file's
  metadata (``faceetl.classes``, JSON).

Every export is checked against torch with onnxruntime (CPU) on real inputs, preprocessed as the
model's own code does (pass ``images=``; otherwise a deterministic synthetic image): the largest
error of each output relative to that output's largest magnitude must stay below ``tolerance``
(1e-3). The measured errors are stored in the file's metadata (``faceetl.check_max_rel_error``)
and :func:`check_onnx` measures them again. Graphs are made with torch's ``torch.export``-based
exporter (``dynamo=True``, torch's default since 2.9, opset 18); the legacy TorchScript exporter
(``dynamo=False``) gives the same graphs and is used as a fallback when the dynamo export fails.

What is needed for TensorRT: an NVIDIA GPU with a CUDA build of torch that sees it
(``torch.cuda.is_available()``) and the TensorRT Python package (``pip install tensorrt``, 10.x,
matching the machine's CUDA major version; it brings its own ONNX parser). :func:`tensorrt`
parses the ONNX file, builds a serialized engine (fp16 where the GPU has fast fp16) with one
optimisation profile (min / opt / max shapes of the dynamic dimensions: RetinaFace 1x32x32 /
1x640x640 / 4x2048x2048, parsing batch 1 / 8 / 32, classifier batch 1 / 32 / 256 at its input
size; ``profiles=`` overrides them), checks the engine's outputs against torch on CUDA (fp16:
relative error < 2e-2) and writes the measured errors beside the engine (``<engine>.json``).
Engines are specific to the GPU model and TensorRT version that built them. Without a GPU or
without TensorRT it raises :class:`ExportError` saying which is missing; the ONNX file itself
runs anywhere with onnxruntime.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from .weights import WeightsError, fetch, home, sha256sum, weights_info

log = logging.getLogger(__name__)

#: the opset torch's dynamo exporter writes natively (no version conversion)
DEFAULT_OPSET = 18
#: largest error relative to each output's largest magnitude accepted by the ONNX check
TOLERANCE = 1e-3
#: ... and by the TensorRT check of an fp16 engine
FP16_TOLERANCE = 2e-2
INPUT_NAME = "input"
RETINAFACE_OUTPUTS = ("loc", "conf", "landmarks")
#: images larger than this (longest side) are downscaled for the check, as the detector's max_size
_CHECK_MAX_SIDE = 2048
#: version of the cached RetinaFace graphs (bump when the graph changes)
_CACHE_VERSION = 1

__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "check_onnx",
    "onnx",
    "onnx_session",
    "retinaface_onnx_cached",
    "tensorrt",
]


class ExportError(RuntimeError):
    """An export could not be made or its outputs differ from torch's."""


# ----------------------------------------------------------------------------- what to export


class _RetinaFaceGraph(nn.Module):
    """RetinaFace without the padding masks (hooks cannot be exported): (loc, conf, landmarks)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, logits, ldm = self.net(x)
        return loc, torch.softmax(logits, dim=-1), ldm


class _ClassifierGraph(nn.Module):
    """A multi-head classifier's logits as a tuple in ``label_columns`` order."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.cols = list(net.label_columns)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[c] for c in self.cols)


@dataclass
class _Spec:
    """One exportable model: the graph module, its axes and how to make its inputs."""

    kind: str
    graph: nn.Module
    outputs: list[str]
    dynamic: dict[int, str]  # input axis -> name
    example: torch.Tensor
    prepare: Callable[[list[np.ndarray]], list[np.ndarray]]  # RGB uint8 images -> input batches
    metadata: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # how to rebuild it (a name or checkpoint path), None: in memory


def _synthetic_images() -> list[np.ndarray]:
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


def _check_rgb(images: Sequence[np.ndarray]) -> list[np.ndarray]:
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


def _retinaface_inputs(images: list[np.ndarray]) -> list[np.ndarray]:
    """One batch per image (as the detector runs them alone) and a batch of 2 (image + mirror)."""
    from .nets.retinaface import MEAN_BGR

    mean = np.array(MEAN_BGR, np.float32)
    batches = []
    for img in images:
        s = min(1.0, _CHECK_MAX_SIDE / max(img.shape[:2]))
        if s < 1.0:
            size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        x = (img[:, :, ::-1].astype(np.float32) - mean).transpose(2, 0, 1)
        batches.append(np.ascontiguousarray(x[None]))
    first = batches[0][0]
    batches.append(np.ascontiguousarray(np.stack([first, first[:, :, ::-1]])))
    return batches


def _parsing_inputs(images: list[np.ndarray]) -> list[np.ndarray]:
    from .predictors.parsing import preprocess

    return [preprocess(images[i : i + 8]) for i in range(0, len(images), 8)]


def _classifier_inputs(size: int) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    def prepare(images: list[np.ndarray]) -> list[np.ndarray]:
        xs = [
            cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
            for img in images
        ]
        x = np.stack(xs).transpose(0, 3, 1, 2)
        return [np.ascontiguousarray(x[i : i + 32]) for i in range(0, len(x), 32)]

    return prepare


def _unknown(kind: str, params: Mapping[str, Any]) -> None:
    if params:
        raise TypeError(f"unexpected parameters for a {kind} export: {sorted(params)}")


def _retinaface_spec(net: nn.Module, network: str, sha: str | None, source: str | None) -> _Spec:
    meta = {
        "faceetl.network": network,
        "faceetl.input": "BGR float32 minus mean (104, 117, 123), NCHW, any height and width",
        "faceetl.outputs": "loc (B,P,4) deltas; conf (B,P,2) softmax [background, face]; "
        "landmarks (B,P,10) deltas; priors: faceetl.backends.retinaface.priors_for, "
        "variances (0.1, 0.2)",
    }
    if sha:
        meta["faceetl.weights_sha256"] = sha
    return _Spec(
        kind="retinaface",
        graph=_RetinaFaceGraph(net),
        outputs=list(RETINAFACE_OUTPUTS),
        dynamic={0: "batch", 2: "height", 3: "width"},
        example=torch.zeros(2, 3, 480, 640),
        prepare=_retinaface_inputs,
        metadata=meta,
        source=source,
    )


def _parsing_spec(net: nn.Module, sha: str | None, source: str | None) -> _Spec:
    from .nets.bisenet import CLASSES as parsing_classes
    from .nets.bisenet import INPUT_SIZE

    meta = {
        "faceetl.input": "RGB in [0, 1] normalised with ImageNet mean/std, NCHW 512x512",
        "faceetl.classes": json.dumps(list(parsing_classes)),
    }
    if sha:
        meta["faceetl.weights_sha256"] = sha
    return _Spec(
        kind="parsing",
        graph=net,
        outputs=["logits"],
        dynamic={0: "batch"},
        example=torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE),
        prepare=_parsing_inputs,
        metadata=meta,
        source=source,
    )


def _classifier_spec(net: nn.Module, size: int, source: str | None) -> _Spec:
    cols = list(net.label_columns)
    if len(set(cols)) != len(cols):
        raise ExportError(f"label columns must be distinct output names, got {cols}")
    return _Spec(
        kind="classifier",
        graph=_ClassifierGraph(net),
        outputs=cols,
        dynamic={0: "batch", 2: "height", 3: "width"},
        example=torch.zeros(2, 3, size, size),
        prepare=_classifier_inputs(size),
        metadata={
            "faceetl.input": "RGB float32 in [0, 1], NCHW (normalised inside the graph)",
            "faceetl.backbone": str(net.backbone_name),
            "faceetl.label_columns": json.dumps(cols),
            "faceetl.classes": json.dumps(
                {c: [_jsonable(v) for v in net.classes[c]] for c in cols}
            ),
            "faceetl.input_size": str(size),
        },
        source=source,
    )


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _resolve(model_or_name: Any, params: dict[str, Any]) -> _Spec:
    """The export spec of a name, a checkpoint path, a module or a faceetl detector/predictor."""
    from .backends.retinaface import RetinaFaceDetector
    from .nets.bisenet import BiSeNet
    from .nets.classifier import MultiHeadClassifier
    from .nets.retinaface import CONFIGS, ResNet50Body, RetinaFace, load_weights
    from .train.classifier import load_classifier

    params = dict(params)
    size = int(params.pop("size", 224))
    if isinstance(model_or_name, RetinaFaceDetector):
        model_or_name = model_or_name.model
    elif hasattr(model_or_name, "net") and getattr(model_or_name, "name", None) == "parsing":
        model_or_name = model_or_name.net  # a ParsingPredictor

    if isinstance(model_or_name, RetinaFace):
        _unknown("retinaface", params)
        network = "resnet50" if isinstance(model_or_name.body, ResNet50Body) else "mobilenet0.25"
        return _retinaface_spec(model_or_name, network, None, None)
    if isinstance(model_or_name, MultiHeadClassifier):
        _unknown("classifier", params)
        return _classifier_spec(model_or_name, size, None)
    if isinstance(model_or_name, nn.Module):
        if isinstance(model_or_name, BiSeNet):
            _unknown("parsing", params)
            return _parsing_spec(model_or_name, None, None)
        raise ExportError(
            f"cannot export a {type(model_or_name).__name__}: pass a RetinaFace, a BiSeNet "
            "(faceetl.predictors.parsing), a MultiHeadClassifier, or a name/checkpoint path"
        )

    if isinstance(model_or_name, str) and model_or_name == "retinaface":
        from .nets.retinaface import ALIASES as _ALIASES

        network = params.pop("network", "mobilenet0.25")
        network = _ALIASES.get(network, network)
        weights = params.pop("weights", None)
        _unknown("retinaface", params)
        if network not in CONFIGS:
            raise ValueError(
                f"unknown RetinaFace network {network!r}; choose one of {sorted(CONFIGS)}"
            )
        if weights is None:
            info = weights_info(CONFIGS[network]["weights"])
            path, sha = fetch(info.name), info.sha256
        else:
            path = Path(weights)
            if not path.is_file():
                raise WeightsError(f"RetinaFace weights file {path} does not exist")
            sha = sha256sum(path)
        net = RetinaFace(network)
        load_weights(net, path)
        spec = _retinaface_spec(net.eval(), network, sha, "retinaface")
        spec.metadata["faceetl.params"] = json.dumps(
            {"network": network, "weights": None if weights is None else os.fspath(weights)}
        )
        return spec
    if isinstance(model_or_name, str) and model_or_name == "parsing":
        from .nets.bisenet import WEIGHTS_NAME, load_bisenet

        weights = params.pop("weights", None)
        _unknown("parsing", params)
        path = fetch(WEIGHTS_NAME) if weights is None else Path(weights)
        spec = _parsing_spec(load_bisenet(path), sha256sum(path), "parsing")
        spec.metadata["faceetl.params"] = json.dumps(
            {"weights": None if weights is None else os.fspath(weights)}
        )
        return spec
    if isinstance(model_or_name, (str, os.PathLike)) and Path(model_or_name).exists():
        _unknown("classifier", params)
        net, _ = load_classifier(model_or_name, device="cpu")
        src = os.path.abspath(os.fspath(model_or_name))
        spec = _classifier_spec(net, size, src)
        spec.metadata["faceetl.params"] = json.dumps({"size": size})
        return spec
    raise ExportError(
        f"cannot export {model_or_name!r}: use 'retinaface', 'parsing', a classifier checkpoint "
        "(file or folder with last.pt) or a torch module"
    )


# ----------------------------------------------------------------------------- ONNX


def _export_graph(spec: _Spec, path: Path, opset: int, dynamo: bool) -> None:
    """torch -> ONNX file (dynamo exporter, or the legacy TorchScript one)."""
    import warnings

    kwargs: dict[str, Any] = dict(
        input_names=[INPUT_NAME], output_names=spec.outputs, opset_version=opset
    )
    if dynamo:
        dims = {
            axis: torch.export.Dim(name, min=1 if axis == 0 else 16)
            for axis, name in spec.dynamic.items()
        }
        try:
            with warnings.catch_warnings():  # torch's own pytree deprecations
                warnings.simplefilter("ignore", FutureWarning)
                torch.onnx.export(
                    spec.graph, (spec.example,), str(path), dynamic_shapes={"x": dims},
                    dynamo=True, external_data=False, verbose=False, **kwargs,
                )  # fmt: skip
            return
        except Exception as e:  # the torch.export route fails on some graphs: fall back
            log.warning("dynamo ONNX export of %s failed (%s); using the TorchScript exporter",
                        spec.kind, e)  # fmt: skip
    axes = {INPUT_NAME: dict(spec.dynamic)}
    for name in spec.outputs:
        axes[name] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            spec.graph, (spec.example,), str(path), dynamic_axes=axes, dynamo=False,
            do_constant_folding=True, **kwargs,
        )  # fmt: skip


def _set_metadata(model: Any, meta: Mapping[str, str]) -> None:
    props = {p.key: p for p in model.metadata_props}
    for k, v in meta.items():
        if k in props:
            props[k].value = v
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v


def _metadata(path: str | os.PathLike) -> dict[str, str]:
    import onnx as onnx_lib

    m = onnx_lib.load(os.fspath(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def _max_rel(ref: np.ndarray, got: np.ndarray) -> float:
    """Largest |ref - got| relative to the largest |ref| (so near-zero values do not blow up)."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    return float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-6))


@torch.no_grad()
def _torch_outputs(graph: nn.Module, x: np.ndarray, device: torch.device) -> list[np.ndarray]:
    out = graph(torch.from_numpy(x).to(device))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.float().cpu().numpy() for o in out]


def _compare(
    spec: _Spec,
    run: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    images: list[np.ndarray],
    device: torch.device,
) -> dict[str, float]:
    """Max relative error per output of ``run`` against the torch graph on ``device``."""
    errors = dict.fromkeys(spec.outputs, 0.0)
    for x in spec.prepare(images):
        ref = _torch_outputs(spec.graph, x, device)
        got = run(x)
        for name, r in zip(spec.outputs, ref, strict=True):
            errors[name] = max(errors[name], _max_rel(r, got[name]))
    return errors


def onnx_session(path: str | os.PathLike, device: str | None = None) -> Any:
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


def _check_with_ort(spec: _Spec, path: Path, images: list[np.ndarray]) -> dict[str, float]:
    sess = onnx_session(path, "cpu")
    names = [o.name for o in sess.get_outputs()]
    if names != spec.outputs:
        raise ExportError(f"{path} has outputs {names}, expected {spec.outputs}")

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(None, {INPUT_NAME: x}), strict=True))

    return _compare(spec, run, images, torch.device("cpu"))


class _Placed:
    """Context: the graph on ``device`` in eval mode, put back where and as it was afterwards."""

    def __init__(self, graph: nn.Module, device: torch.device | str = "cpu") -> None:
        self.graph, self.device = graph, torch.device(device)

    def __enter__(self) -> nn.Module:
        p = next(self.graph.parameters(), None)
        self.old = p.device if p is not None else torch.device("cpu")
        self.modes = [(m, m.training) for m in self.graph.modules()]
        return self.graph.to(self.device).eval()

    def __exit__(self, *exc: Any) -> None:
        self.graph.to(self.old)
        for m, training in self.modes:
            m.training = training


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
    the check, default 224), or a module: ``RetinaFace``, BiSeNet, ``MultiHeadClassifier`` (or a
    ``RetinaFaceDetector`` / ``ParsingPredictor``). With ``check`` the graph runs in onnxruntime
    on ``images`` (RGB uint8, preprocessed as the model's own code does; default: a synthetic
    image) and :class:`ExportError` is raised where an output's max error relative to its largest
    magnitude reaches ``tolerance``; the errors go into the file's metadata.
    """
    import onnx as onnx_lib

    spec = _resolve(model_or_name, params)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    try:
        with _Placed(spec.graph):
            _export_graph(spec, tmp, opset, dynamo)
            model = onnx_lib.load(str(tmp))
            meta = {
                "faceetl.kind": spec.kind,
                "faceetl.opset": str(opset),
                "faceetl.torch_version": torch.__version__,
                **spec.metadata,
            }
            if spec.source is not None:
                meta["faceetl.source"] = spec.source
            _set_metadata(model, meta)
            onnx_lib.checker.check_model(model)
            onnx_lib.save(model, str(tmp))
            if check:
                imgs = _check_rgb(images) if images is not None else _synthetic_images()
                errors = _check_with_ort(spec, tmp, imgs)
                log.info("ONNX %s vs torch, max relative error: %s", spec.kind, errors)
                bad = {k: v for k, v in errors.items() if not v < tolerance}
                if bad:
                    raise ExportError(
                        f"ONNX {spec.kind} outputs differ from torch: max relative error {bad} "
                        f">= {tolerance}"
                    )
                _set_metadata(model, {"faceetl.check_max_rel_error": json.dumps(errors)})
                onnx_lib.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s to %s in %.1f s", spec.kind, path, time.perf_counter() - t0)
    return path


def check_onnx(
    path: str | os.PathLike,
    model_or_name: Any = None,
    images: Sequence[np.ndarray] | None = None,
    **params: Any,
) -> dict[str, float]:
    """Max relative error per output of the ONNX file against torch, measured with onnxruntime.

    ``model_or_name`` defaults to what the file was exported from (its ``faceetl.source``
    metadata: ``"retinaface"``, ``"parsing"`` or a checkpoint path, with the same parameters).
    """
    spec = _spec_for_file(path, model_or_name, params)
    imgs = _check_rgb(images) if images is not None else _synthetic_images()
    with _Placed(spec.graph):
        return _check_with_ort(spec, Path(path), imgs)


def _spec_for_file(path: str | os.PathLike, model_or_name: Any, params: dict[str, Any]) -> _Spec:
    meta = _metadata(path)
    if model_or_name is None:
        source = meta.get("faceetl.source")
        if source is None:
            raise ExportError(
                f"{path} was exported from a module in memory: pass the torch model to compare with"
            )
        model_or_name = source
        params = {**json.loads(meta.get("faceetl.params", "{}")), **params}
        params = {k: v for k, v in params.items() if v is not None}
    return _resolve(model_or_name, params)


def retinaface_onnx_cached(
    net: nn.Module, network: str, weights_sha256: str, opset: int = DEFAULT_OPSET
) -> Path:
    """The ONNX graph of a loaded RetinaFace, exported once into ``$FACEETL_HOME/onnx``.

    The file is keyed by the weights' sha256, the network and the opset; a missing one is
    exported (and checked against torch) from ``net``.
    """
    folder = home() / "onnx"
    path = (
        folder / f"retinaface_{network}_{weights_sha256[:16]}_opset{opset}_v{_CACHE_VERSION}.onnx"
    )
    if path.is_file():
        try:
            meta = _metadata(path)
            if meta.get("faceetl.weights_sha256") == weights_sha256:
                return path
            log.warning("%s does not hold the expected weights: exporting it again", path)
        except Exception as e:  # a truncated or foreign file: export again
            log.warning("cannot read %s (%s): exporting it again", path, e)
    spec = _retinaface_spec(net, network, weights_sha256, None)
    with _Placed(spec.graph):
        _export_cached(spec, path, opset)
    return path


def _export_cached(spec: _Spec, path: Path, opset: int) -> None:
    import onnx as onnx_lib

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _export_graph(spec, tmp, opset, True)
        model = onnx_lib.load(str(tmp))
        meta = {"faceetl.kind": spec.kind, "faceetl.opset": str(opset), **spec.metadata}
        _set_metadata(model, meta)
        errors = _check_with_ort(spec, tmp, _synthetic_images())
        if not all(v < TOLERANCE for v in errors.values()):
            raise ExportError(f"ONNX RetinaFace differs from torch: max relative error {errors}")
        _set_metadata(model, {"faceetl.check_max_rel_error": json.dumps(errors)})
        onnx_lib.save(model, str(tmp))
        os.replace(tmp, path)
        log.info("RetinaFace ONNX cached at %s (max relative error %s)", path, errors)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- TensorRT


def _require_tensorrt() -> Any:
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


def _default_profiles(meta: Mapping[str, str]) -> dict[str, tuple[tuple[int, ...], ...]]:
    kind = meta.get("faceetl.kind")
    if kind == "retinaface":
        shapes = ((1, 3, 32, 32), (1, 3, 640, 640), (4, 3, 2048, 2048))
    elif kind == "parsing":
        shapes = ((1, 3, 512, 512), (8, 3, 512, 512), (32, 3, 512, 512))
    elif kind == "classifier":
        s = int(meta.get("faceetl.input_size", 224))
        shapes = ((1, 3, s, s), (32, 3, s, s), (256, 3, s, s))
    else:
        raise ExportError(f"not a faceetl ONNX export (kind {kind!r}): pass profiles=")
    return {INPUT_NAME: shapes}


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

    ``profiles`` maps input names to (min, opt, max) shapes (defaults per model: see the module
    docstring). With ``check`` the engine runs on ``images`` (default: a synthetic image) and is
    compared with the torch model (``model``, or what the file was exported from) on CUDA in
    float32: :class:`ExportError` where an output's max relative error reaches ``tolerance``
    (default 2e-2 for fp16, 1e-3 for fp32). The errors, profiles and versions are written to
    ``<engine_path>.json``. Needs CUDA and the ``tensorrt`` package (:class:`ExportError`
    saying what is missing otherwise).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist")
    trt = _require_tensorrt()
    engine_path = Path(engine_path)
    meta = _metadata(onnx_path)
    shapes = {k: tuple(tuple(int(d) for d in s) for s in v) for k, v in (profiles or {}).items()}
    shapes = shapes or _default_profiles(meta)

    logger = trt.Logger(trt.Logger.WARNING)
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
        spec = _spec_for_file(onnx_path, model, dict(params))
        imgs = _check_rgb(images) if images is not None else _synthetic_images()
        engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(memoryview(serialized)))
        run = _trt_runner(trt, engine)
        with _Placed(spec.graph, "cuda"):
            errors = _compare(spec, run, imgs, torch.device("cuda"))
        report["check_max_rel_error"] = errors
        log.info("TensorRT %s vs torch, max relative error: %s", spec.kind, errors)
        bad = {k: v for k, v in errors.items() if not v < tol}
        if bad:
            raise ExportError(f"TensorRT engine outputs differ from torch: {bad} >= {tol}")
    engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(report, indent=1))
    return engine_path


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
