"""The one detector protocol and the one backend registry.

A backend is a class in its own file under ``faceetl/backends/`` decorated with
:func:`register_backend`. It takes RGB uint8 images and returns one :class:`Detections`
per image, boxes in input pixels and landmarks in the ArcFace 5-point order as seen in
the image: left eye, right eye, nose tip, left mouth corner, right mouth corner (NaN
where the backend does not find a point). Nothing outside this package knows backend
names; the pipeline asks :func:`get_backend` for a loaded detector by name.

Any class with ``detect_batch`` and ``provenance`` is a backend (:class:`Detector`). The
built-in ones derive from :class:`BaseDetector`, which does the shared steps once (input
checks, empty batches, clipping to the image, the common provenance fields), and name their
parameters in the shared vocabulary of :mod:`faceetl.backends.params`. A backend also declares
the parameters it runs with for benchmark evaluation (:func:`evaluation_params`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..boxes import box_iou  # noqa: F401 (re-exported: plug-ins import it from here)
from ..registry import Registry
from .params import canonical_params

N_LANDMARKS = 5
#: images whose shorter side is below this many pixels hold no detectable face (the smallest
#: face any built-in backend finds is larger), so BaseDetector answers them without the model
MIN_SIDE = 8


@dataclass
class Detections:
    """The faces a backend found in one image.

    ``shapes``: the backend's native landmarks where it has more (or others) than the five
    ArcFace points, per face a (K, 2) float32 array in input pixels or None (dlib: its 68- or
    5-point shape, which the dlib template aligns on as dlib does); None when it has none.
    """

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in input pixels
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray  # (N, 5, 2) float32, ArcFace order, NaN where unknown
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "landmarks68": (N, 68, 2)
    shapes: list[np.ndarray | None] | None = None  # per face (K, 2) float32 or None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        if self.landmarks is None:
            self.landmarks = np.full((n, N_LANDMARKS, 2), np.nan, np.float32)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(n, N_LANDMARKS, 2)
        if self.shapes is not None:
            shapes = list(self.shapes)
            if len(shapes) != n:
                raise ValueError(f"{len(shapes)} shapes for {n} faces")
            self.shapes = [
                None if s is None else np.asarray(s, dtype=np.float32).reshape(-1, 2)
                for s in shapes
            ]

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, N_LANDMARKS, 2)))

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        """All faces of ``parts``, highest score first (extras kept where all parts have them,
        shapes where any part has them)."""
        parts = [p for p in parts if len(p)] or [cls.empty()]
        keys = set.intersection(*(set(p.extra) for p in parts))
        shapes = None
        if any(p.shapes is not None for p in parts):
            shapes = [s for p in parts for s in (p.shapes or [None] * len(p))]
        det = cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.landmarks for p in parts]),
            {k: np.concatenate([p.extra[k] for p in parts]) for k in keys},
            shapes,
        )
        return det.select(np.argsort(-det.scores, kind="stable"))

    def clip(self, width: int, height: int) -> Detections:
        """Boxes clipped to the image; faces left with no area are dropped."""
        b = self.boxes.copy()
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
        keep = (b[:, 2] - b[:, 0] > 1) & (b[:, 3] - b[:, 1] > 1)
        return self.select(keep, boxes=b)

    def select(self, keep: np.ndarray, boxes: np.ndarray | None = None) -> Detections:
        """The subset of faces where ``keep`` (bool mask or indices) is true."""
        b = self.boxes if boxes is None else boxes
        shapes = None
        if self.shapes is not None:
            shapes = [self.shapes[i] for i in np.arange(len(self))[keep]]
        return Detections(
            b[keep],
            self.scores[keep],
            self.landmarks[keep],
            {k: v[keep] for k, v in self.extra.items()},
            shapes,
        )


@runtime_checkable
class Detector(Protocol):
    """What every backend is: a loaded model that detects faces in a batch of images."""

    name: str

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """One :class:`Detections` per RGB uint8 image, in order."""
        ...

    def provenance(self) -> dict[str, Any]:
        """Backend parameters and weight hashes, recorded on every output row."""
        ...


def check_image(image: Any, index: int = 0) -> Any:
    """``image`` as an array if it is RGB uint8 (H, W, 3) with pixels, else a ValueError.

    A torch tensor (H, W, 3) uint8 (e.g. decoded on a GPU) is checked and returned as it is,
    for backends whose :attr:`BaseDetector.input_device` takes tensors.
    """
    tensor = type(image).__module__.startswith("torch")
    arr = image if tensor else np.asarray(image)
    if (
        arr.ndim != 3
        or arr.shape[2] != 3
        or str(arr.dtype).split(".")[-1] != "uint8"
        or (0 in tuple(arr.shape))
    ):
        raise ValueError(
            f"expected an RGB uint8 image (H, W, 3), got {arr.dtype} {tuple(arr.shape)} "
            f"(image {index} of the batch)"
        )
    return arr


class BaseDetector(ABC):
    """The shared steps of a backend, done once: subclasses implement only their detection.

    :meth:`detect_batch` checks every image (:func:`check_image`), answers an empty batch with
    ``[]`` and images thinner than :data:`MIN_SIDE` with no face, runs :meth:`_detect_batch` (by default :meth:`_detect_one` per image) and clips the
    boxes to each image (:meth:`Detections.clip`). :meth:`provenance` gives ``backend``,
    ``weights`` (``self._weights``: file name -> sha256, set when the model loads) and
    ``device`` (:meth:`_device`), merged with the subclass's own :meth:`_parameters`.
    """

    name: ClassVar[str] = ""
    #: where the backend wants its images as torch tensors (H, W, 3) uint8, e.g. ``"cuda:0"``:
    #: the pipeline then decodes and aligns there (one decode per image, no host copy); None
    #: (the default): numpy arrays
    input_device: str | None = None
    #: the least score a face needs to be kept (every built-in backend takes it)
    score_threshold: float
    #: file name -> sha256 of every model file the backend loaded
    _weights: dict[str, str]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One :class:`Detections` per RGB uint8 image, in order (boxes inside the image)."""
        checked = [check_image(im, i) for i, im in enumerate(images)]
        if not checked:
            return []
        # no face fits in an image this thin: answered here, not sent to the model
        search = [i for i, im in enumerate(checked) if min(im.shape[:2]) >= MIN_SIDE]
        found = self._detect_batch([checked[i] for i in search]) if search else []
        if len(found) != len(search):
            raise RuntimeError(f"{self.name} gave {len(found)} results for {len(search)} images")
        out = [Detections.empty() for _ in checked]
        for i, det in zip(search, found, strict=True):
            out[i] = det.clip(checked[i].shape[1], checked[i].shape[0])
        return out

    def detect(self, image: np.ndarray) -> Detections:
        """The faces of one RGB uint8 image."""
        return self.detect_batch([image])[0]

    def provenance(self) -> dict[str, Any]:
        """Backend name, weight hashes and device, with the backend's own parameters."""
        common = {"backend": self.name, "weights": dict(self._weights), "device": self._device()}
        return {**common, **self._parameters()}

    def _detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections of checked images (at least one), in input pixels; clipping not needed."""
        return [self._detect_one(im) for im in images]

    def _detect_one(self, image: np.ndarray) -> Detections:
        """Detections of one checked image (for backends that run images one by one)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither detection method")

    def _device(self) -> str:
        """Where the model runs, as recorded in provenance."""
        return "cpu"

    @abstractmethod
    def _parameters(self) -> dict[str, Any]:
        """The backend's own parameters (and library versions) for provenance."""


