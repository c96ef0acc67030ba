"""Readers of stored faces at fsspec URLs: ``FaceDataset`` and ``predict`` on ``memory://``.

Real faces (dlib detections of two photos, crops written as PNG files) are copied to a
``memory://`` folder of each test's own; the table there names them by URL. The readers must give
the pixels and predictions they give on the local files. A ``dir://`` URL, which only resolves
with its ``storage_options``, checks that those options reach every read (also in DataLoader
workers and Dask partitions).
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import dask
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pytest

from faceetl import extract_faces, predict, register_predictor
from faceetl.datasets import FaceDataset
from faceetl.images import decode_png
from helpers import IMAGES

PHOTOS = [IMAGES / "single" / "fr_obama_small.jpg", IMAGES / "group" / "fr_two_people.jpg"]
N_FACES = 3


@register_predictor("storage_readers_crop_stats", gpu=False)
class CropStats:
    """A predictor of the stored crop (``align`` None): its size and mean of each channel."""

    align = None
    columns = {
        "storage_readers_crop_stats_height": "Int64",
        "storage_readers_crop_stats_mean": "object",
    }

    def predict_batch(self, crops: list[np.ndarray]) -> dict[str, list]:
        return {
            "storage_readers_crop_stats_height": [int(c.shape[0]) for c in crops],
            "storage_readers_crop_stats_mean": [c.reshape(-1, 3).mean(axis=0) for c in crops],
        }

    def provenance(self) -> dict:
        return {"model": "size and channel means of the stored crop"}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """The faces of PHOTOS with crop files in a local folder (and the folder)."""
    crop_dir = tmp_path_factory.mktemp("crops")
    with dask.config.set(scheduler="sync"):
        df = extract_faces([str(p) for p in PHOTOS], backend="dlib", crop_dir=crop_dir).compute()
    df = df[df["status"] == "ok"].reset_index(drop=True)
    assert len(df) == N_FACES and df["crop_path"].notna().all()
    return df, crop_dir


@pytest.fixture
def root() -> Iterator[str]:
    """A ``memory://`` folder of this test's own, removed afterwards."""
    url = f"memory://faceetl-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    yield url
    if fs.exists(url):
        fs.rm(url, recursive=True)


def upload(local: tuple[pd.DataFrame, Path], root: str) -> pd.DataFrame:
    """Copy the crops and photos below ``root``: the faces with ``crop_path`` and ``path`` as
    URLs there, and without the ``crop`` bytes (so that readers must open the files)."""
    df, crop_dir = local
    fs = fsspec.filesystem("memory")
    out = df.copy()
    crop_urls = []
    for p in df["crop_path"]:
        rel = Path(p).relative_to(crop_dir).as_posix()
        crop_urls.append(f"{root}/crops/{rel}")
        fs.pipe_file(crop_urls[-1], Path(p).read_bytes())
    photo_urls = {}
    for p in PHOTOS:
        photo_urls[str(p)] = f"{root}/photos/{p.parent.name}/{p.name}"
        fs.pipe_file(photo_urls[str(p)], p.read_bytes())
    out["crop_path"] = pd.Series(crop_urls, index=out.index, dtype=df["crop_path"].dtype)
    out["path"] = pd.Series(
        [photo_urls[p] for p in df["path"]], index=out.index, dtype=df["path"].dtype
    )
    return without_crop_bytes(out)


