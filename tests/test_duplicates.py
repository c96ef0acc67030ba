"""faceetl.duplicates on real photos: byte-identical files and re-saved copies of one photo.

images/identities (55 aligned chips of 5 people, the dlib backend finds one face in each) holds
one byte-identical pair, two re-encoded pairs (DATA.md), and one more copy of a photo that
DATA.md does not name: John_Simm 000300_00470148 / 000304_00470122, brightened and softened
(grey pixels correlate 0.992, as the re-encoded pairs' 0.993 and 0.997; every other pair at most
0.89; benchmarks/duplicates.py), which duplicates() finds as "near" too.
"""

from __future__ import annotations

import hashlib
import shutil

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import faceetl
from faceetl.curate.duplicates import (
    MAX_DISTANCE,
    band_rows,
    near_links,
    popcount,
    popcount_bytes,
)
from helpers import IMAGES

IDENTITIES = IMAGES / "identities"
EXACT = {("John_Shimkus/000378_02340151.jpg", "John_Shimkus/000378_03227610.jpg")}
NEAR = {
    ("John_Shimkus/000375_03227651.jpg", "John_Shimkus/000376_02340068.jpg"),
    ("John_Salley/000189_02159361.jpg", "John_Salley/000192_02159531.jpg"),
    ("John_Simm/000300_00470148.jpg", "John_Simm/000304_00470122.jpg"),  # edited copy
}


@pytest.fixture(scope="module")
def faces() -> pd.DataFrame:
    """The faces of images/identities (dlib backend: one per chip; ArcFace 112 px PNG crops)."""
    with dask.config.set(scheduler="sync"):
        df = faceetl.extract_faces(str(IDENTITIES), backend="dlib").compute()
    assert (df["status"] == "ok").all() and len(df) == 55
    return df.reset_index(drop=True)


@pytest.fixture(scope="module")
def found(faces) -> pd.DataFrame:
    return faceetl.duplicates(faces)  # no embeddings: the pHash


@pytest.fixture(scope="module")
def embedded() -> dict[str, pd.DataFrame]:
    """The chips' faces with dlib embeddings, by backend (each aligns them its own way)."""
    return {}


def _embedded(embedded: dict, backend: str) -> pd.DataFrame:
    if backend not in embedded:
        with dask.config.set(scheduler="sync"):
            df = faceetl.extract_faces(str(IDENTITIES), backend=backend,
                                       predict="embedding").compute()  # fmt: skip
        assert (df["status"] == "ok").all() and len(df) == 55
        embedded[backend] = df.reset_index(drop=True)
    return embedded[backend]


@pytest.mark.parametrize("backend", ["retinaface", pytest.param("mtcnn", marks=pytest.mark.slow),
                                     pytest.param("dlib", marks=pytest.mark.slow)])  # fmt: skip
def test_embeddings_give_the_copies_on_every_backend(embedded, backend):
    """With embeddings (the default where the frame has them) the copies of one photo and
    nothing else, whichever backend aligned the faces (the pHash does so on dlib's only)."""
    pytest.importorskip("faiss")
    df = _embedded(embedded, backend)
    out = faceetl.duplicates(df)
    assert _pairs(out) == {**dict.fromkeys(EXACT, "exact"), **dict.fromkeys(NEAR, "near")}
    assert out.groupby("duplicate_group")["duplicate_keep"].sum().eq(1).all()
    if backend == "retinaface":  # where the pHash puts two photos of one man together
        hashed = _pairs(faceetl.duplicates(df, near="phash"))
        assert ("John_Simm/000297_00470170.jpg", "John_Simm/000300_00470148.jpg") in hashed


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_embeddings_on_dask(embedded, scheduler):
    pytest.importorskip("faiss")
    df = _embedded(embedded, "retinaface")
    with dask.config.set(scheduler=scheduler, num_workers=2):
        out = faceetl.duplicates(dd.from_pandas(df, npartitions=3))
        assert isinstance(out, dd.DataFrame)
        got = out.compute()
    pd.testing.assert_frame_equal(got.reset_index(drop=True), faceetl.duplicates(df))


def _pairs(df: pd.DataFrame) -> dict[tuple[str, ...], str]:
    """Each group as its members' paths (relative to images/identities) -> its kind."""
    grouped = df[df["duplicate_group"].notna()]
    out = {}
    for _, g in grouped.groupby("duplicate_group"):
        names = tuple(sorted(str(p)[len(str(IDENTITIES)) + 1 :] for p in g["path"]))
        assert g["duplicate_kind"].nunique() == 1
        out[names] = g["duplicate_kind"].iloc[0]
    return out


def test_identities_give_the_copies_and_nothing_else(faces, found):
    assert list(found.columns) == [*faces.columns, "duplicate_group", "duplicate_kind",
                                   "duplicate_keep"]  # fmt: skip
    assert _pairs(found) == {**dict.fromkeys(EXACT, "exact"), **dict.fromkeys(NEAR, "near")}
    assert sorted(found["duplicate_group"].dropna().unique()) == [0, 1, 2, 3]
    alone = found[found["duplicate_group"].isna()]
    assert alone["duplicate_kind"].isna().all() and alone["duplicate_keep"].all()
    pair = found[found["path"].str.contains("000378_")]
    assert pair["file_sha256"].nunique() == 1  # the same bytes
    assert str(found["duplicate_group"].dtype) == "Int64" and found["duplicate_keep"].dtype == bool


