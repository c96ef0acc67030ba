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


def test_batched_warp_on_cuda_equals_cpu() -> None:
    from faceetl import align
    from faceetl.batched import pad_batch, warp_faces

    images = [load_rgb(p) for p in PHOTOS]
    dets = get_backend("retinaface", device="cpu").detect_batch(images)
    index = [k for k, d in enumerate(dets) for _ in range(len(d))]
    spec = align.AlignSpec("arcface", 112)
    mats = [
        align.estimate_transform(d.landmarks[f], d.boxes[f], spec)[0]
        for d in dets
        for f in range(len(d))
    ]
    canvas, _ = pad_batch(images)
    cpu = warp_faces(canvas, index, mats, 112)
    gpu = warp_faces(canvas.cuda(), index, mats, 112).cpu()
    assert (cpu.int() - gpu.int()).abs().max() <= 1
    assert cpu.shape == gpu.shape


def test_nvjpeg_decode_loses_nothing(tmp_path) -> None:
    """Bad inputs: nvjpeg refuses some, the CPU decoder takes them; every image comes back
    decoded as the CPU path decodes it (JPEG decoders may differ by a few levels) or as the
    same error."""
    from faceetl.batched import decode_jpegs
    from helpers import bad_input_files, decoded_pairs

    paths = bad_input_files(tmp_path) + PHOTOS
    got = decode_jpegs([p.read_bytes() for p in paths], device="cuda")
    for p, g, want in decoded_pairs(paths, got):
        assert g.is_cuda and tuple(g.shape) == (3, *want.shape[:2]), p
        diff = np.abs(g.permute(1, 2, 0).cpu().numpy().astype(int) - want.astype(int))
        assert diff.mean() < 2.0, (p, diff.mean())


def test_pipeline_on_a_cuda_cluster_equals_cpu_rows(tmp_path) -> None:
    """The whole pipeline on a LocalCUDACluster (one worker per GPU) gives the CPU's rows."""
    import dask

    from faceetl import Pife

    paths = [str(p) for p in PHOTOS]
    with dask.config.set(scheduler="threads"):
        cpu = (
            Pife("retinaface", 1, progress=False, device="cpu", half=False)
            .extract(paths, tmp_path / "cpu")
            .compute()
        )
    with Pife("retinaface", 1, progress=False, device="cuda", half=False) as pife:
        gpu = pife.extract(paths, tmp_path / "gpu").compute()
        workers = pife._client.scheduler_info()["workers"]
    assert len(workers) >= 1
    _same_rows(cpu, gpu)


def _same_rows(a, b):
    """The same paths, faces and statuses, boxes within a pixel (or 1% of the face where a photo
    over max_side is downscaled by torch on the device); both frames sorted, returned."""
    a = a.sort_values(["path", "face"]).reset_index(drop=True)
    b = b.sort_values(["path", "face"]).reset_index(drop=True)
    assert list(a["path"]) == list(b["path"]) and list(a["status"]) == list(b["status"])
    box = ["x1", "y1", "x2", "y2"]
    diff = np.nan_to_num(np.abs(a[box].to_numpy() - b[box].to_numpy()).max(axis=1))
    size = np.nan_to_num((a["x2"] - a["x1"]).to_numpy())
    assert (diff <= np.maximum(1.0, 0.01 * size)).all(), diff.max()
    return a, b


def test_device_path_on_cuda_gives_the_host_rows(tmp_path) -> None:
    """nvjpeg decode, detection, one warp per image and nvjpeg JPEG crops, all on the GPU."""
    import dask

    from faceetl import extract_faces
    from faceetl.images import decode_png

    paths = [str(p) for p in PHOTOS]
    with dask.config.set(scheduler="threads"):
        kw = dict(backend="retinaface", device="cuda", half=False, crop_format="jpeg:95")
        host = extract_faces(paths, tensor_inputs=False, **kw).compute()
        dev = extract_faces(paths, crop_dir=str(tmp_path), **kw).compute()
    assert '"tensor_inputs": true' in dev["provenance"].iloc[0]
    host, dev = _same_rows(host, dev)
    ok = dev["status"] == "ok"
    for a, b in zip(host["crop"][ok], dev["crop"][ok], strict=True):
        assert b[:2] == b"\xff\xd8"  # encoded as JPEG on the device
        assert np.abs(decode_png(a).astype(int) - decode_png(b).astype(int)).mean() < 3.0


def test_canvases_sized_from_free_memory_fit() -> None:
    import cv2
    import torch

    from faceetl.backends.retinaface import FREE_MEMORY_SHARE, RetinaFaceDetector

    det = RetinaFaceDetector(device="cuda")
    assert det.auto_batch and det._bytes_per_pixel > 0
    budget = det._budget()
    photos = [cv2.resize(load_rgb(p), (1024, 768)) for p in PHOTOS] * 8
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = det.detect_batch(photos)
    peak = torch.cuda.max_memory_allocated() - before
    assert len(out) == len(photos)
    free, _ = torch.cuda.mem_get_info()
    # a canvas took no more than its share of free memory (the estimate is an upper bound)
    assert peak <= FREE_MEMORY_SHARE * (free + peak), (peak, budget)
    groups = det._groups([(768, 1024)] * len(photos))
    assert max(len(g) for g in groups) * 768 * 1024 <= max(budget, 768 * 1024)