def without_crop_bytes(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its ``crop`` column missing (as ``keep_crops=False`` leaves it)."""
    return df.assign(crop=pd.Series([None] * len(df), index=df.index, dtype=df["crop"].dtype))


def as_dir_urls(df: pd.DataFrame, root: str) -> tuple[pd.DataFrame, dict]:
    """``df`` with its ``root`` URLs as ``dir://`` URLs relative to ``root``, and the
    storage_options without which those do not resolve."""
    out = df.copy()
    for col in ("crop_path", "path"):
        out[col] = out[col].str.replace(root + "/", "dir://", regex=False)
    folder = root.split("://", 1)[1]
    return out, {"path": f"/{folder}", "target_protocol": "memory"}


def local_crops(local: tuple[pd.DataFrame, Path]) -> list[np.ndarray]:
    return [decode_png(Path(p).read_bytes()) for p in local[0]["crop_path"]]


# ---------------------------------------------------------------------------------- FaceDataset


def test_face_dataset_reads_a_parquet_url_and_crop_urls(local, root) -> None:
    faces = upload(local, root)
    faces["label"] = ["a", "b", "a"]
    faces.to_parquet(f"{root}/faces.parquet")
    ds = FaceDataset(f"{root}/faces.parquet", label_columns="label")
    assert len(ds) == N_FACES
    assert list(ds.frame["crop_path"]) == list(faces["crop_path"])
    assert ds.classes == {"label": ["a", "b"]}
    for i, want in enumerate(local_crops(local)):
        np.testing.assert_array_equal(ds.image(i), want)
        x, labels = ds[i]
        np.testing.assert_allclose(x.numpy(), want.transpose(2, 0, 1) / 255.0, atol=1e-6)
        assert labels == {"label": ds.labels("label")[i]}
    # list columns come back as the schema's Arrow types, as read_faces gives them locally
    assert isinstance(ds.frame["landmarks"].dtype, pd.ArrowDtype)
    np.testing.assert_allclose(
        np.asarray(ds.frame["landmarks"][0], float), np.asarray(local[0]["landmarks"][0], float)
    )


def test_face_dataset_reads_a_parquet_folder_url(local, root) -> None:
    faces = upload(local, root)
    faces.iloc[:2].to_parquet(f"{root}/table/part.0.parquet")
    faces.iloc[2:].to_parquet(f"{root}/table/part.1.parquet")
    ds = FaceDataset(f"{root}/table")
    assert sorted(ds.frame["crop_path"]) == sorted(faces["crop_path"])
    want = dict(zip(faces["crop_path"], local_crops(local), strict=True))
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.image(i), want[ds.frame["crop_path"][i]])


def test_face_dataset_storage_options_reach_dataloader_workers(local, root) -> None:
    faces, options = as_dir_urls(upload(local, root), root)
    faces.to_parquet(f"{root}/faces.parquet")
    with pytest.raises(Exception):  # noqa: B017 - dir:// has no target without the options
        FaceDataset("dir://faces.parquet")
    ds = FaceDataset("dir://faces.parquet", storage_options=options)
    assert ds.storage_options == options
    assert list(ds.frame["crop_path"]) == list(faces["crop_path"])
    no_options = FaceDataset(faces)
    with pytest.raises(Exception):  # noqa: B017 - the crop URLs need the options too
        no_options.crop_bytes(0)
    # what a DataLoader worker receives (spawned or forked): the pickled dataset. Forking the
    # test process itself is avoided: its fsspec event-loop thread can hold a lock at fork time
    clone = pickle.loads(pickle.dumps(ds))
    for i, want in enumerate(local_crops(local)):
        np.testing.assert_array_equal(clone.image(i), want)


# -------------------------------------------------------------------------------------- predict


def assert_same_predictions(got: pd.DataFrame, want: pd.DataFrame, columns: list[str]) -> None:
    assert len(got) == len(want)
    for c in columns:
        assert got[c].notna().all() and want[c].notna().all(), c
        for g, w in zip(got[c], want[c], strict=True):
            np.testing.assert_allclose(np.asarray(g, float), np.asarray(w, float), err_msg=c)


STATS = ["storage_readers_crop_stats_height", "storage_readers_crop_stats_mean"]


def test_predict_reads_stored_crops_at_urls(local, root) -> None:
    faces = upload(local, root)
    on_disk = without_crop_bytes(local[0])  # the local crop files, not the bytes in the table
    want = predict(on_disk, model="storage_readers_crop_stats")
    assert want[STATS[0]].tolist() == [c.shape[0] for c in local_crops(local)]
    got = predict(faces, model="storage_readers_crop_stats")
    assert_same_predictions(got, want, STATS)
    assert got["storage_readers_crop_stats_provenance"].notna().all()
    with dask.config.set(scheduler="sync"):
        lazy = predict(dd.from_pandas(faces, npartitions=2), model="storage_readers_crop_stats")
        assert_same_predictions(lazy.compute(), want, STATS)


def test_predict_passes_storage_options_to_the_reads_not_the_model(local, root) -> None:
    faces, options = as_dir_urls(upload(local, root), root)
    want = predict(without_crop_bytes(local[0]), model="storage_readers_crop_stats")
    # CropStats takes no parameters: storage_options must not reach its constructor
    got = predict(faces, model="storage_readers_crop_stats", storage_options=options)
    assert_same_predictions(got, want, STATS)
    with dask.config.set(scheduler="sync"):
        lazy = predict(
            dd.from_pandas(faces, npartitions=2),
            model="storage_readers_crop_stats",
            storage_options=options,
        )
        assert_same_predictions(lazy.compute(), want, STATS)
    # without the options the crops cannot be read: the rows keep empty predictions
    blind = predict(faces, model="storage_readers_crop_stats")
    assert blind[STATS[0]].isna().all()


def test_predict_realigns_from_originals_at_urls(local, root) -> None:
    """The dlib embedding aligns its own chip from the original photo, read from the URL."""
    cols = ["embedding_vector"]
    want = predict(local[0], model="embedding", network="dlib")
    faces = upload(local, root)
    got = predict(faces, model="embedding", network="dlib")
    assert got["embedding_vector"].notna().all()
    assert (got["embedding_network"] == "dlib").all()
    assert_same_predictions(got, want, cols)
    dir_faces, options = as_dir_urls(faces, root)
    with dask.config.set(scheduler="sync"):
        lazy = predict(
            dd.from_pandas(dir_faces, npartitions=2),
            model="embedding",
            network="dlib",
            storage_options=options,
        )
        assert_same_predictions(lazy.compute(), want, cols)
