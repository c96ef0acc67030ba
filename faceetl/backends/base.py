"""The one detector protocol and the one backend registry.

A backend is a class in its own file under ``faceetl/backends/`` decorated with
:func:`register_backend`. It takes RGB uint8 images and returns one :class:`Detections`
per image, boxes in input pixels and landmarks in the ArcFace 5-point order as seen in
the image: left eye, right eye, nose tip, left mouth corner, right mouth corner (NaN
where the backend does not find a point). Nothing outside this package knows backend
names; the pipeline asks :func:`get_backend` for a loaded detector by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..boxes import box_iou  # noqa: F401 (re-exported: plug-ins import it from here)
from ..registry import Registry

N_LANDMARKS = 5


@dataclass
class Detections:
    """The faces a backend found in one image."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in input pixels
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray  # (N, 5, 2) float32, ArcFace order, NaN where unknown
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "landmarks68": (N, 68, 2)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(n)
        if self.landmarks is None:
            self.landmarks = np.full((n, N_LANDMARKS, 2), np.nan, np.float32)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(n, N_LANDMARKS, 2)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, N_LANDMARKS, 2)))

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        """All faces of ``parts``, highest score first (extras kept where all parts have them)."""
        parts = [p for p in parts if len(p)] or [cls.empty()]
        keys = set.intersection(*(set(p.extra) for p in parts))
        det = cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.landmarks for p in parts]),
            {k: np.concatenate([p.extra[k] for p in parts]) for k in keys},
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
        return Detections(
            b[keep],
            self.scores[keep],
            self.landmarks[keep],
            {k: v[keep] for k, v in self.extra.items()},
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


@dataclass(frozen=True)
class BackendSpec:
    name: str
    factory: Callable[..., Detector]
    workers: int  # default concurrency: worker processes on a CPU cluster / partitions per GPU
    gpu: bool  # benefits from a CUDA device


REGISTRY: Registry[BackendSpec] = Registry(
    "backend", "faceetl.backends", ("opencv", "dlib", "mediapipe", "mtcnn", "retinaface", "ssd")
)


def register_backend(name: str, *, workers: int, gpu: bool = False) -> Callable:
    """Class decorator: make a detector class available as ``name``."""

    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        REGISTRY.add(BackendSpec(name, factory, workers, gpu))
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


def get_backend(name: str, **params: Any) -> Detector:
    """The loaded detector for ``name`` and ``params``, loaded once per process."""
    return REGISTRY.get(name, **params)


def clear_cache() -> None:
    """Forget loaded detectors, closing those that hold native resources."""
    REGISTRY.clear()