@dataclass(frozen=True)
class BackendSpec:
    name: str
    factory: Callable[..., Detector]
    workers: int  # default concurrency: worker processes on a CPU cluster / partitions per GPU
    gpu: bool  # benefits from a CUDA device
    #: parameters for benchmark evaluation (the WIDER FACE protocol: every face, original scale)
    evaluation: dict[str, Any] = field(default_factory=dict)


REGISTRY: Registry[BackendSpec] = Registry(
    "backend", "faceetl.backends", ("opencv", "dlib", "mediapipe", "mtcnn", "retinaface", "ssd")
)


def register_backend(
    name: str, *, workers: int, gpu: bool = False, evaluation: Mapping[str, Any] | None = None
) -> Callable:
    """Class decorator: make a detector class available as ``name``.

    ``evaluation``: the parameters it runs with for benchmark evaluation, in the shared
    vocabulary (e.g. ``{"score_threshold": 0.02, "max_side": None}``; default: its defaults).
    """

    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        REGISTRY.add(BackendSpec(name, factory, workers, gpu, dict(evaluation or {})))
        return factory

    return wrap


def list_backends() -> list[str]:
    """Names of all registered backends."""
    return REGISTRY.names()


def backend_spec(name: str) -> BackendSpec:
    """The registry entry for ``name`` (clear error for an unknown name)."""
    return REGISTRY.spec(name)


def default_workers(name: str) -> int:
    """The seed's worker map: how many workers a backend runs with by default."""
    return backend_spec(name).workers


def evaluation_params(name: str, **params: Any) -> dict[str, Any]:
    """The parameters ``name`` runs with for benchmark evaluation: those its registration
    declares, overridden by ``params`` (deprecated names translated, with their warning)."""
    spec = backend_spec(name)
    return {**spec.evaluation, **canonical_params(spec.factory, params)}


def get_backend(name: str, **params: Any) -> Detector:
    """The loaded detector for ``name`` and ``params``, loaded once per process."""
    return REGISTRY.get(name, **params)


def clear_cache() -> None:
    """Forget loaded detectors, closing those that hold native resources."""
    REGISTRY.clear()
