"""The device data path (decode, detect and align where the backend takes tensors), run on CPU
tensors: the same rows as the host path, and the same error rows for bad inputs."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from faceetl import extract_faces
from faceetl.images import decode_png
from helpers import IMAGES, make_bad_inputs

PHOTOS = sorted((IMAGES / "group").glob("*.jpg")) + sorted((IMAGES / "single").glob("*.jpg"))


def _rows(paths, scheduler, backend="retinaface", **params):
    with dask.config.set(scheduler=scheduler):
        df = extract_faces([str(p) for p in paths], backend=backend, **params).compute()
    return df.sort_values(["path", "face"]).reset_index(drop=True)


@pytest.fixture(scope="module", params=["retinaface", "mtcnn"])
def host(request, faceetl_home):
    return request.param, _rows(PHOTOS, "sync", request.param)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_tensor_path_gives_the_host_rows(host, scheduler):
    backend, host = host
    dev = _rows(PHOTOS, scheduler, backend, tensor_inputs=True)
    assert list(dev["path"]) == list(host["path"]) and list(dev["face"]) == list(host["face"])
    assert (dev["status"] == host["status"]).all()
    box = ["x1", "y1", "x2", "y2"]
    diff = np.abs(dev[box].to_numpy() - host[box].to_numpy()).max(axis=1)
    size = (host["x2"] - host["x1"]).to_numpy()
    # identical where the image runs at its own size (mtcnn: everywhere); a retinaface photo
    # over max_side is downscaled by torch instead of cv2 (levels differ by at most 1):
    # measured 3.1 px on a 600 px face
    assert (diff <= np.maximum(1.0, 0.01 * size)).all(), diff.max()
    assert (diff == 0).mean() > 0.8
    crops_d = [decode_png(c).astype(int) for c in dev["crop"]]
    crops_h = [decode_png(c).astype(int) for c in host["crop"]]
    same_box = diff == 0
    d = np.array([np.abs(a - b).max() for a, b in zip(crops_d, crops_h, strict=True)])
    m = np.array([np.abs(a - b).mean() for a, b in zip(crops_d, crops_h, strict=True)])
    # grid_sample against cv2.warpAffine's fixed-point bilinear (tests/test_batched.py: 4 / 255)
    assert d[same_box].max() <= 4 and m[same_box].max() < 0.5, (d.max(), m.max())


@pytest.mark.slow
def test_tensor_path_bad_inputs_give_the_host_error_rows(tmp_path, faceetl_home):
    bad = make_bad_inputs(tmp_path)
    paths = [p for p in bad.values() if not isinstance(p, bytes)] + [PHOTOS[-1]]
    host = _rows(paths, "sync", max_pixels=50_000_000)
    dev = _rows(paths, "sync", max_pixels=50_000_000, tensor_inputs=True)
    assert len(dev) == len(host) and set(dev["path"]) == {str(p) for p in paths}
    pd_host = host.set_index(["path", "face"])["status"]
    pd_dev = dev.set_index(["path", "face"])["status"]
    assert pd_dev.to_dict() == pd_host.to_dict()


@pytest.mark.slow
def test_tensor_path_jpeg_crops_and_files(tmp_path, faceetl_home):
    dev = _rows(PHOTOS[-2:], "sync", tensor_inputs=True, crop_format="jpeg:90",
                crop_dir=str(tmp_path / "crops"))  # fmt: skip
    ok = dev[dev["status"] == "ok"]
    assert len(ok) >= 2
    for c, p in zip(ok["crop"], ok["crop_path"], strict=True):
        assert c[:2] == b"\xff\xd8" and open(p, "rb").read() == c
        assert decode_png(c).shape == (112, 112, 3)


@pytest.mark.slow
def test_a_failing_device_decode_falls_back_to_the_host(monkeypatch, tmp_path, faceetl_home):
    import faceetl.pipeline.device as ex

    def device_fails(*args, **kwargs):  # fault injection: the device decoder itself errors
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(ex, "decode_jpegs", device_fails)
    paths = [PHOTOS[-1], tmp_path / "missing.jpg"]
    host = _rows(paths, "sync")
    dev = _rows(paths, "sync", tensor_inputs=True)
    assert list(dev["status"]) == list(host["status"])
    assert set(dev["status"]) == {"ok", "error: file not found"}
    ok = dev["status"] == "ok"
    assert np.abs(dev["x1"][ok].to_numpy() - host["x1"][ok].to_numpy()).max() <= 1.0
