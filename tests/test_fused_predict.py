"""Detection, alignment and predictions in one pass (one decode per image), and predict() on a
frame whose stored crops already have the predictor's geometry (no original read again)."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest

import faceetl
from faceetl.images import load_image as real_load_image
from faceetl.images import read_image_bytes as real_read_image_bytes
from faceetl.pipeline import predict as predict_module
from faceetl.pipeline import stages as extract_module
from helpers import IMAGES

PHOTOS = [
    str(IMAGES / "single" / "fr_obama_small.jpg"),
    str(IMAGES / "group" / "fr_two_people.jpg"),
    str(IMAGES / "single" / "missing.jpg"),  # an error row stays an error row
]


@pytest.fixture()
def reads(monkeypatch):
    """Counts the originals each module decodes (the real decoder still does the work)."""
    counts = {"extract": 0, "predict": 0}

    def counting(name, real):
        def load(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return load

    # the extraction pass reads each file's bytes once, then decodes them
    monkeypatch.setattr(extract_module, "read_image_bytes",
                        counting("extract", real_read_image_bytes))  # fmt: skip
    monkeypatch.setattr(predict_module, "load_image", counting("predict", real_load_image))
    return counts


def _same(a, b, columns):
    assert list(a["path"]) == list(b["path"]) and list(a["face"]) == list(b["face"])
    for c in columns:
        for x, y in zip(a[c], b[c], strict=True):
            if _missing(x) or _missing(y):
                assert _missing(x) and _missing(y), c
            else:
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), atol=1e-5)


def _missing(v) -> bool:
    return v is None or v is pd.NA


def test_fused_predictions_equal_the_two_pass_result_with_one_decode_per_image(reads):
    cols = ["embedding_vector", "embedding_vector_normalized"]
    with dask.config.set(scheduler="sync"):
        two_pass = faceetl.predict(
            faceetl.extract_faces(PHOTOS, backend="dlib"), model="embedding"
        ).compute()
        assert reads["predict"] > 0
        reads.update(extract=0, predict=0)
        fused = faceetl.extract_faces(PHOTOS, backend="dlib", predict=["embedding"]).compute()
    assert reads == {"extract": len(PHOTOS), "predict": 0}  # one decode per image, in all
    assert list(fused.columns) == list(two_pass.columns)
    assert (fused["status"] == "ok").sum() == 3
    _same(fused, two_pass, cols)
    assert fused["embedding_provenance"].notna().sum() == 3


def test_predict_uses_stored_crops_of_the_same_geometry(reads):
    with dask.config.set(scheduler="sync"):
        faces = faceetl.extract_faces(PHOTOS, backend="dlib", template="dlib", size=150)
        stored = faceetl.predict(faces, model="embedding").compute()
        assert reads["predict"] == 0  # the crops were the predictor's own: no original re-read
        other = faceetl.extract_faces(PHOTOS, backend="dlib")  # arcface 112: must re-read
        reads.update(predict=0)
        again = faceetl.predict(other, model="embedding").compute()
        assert reads["predict"] == 2
    _same(stored, again, ["embedding_vector"])


def test_unknown_predictor_fails_before_any_work():
    with pytest.raises(ValueError, match="unknown model"):
        faceetl.extract_faces(PHOTOS, backend="dlib", predict=["age"])
    with pytest.raises(TypeError, match="netwrok"):
        faceetl.extract_faces(PHOTOS, backend="dlib", predict={"embedding": {"netwrok": "x"}})
