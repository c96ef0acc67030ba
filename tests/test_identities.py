"""Identity clusters and nearest-face search over real dlib descriptors of shared/images/identities
(5 people x 11 aligned chips, labelled by folder), against dlib's own Chinese Whispers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from faceetl.curate.graph import chinese_whispers, pair_scores
from helpers import IMAGES, load_rgb

pytest.importorskip("faiss")
dlib = pytest.importorskip("dlib")

VEC = pd.ArrowDtype(pa.list_(pa.float32()))
FOLDER = IMAGES / "identities"


@pytest.fixture(scope="module")
def chips() -> pd.DataFrame:
    """A face frame of the 55 chips (already dlib's 150 px chips) with their dlib embeddings."""
    from faceetl.compare import l2_normalize
    from faceetl.predictors.base import get_predictor

    files = sorted(FOLDER.glob("*/*.jpg"))
    vec = get_predictor("embedding").embed([load_rgb(f) for f in files])
    return pd.DataFrame({
        "path": pd.Series([str(f) for f in files], dtype="string[pyarrow]"),
        "face": np.zeros(len(files), np.int64),
        "status": "ok",
        "embedding_vector": pd.Series(list(vec), dtype=VEC),
        "embedding_vector_normalized": pd.Series(list(l2_normalize(vec)), dtype=VEC),
        "embedding_network": "dlib",
        "person": [f.parent.name for f in files],
    })  # fmt: skip


def test_as_good_as_dlib_chinese_whispers(chips: pd.DataFrame) -> None:
    from faceetl import identities

    out = identities(chips)
    ours = pair_scores(out["person"].to_numpy(), out["identity"].to_numpy(np.int64))
    raw = [dlib.vector(np.asarray(v, float)) for v in chips["embedding_vector"]]
    print(f"\n{'':28s} {'pair P':>7s} {'pair R':>7s} {'pair F':>7s} {'BCubed F':>8s}")
    theirs = {}
    for t in (0.5, 0.6):  # dlib's face clustering example, and its same-person threshold
        labels = np.asarray(dlib.chinese_whispers_clustering(raw, t))
        theirs[t] = pair_scores(chips["person"].to_numpy(), labels)
    for name, s in [("faceetl.identities", ours)] + [
        (f"dlib.chinese_whispers {t}", s) for t, s in theirs.items()
    ]:
        print(f"{name:28s} {s['pairwise_precision']:7.3f} {s['pairwise_recall']:7.3f} "
              f"{s['pairwise_f']:7.3f} {s['bcubed_f']:8.3f}")  # fmt: skip
    for key in ("pairwise_precision", "pairwise_recall", "pairwise_f", "bcubed_f"):
        assert ours[key] >= theirs[0.6][key] - 1e-9, key
    assert ours["pairwise_f"] == 1.0  # every person one identity, no two people together
    assert sorted(out["identity_size"].unique()) == [11]


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_dask_gives_the_pandas_clusters(chips: pd.DataFrame, scheduler: str) -> None:
    import dask.dataframe as dd

    from faceetl import identities

    lazy = identities(dd.from_pandas(chips, npartitions=4))
    assert isinstance(lazy, dd.DataFrame)
    got = lazy.compute(scheduler=scheduler)
    want = identities(chips)
    assert list(got["path"]) == list(want["path"])
    same = pair_scores(want["identity"].to_numpy(np.int64), got["identity"].to_numpy(np.int64))
    assert same["pairwise_f"] == 1.0


def test_faces_without_embedding_keep_their_rows(chips: pd.DataFrame) -> None:
    from faceetl import identities

    faces = chips.copy()
    faces.loc[[0, 20], "embedding_vector_normalized"] = None
    faces.loc[[0, 20], "status"] = "no_face"
    out = identities(faces)
    assert len(out) == len(faces)
    assert out["identity"].isna().tolist() == [i in (0, 20) for i in range(len(faces))]
    sized = out.dropna(subset=["identity"])
    counts = sized.groupby("identity")["path"].transform("size")
    assert (sized["identity_size"] == counts).all()


def test_partitions_are_computed_once(chips: pd.DataFrame) -> None:
    import dask.dataframe as dd
    from dask import delayed

    from faceetl import identities

    calls: list[int] = []

    def part(i: int) -> pd.DataFrame:
        calls.append(i)
        return chips.iloc[i * 11 : (i + 1) * 11]

    frame = dd.from_delayed([delayed(part)(i) for i in range(5)], meta=chips.iloc[:0])
    identities(frame).compute(scheduler="sync")
    assert sorted(calls) == [0, 1, 2, 3, 4]


def test_search_finds_the_same_person(chips: pd.DataFrame) -> None:
    from faceetl import search

    got = search(chips, chips, k=3)
    assert len(got) == 3 * len(chips)
    first = got[got["rank"] == 0]
    assert first["distance"].max() < 1e-3  # itself (or its byte-identical twin), at 0
    top2 = got[got["rank"] <= 1]
    assert (top2["match_path"] == top2["query_path"]).sum() == len(chips)
    second = got[got["rank"] == 1].merge(chips[["path", "person"]], left_on="match_path",
                                         right_on="path")  # fmt: skip
    person = dict(zip(chips["path"], chips["person"], strict=True))
    assert (second["person"] == second["query_path"].map(person)).all()
    assert got.groupby("query_path")["distance"].apply(lambda d: d.is_monotonic_increasing).all()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_saved_index_answers_as_the_built_one(chips, where, tmp_path, request) -> None:
    import dask.dataframe as dd

    from faceetl import FaceIndex, identities, search

    if where == "s3":
        s3 = request.getfixturevalue("s3")
        url, opts = f"{s3['bucket']}/gallery.index", s3["storage_options"]
    else:
        url, opts = str(tmp_path / "gallery.index"), None
    gallery = dd.from_pandas(identities(chips), npartitions=3)
    FaceIndex.build(gallery).save(url, storage_options=opts)
    queries = dd.from_pandas(chips.iloc[::5], npartitions=2)
    saved = search(url, queries, k=4, storage_options=opts).compute(scheduler="threads")
    built = search(gallery, queries, k=4).compute(scheduler="threads")
    cols = ["query_path", "rank", "match_path"]
    key = ["query_path", "rank"]
    assert (
        saved[cols].sort_values(key).values.tolist() == built[cols].sort_values(key).values.tolist()
    )
    assert saved["match_identity"].notna().all()  # the kept label comes back


def test_saved_index_missing_is_a_clear_error(tmp_path, chips) -> None:
    from faceetl import search

    with pytest.raises(FileNotFoundError, match="not a saved face index"):
        search(str(tmp_path / "nothing"), chips)


def test_chinese_whispers_on_small_graphs() -> None:
    # two 5-cliques joined by one edge stay two clusters; lone nodes are their own
    clique = [(a, b) for a in range(5) for b in range(a + 1, 5)]
    edges = np.array(clique + [(a + 5, b + 5) for a, b in clique] + [(4, 5)])
    labels = chinese_whispers(edges[:, 0], edges[:, 1], 12)
    assert len(set(labels[:5])) == 1 and len(set(labels[5:10])) == 1
    assert labels[0] != labels[5]
    assert len({labels[0], labels[5], labels[10], labels[11]}) == 4
    assert pair_scores([0] * 5 + [1] * 5 + [2, 3], labels)["pairwise_f"] == 1.0


def test_pair_scores_by_hand() -> None:
    # truth {a,b,c} {d}; prediction {a,b} {c,d}: 1 of 2 predicted pairs right, 1 of 3 true ones
    s = pair_scores(["x", "x", "x", "y"], [0, 0, 1, 1])
    assert s["pairwise_precision"] == pytest.approx(0.5)
    assert s["pairwise_recall"] == pytest.approx(1 / 3)
    # BCubed precision: a,b 1; c,d 1/2 -> 0.75; recall: a,b 2/3, c 1/3, d 1 -> 2/3
    assert s["bcubed_precision"] == pytest.approx(0.75)
    assert s["bcubed_recall"] == pytest.approx(2 / 3)
