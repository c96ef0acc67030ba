"""The point of standardised alignment: the same face found by two backends gives the same crop.

Each backend's crops are compared through where the same physical eyes (dlib's 68-point eye
centres, the reference) land in them, as a fraction of the 112 px crop (faceetl.evaluate).
"""

from __future__ import annotations

import itertools

import dask
import pytest

from conftest import IMAGES
from faceetl import extract_faces, landmarks_array
from faceetl.evaluate import eye_agreement, match_faces

PHOTOS = [
    *sorted((IMAGES / "single").glob("*.jpg")),
    *sorted((IMAGES / "dlib_pascal").glob("*.jpg")),
    IMAGES / "group" / "facenet_multiface.jpg",
    IMAGES / "group" / "fr_two_people.jpg",
    IMAGES / "group" / "insightface_t1.jpg",
]
LANDMARK_BACKENDS = {"dlib": {}, "retinaface": {}, "mtcnn": {}, "mediapipe": {"model": "full"}}
EYE_BACKENDS = {"opencv": {}, "ssd": {}}
MIN_EYE_PX = 40  # faces whose eyes are at least this far apart in the photo (landmark precision
# is bounded by pixels: on a face with 20 px between the eyes one pixel is 5% of a 112 px crop)


@pytest.fixture(scope="module")
def tables():
    paths = [str(p) for p in PHOTOS]
    out = {}
    with dask.config.set(scheduler="sync"):
        for name, params in {**LANDMARK_BACKENDS, **EYE_BACKENDS}.items():
            out[name] = extract_faces(paths, backend=name, **params).compute().reset_index(drop=True)
    return out


def _agreement(tables, a, b):
    ref = tables["dlib"]
    ag = eye_agreement(tables[a], tables[b], ref, 112)
    lm = landmarks_array(ref)
    eye_px = ((lm[:, 1] - lm[:, 0]) ** 2).sum(axis=1) ** 0.5
    to_ref = match_faces(tables[a], ref).set_index("ia")["ib"]
    big = [eye_px[ref.index.get_loc(to_ref[i])] >= MIN_EYE_PX for i in ag["ia"]]
    return ag[big]["dist"]


@pytest.mark.parametrize("a,b", list(itertools.combinations(LANDMARK_BACKENDS, 2)))
def test_landmark_backends_agree_within_3_percent(tables, a, b):
    d = _agreement(tables, a, b)
    assert len(d) >= 10
    assert d.median() <= 0.02, d.describe()
    assert (d <= 0.03).mean() >= 0.9, d.describe()
    assert d.max() <= 0.05, d.describe()


@pytest.mark.parametrize("a", list(EYE_BACKENDS))
@pytest.mark.parametrize("b", list(LANDMARK_BACKENDS))
def test_eye_only_backends_agree(tables, a, b):
    d = _agreement(tables, a, b)
    assert len(d) >= 10
    assert d.median() <= 0.03, d.describe()
