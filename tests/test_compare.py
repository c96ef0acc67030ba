"""faceetl.compare / faceetl.verify on real dlib embeddings of the shared photos, and the
normalised embedding column beside the raw one.

Photos (downscaled to 700 px, as tests/test_predictor_embedding.py does for dlib's HOG): Obama
alone and on the left of a two-person photo; the woman of deepface's img5 alone and on the left
of deepface's couple photo. Same person: those two pairs; different: every other pair.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

import faceetl
from faceetl import extract_faces, predict
from faceetl.compare import THRESHOLDS, l2_normalize, vectors
from helpers import IMAGES

PHOTOS = {
    "obama": IMAGES / "single" / "fr_obama_small.jpg",
    "two": IMAGES / "group" / "fr_two_people.jpg",  # left: Obama
    "img5": IMAGES / "single" / "deepface_img5.jpg",
    "couple": IMAGES / "group" / "deepface_couple.jpg",  # left: the woman of img5
}
VECTOR = pd.ArrowDtype(pa.list_(pa.float32()))


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """dlib faces of the four photos with their embeddings, named ``<photo>`` or
    ``<photo>_left`` / ``<photo>_right``, in that order."""
    folder = tmp_path_factory.mktemp("compare")
    paths = []
    for name, src in PHOTOS.items():
        img = Image.open(src).convert("RGB")
        s = 700 / max(img.size)
        if s < 1:
            img = img.resize((round(img.width * s), round(img.height * s)), Image.LANCZOS)
        img.save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    with dask.config.set(scheduler="sync"):
        df = predict(extract_faces(paths, backend="dlib"), model="embedding").compute()
    df = df[df["status"] == "ok"].copy()
    df["photo"] = df["path"].map(lambda p: Path(p).stem)
    df = df.sort_values(["photo", "x1"])
    names = []
    for photo, group in df.groupby("photo", sort=False):
        names += [photo] if len(group) == 1 else [f"{photo}_left", f"{photo}_right"]
    df["name"] = names
    return df.set_index("name").loc[["obama", "two_left", "two_right", "img5"] + COUPLE]


COUPLE = ["couple_left", "couple_right"]
SAME = {frozenset({"obama", "two_left"}), frozenset({"img5", "couple_left"})}


def test_normalised_column_beside_the_raw_one(faces):
    assert faces["embedding_vector"].dtype == VECTOR
    assert faces["embedding_vector_normalized"].dtype == VECTOR
    raw = np.stack([np.asarray(v, np.float32) for v in faces["embedding_vector"]])
    unit = np.stack([np.asarray(v, np.float32) for v in faces["embedding_vector_normalized"]])
    assert raw.shape == unit.shape == (6, 128)
    norms = np.linalg.norm(raw, axis=1)
    assert (np.abs(norms - 1) > 0.05).all()  # dlib's raw descriptors are not unit vectors
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(unit, raw / norms[:, None], atol=1e-6)


def test_same_person_and_different_people_from_frame_rows(faces):
    names = list(faces.index)
    n_same = n_diff = 0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = faceetl.compare(faces.loc[a], faces.loc[b])  # one row each
            want = np.linalg.norm(vectors(faces.loc[a]) - vectors(faces.loc[b]))
            assert isinstance(d, float) and d == pytest.approx(want, abs=1e-6)
            same = frozenset({a, b}) in SAME
            assert faceetl.verify(faces.loc[a], faces.loc[b]) is same, (a, b, d)
            n_same, n_diff = n_same + same, n_diff + (not same)
    assert (n_same, n_diff) == (2, 13)


def test_one_against_many_and_all_pairs(faces):
    obama = faces.loc["obama"]
    others = faces.drop(index="obama")  # a frame: its embedding_vector column
    d = faceetl.compare(obama, others)
    assert d.shape == (5,) and d.dtype == np.float32
    assert list(faceetl.verify(obama, others)) == [True] + [False] * 4  # only two_left
    v = vectors(faces)
    pairs = faceetl.compare(v[:, None], v[None])  # all pairs by broadcasting
    assert pairs.shape == (6, 6)
    np.testing.assert_allclose(pairs, pairs.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(pairs), 0, atol=1e-6)
    same = faceetl.verify(v[:, None], v[None])
    want = np.eye(6, dtype=bool)
    for pair in SAME:
        i, j = (list(faces.index).index(n) for n in pair)
        want[i, j] = want[j, i] = True
    assert (same == want).all()
    # the column and row-by-row stacks give the same distances
    np.testing.assert_allclose(
        faceetl.compare(faces["embedding_vector"], faces.loc[["two_left"] * 6]), pairs[:, 1]
    )


def test_dlib_threshold_is_the_authors_and_inclusive():
    assert THRESHOLDS["dlib"] == 0.6
    a, b = np.zeros(128, np.float32), np.zeros(128, np.float32)
    b[0] = 0.5  # exactly representable: the boundary itself counts as the same person
    assert faceetl.compare(a, b) == 0.5
    assert faceetl.verify(a, b, threshold=0.5) and not faceetl.verify(a, b, threshold=0.49)
    b[0] = 0.61
    assert not faceetl.verify(a, b) and faceetl.verify(a, b, threshold=0.7)


def test_facenet_has_no_published_threshold_and_compares_unit_vectors():
    rng = np.random.default_rng(0)
    u, w = l2_normalize(rng.normal(size=(2, 512)))
    with pytest.raises(ValueError, match="threshold="):
        faceetl.verify(u, w, model="facenet")
    assert faceetl.compare(3 * u, u, model="facenet") == pytest.approx(0, abs=1e-6)
    d = faceetl.compare(u, w, model="facenet")
    assert d == pytest.approx(np.linalg.norm(u - w), abs=1e-6)
    assert faceetl.verify(u, w, model="facenet", threshold=d + 1e-3)
    assert not faceetl.verify(u, w, model="facenet", threshold=d - 1e-3)


def test_wrong_inputs_are_clear_errors(faces):
    with pytest.raises(ValueError, match="unknown embedding model"):
        faceetl.compare(faces.loc["obama"], faces.loc["img5"], model="arcface")
    with pytest.raises(ValueError, match="network \\['dlib'\\] compared as model='facenet'"):
        faceetl.compare(faces.loc["obama"], faces.loc["img5"], model="facenet")
    with pytest.raises(ValueError, match="128 values"):
        faceetl.compare(np.zeros(512), np.zeros(128))
    with pytest.raises(ValueError, match="cannot pair"):
        faceetl.compare(np.zeros((2, 128)), np.zeros((3, 128)))
    rows = faces.reset_index()[["embedding_vector", "embedding_network"]].astype(
        {"embedding_vector": VECTOR}
    )
    rows.loc[len(rows)] = [None, None]  # a row without a face
    with pytest.raises(ValueError, match="1 of 7 rows have no embedding"):
        faceetl.compare(rows, np.zeros(128))
    with pytest.raises(ValueError, match="no 'embedding_vector' column"):
        faceetl.compare(pd.DataFrame({"x": [1]}), np.zeros(128))