def test_the_member_kept_follows_the_rule(found):
    """No face_size or blur column here: the larger box, then the higher score, then the path."""
    grouped = found[found["duplicate_group"].notna()]
    assert grouped.groupby("duplicate_group")["duplicate_keep"].sum().eq(1).all()
    for _, g in grouped.groupby("duplicate_group"):
        area = (g["x2"] - g["x1"]) * (g["y2"] - g["y1"])
        best = g.assign(a=-area, s=-g["score"]).sort_values(["a", "s", "path"]).index[0]
        assert g.loc[best, "duplicate_keep"], g[["path", "score"]]


def test_face_size_then_blur_then_score_decide(faces):
    """On one re-encoded pair: face_size first, blur breaks its ties, then score, then path."""
    pair = faces[faces["path"].str.contains("John_Salley/00018|John_Salley/00019")]
    pair = pair[pair["path"].str.contains("000189_02159361|000192_02159531")].sort_values("path")
    assert len(pair) == 2
    first, second = pair["path"].tolist()

    def kept(**columns) -> str:
        out = faceetl.duplicates(pair.assign(**columns))
        return out.loc[out["duplicate_keep"], "path"].item()

    assert kept(face_size=[30.0, 40.0], blur=[90.0, 10.0], score=[0.9, 0.1]) == second
    assert kept(face_size=[40.0, 40.0], blur=[90.0, 10.0], score=[0.1, 0.9]) == first
    assert kept(face_size=[40.0, np.nan], blur=[10.0, 90.0]) == first  # missing: last
    assert kept(face_size=[40.0, 40.0], blur=[50.0, 50.0], score=[0.1, 0.9]) == second
    assert kept(face_size=[40.0, 40.0], blur=[50.0, 50.0], score=[0.5, 0.5]) == first


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_dask_gives_the_pandas_result(faces, found, scheduler):
    lazy = dd.from_pandas(faces, npartitions=4)
    with dask.config.set(scheduler=scheduler, num_workers=2):
        out = faceetl.duplicates(lazy)
        assert isinstance(out, dd.DataFrame)
        got = out.compute()
    pd.testing.assert_frame_equal(got, found)


def test_a_copied_file_is_an_exact_duplicate_end_to_end(tmp_path):
    src = IDENTITIES / "John_Savage"
    one, other = sorted(src.glob("*.jpg"))[:2]
    shutil.copy(one, tmp_path / "a.jpg")
    shutil.copy(one, tmp_path / "copy of a.jpg")
    shutil.copy(other, tmp_path / "b.jpg")
    with dask.config.set(scheduler="sync"):
        out = faceetl.duplicates(faceetl.extract_faces(str(tmp_path), backend="dlib")).compute()
    out = out.set_index(out["path"].map(lambda p: p.rsplit("/", 1)[1]))
    sha = hashlib.sha256(one.read_bytes()).hexdigest()
    assert out.loc["a.jpg", "file_sha256"] == out.loc["copy of a.jpg", "file_sha256"] == sha
    assert out.loc["b.jpg", "file_sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    assert list(out.loc[["a.jpg", "copy of a.jpg"], "duplicate_kind"]) == ["exact", "exact"]
    assert out.loc[["a.jpg", "copy of a.jpg"], "duplicate_keep"].sum() == 1
    assert pd.isna(out.loc["b.jpg", "duplicate_group"]) and out.loc["b.jpg", "duplicate_keep"]


def test_banding_finds_every_pair_within_the_distance_and_no_other():
    """Codes differing in up to MAX_DISTANCE bits, spread so that they agree on one band only,
    are found (once); those further apart are not."""
    rng = np.random.default_rng(0)
    base = int(rng.integers(-(2**63), 2**63 - 1))
    bands = MAX_DISTANCE + 1

    def flipped(bits) -> int:
        mask = np.uint64(sum(1 << (63 - b) for b in bits))
        return int((np.array([base], np.int64).view(np.uint64) ^ mask).view(np.int64)[0])

    near = flipped(range(1, MAX_DISTANCE + 1))  # one bit in each band but band 0
    far = flipped(range(8, 8 + bands))  # one more bit: one in each band
    codes = [base, near, far]
    assert list(popcount(np.array(codes) ^ base)) == [0, MAX_DISTANCE, MAX_DISTANCE + 1]
    assert popcount(np.array([far ^ near]))[0] > MAX_DISTANCE
    sig = pd.DataFrame({
        "path": pd.array(["base", "near", "far"], "string[pyarrow]"),
        "face": [0, 0, 0], "file_sha256": pd.array([None] * 3, "string[pyarrow]"),
        "phash": pd.array(codes, "Int64"), "size": 1.0, "blur": np.nan, "score": 1.0,
    })  # fmt: skip
    links = near_links(band_rows(sig, bands), MAX_DISTANCE)
    assert set(links["path"]) == {"base", "near"}
    assert set(links["link_path"]) == {"base"}


def test_popcount_without_numpy2_agrees():
    x = np.random.default_rng(1).integers(-(2**63), 2**63 - 1, size=(50, 3), dtype=np.int64)
    assert (popcount(x) == popcount_bytes(x)).all()


def test_wrong_calls_are_refused(found):
    with pytest.raises(ValueError, match="applied before"):
        faceetl.duplicates(found)
    with pytest.raises(ValueError, match="bits of 64"):
        faceetl.duplicates(found.drop(columns=list(found.columns[-3:])), max_distance=64)
    with pytest.raises(TypeError, match="pandas or Dask"):
        faceetl.duplicates(np.zeros((2, 2)))
