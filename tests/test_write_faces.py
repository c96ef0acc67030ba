"""``faceetl.write_faces``: a lazy frame computed once and written where pandas, Dask and
faceetl all read it; ``read_faces`` of a run's output folder reads its dataset."""

from __future__ import annotations

import threading

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

import faceetl
from faceetl import register_backend
from faceetl.backends.base import REGISTRY
from faceetl.backends.opencv import OpenCVDetector
from helpers import IMAGES

PHOTOS = [str(p) for p in sorted((IMAGES / "single").glob("*.jpg"))[:3]]
CALLS: list[int] = []
_LOCK = threading.Lock()


@register_backend("counted-opencv", workers=2)
class CountedOpenCV(OpenCVDetector):
    """OpenCV's detector, counting the images it is given (to see a frame computed once)."""

    name = "counted-opencv"

    def detect_batch(self, images):
        with _LOCK:
            CALLS.append(len(images))
        return super().detect_batch(images)


@pytest.fixture(autouse=True)
def _forget():
    CALLS.clear()
    yield
    REGISTRY.clear()


def test_a_lazy_frame_is_computed_once_and_reads_back_everywhere(tmp_path, capsys):
    paths = faceetl.read_images(PHOTOS, partition_size=1)
    faces = faceetl.extract_faces(paths, backend="counted-opencv")
    out = tmp_path / "faces"
    with dask.config.set(scheduler="threads", num_workers=2):
        assert faceetl.write_faces(faces, out) == str(out)
    assert sum(CALLS) == len(PHOTOS)  # each image detected once
    said = capsys.readouterr().out
    assert f"-> {out}" in said and "images" in said
    ours = faceetl.read_faces(out)
    plain = pd.read_parquet(out)
    lazy = dd.read_parquet(out).compute()
    assert sorted(ours["path"]) == sorted(plain["path"]) == sorted(lazy["path"])
    assert set(ours["path"]) == set(PHOTOS)
    assert str(ours["landmarks"].dtype).startswith("list<")  # Arrow lists, not objects
    ok = ours[ours["status"] == "ok"]
    assert len(ok) and all(len(v) == 10 for v in ok["landmarks"])
    with pytest.raises(FileExistsError):
        faceetl.write_faces(faces, out)


def test_read_faces_of_a_run_output_folder_reads_its_dataset(tmp_path):
    with dask.config.set(scheduler="threads", num_workers=2):
        faceetl.Pife("opencv", 1, progress=False).extract(PHOTOS, tmp_path / "out")
    got = faceetl.read_faces(tmp_path / "out")
    assert set(got["path"]) == set(PHOTOS)
    assert got["crop_path"].notna().any()
