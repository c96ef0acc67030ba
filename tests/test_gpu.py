"""On a CUDA GPU the torch backends find the same faces as on the CPU (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

from faceetl.backends.base import get_backend
from helpers import IMAGES, iou, load_rgb

pytestmark = pytest.mark.gpu

PHOTOS = (
    sorted((IMAGES / "group").glob("*.jpg"))[:4] + sorted((IMAGES / "single").glob("*.jpg"))[:4]
)


@pytest.mark.parametrize("backend", ["retinaface", "mtcnn"])
def test_cuda_rows_equal_cpu_rows(backend: str) -> None:
    images = [load_rgb(p) for p in PHOTOS]
    params = {"half": False} if backend == "retinaface" else {}
    cpu = get_backend(backend, device="cpu", **params).detect_batch(images)
    gpu = get_backend(backend, device="cuda", **params).detect_batch(images)
    for path, c, g in zip(PHOTOS, cpu, gpu, strict=True):
        assert len(c) == len(g), path.name
        if len(c):
            m = iou(c.boxes, g.boxes)
            j = m.argmax(axis=1)
            assert np.abs(c.boxes - g.boxes[j]).max() <= 1.0, path.name
