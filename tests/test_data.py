"""faceetl.datasets: FaceDataset over real extracted crops, stratified splits, FairFace."""

from __future__ import annotations

import pickle
import shutil

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from faceetl import decode_png, extract_faces, read_faces
from faceetl.datasets import IGNORE_INDEX, FaceDataset, read_fairface, stratified_split
from helpers import IMAGES

PHOTOS = [
    IMAGES / "group" / "facenet_multiface.jpg",
    IMAGES / "single" / "fr_obama_small.jpg",
    IMAGES / "single" / "deepface_img5.jpg",
]


@pytest.fixture(scope="module")
def faces() -> pd.DataFrame:
    """Real dlib faces of three photos with a string, an integer and a float label per face."""
    with dask.config.set(scheduler="sync"):
        df = extract_faces([str(p) for p in PHOTOS], backend="dlib").compute()
    df = df.reset_index(drop=True)
    assert (df["status"] == "ok").sum() >= 6
    n = len(df)
    df["kind"] = ["zebra", "ant", "moose"] * (n // 3) + ["ant"] * (n % 3)
    df["level"] = np.arange(n, dtype=np.int64) % 4
    df["height"] = np.linspace(1.5, 2.0, n)
    return df


def with_failed_row(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` plus a no-face row (no crop) in the middle."""
    bad = df.iloc[[0]].copy()
    bad["status"] = "no_face"
    bad["crop"] = pd.Series([None], dtype=df["crop"].dtype, index=bad.index)
    bad["face"] = -1
    return pd.concat([df.iloc[:2], bad, df.iloc[2:]], ignore_index=True)


def test_dataset_items_are_the_crops_with_encoded_labels(faces):
    df = with_failed_row(faces)
    ds = FaceDataset(df, label_columns=["kind", "level", "height"])
    assert len(ds) == len(faces)  # the no-face row is dropped
    assert list(ds.frame["face"]) == list(faces["face"]) and "crop" not in ds.frame.columns
    assert ds.classes["kind"] == ["ant", "moose", "zebra"]  # sorted vocabulary
    assert ds.classes["level"] == [0, 1, 2, 3]  # integers stay integers
    assert ds.classes["height"] is None  # float: a regression target
    for i in (0, len(ds) - 1):
        x, labels = ds[i]
        ref = decode_png(bytes(faces["crop"].iloc[i]))
        assert x.dtype == torch.float32 and x.shape == (3, *ref.shape[:2])
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        np.testing.assert_allclose(x.permute(1, 2, 0).numpy() * 255, ref, atol=1e-3)
        assert ds.classes["kind"][labels["kind"]] == faces["kind"].iloc[i]
        assert labels["level"] == faces["level"].iloc[i]
        assert labels["height"] == pytest.approx(faces["height"].iloc[i])
    x, _ = ds[-1]
    assert torch.equal(x, ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert len(FaceDataset(df, status=None)) == len(faces)  # no crop: dropped anyway


def test_vocabulary_is_stable_and_shared(faces):
    ages = ["10-19", "3-9", "more than 70", "0-2", "20-29"]
    df = faces.iloc[:5].copy()
    df["age"] = ages
    ds = FaceDataset(df, label_columns="age")
    assert ds.classes["age"] == ["0-2", "3-9", "10-19", "20-29", "more than 70"]
    shuffled = FaceDataset(df.iloc[::-1], label_columns="age")
    assert shuffled.classes == ds.classes  # independent of row order
    # validation uses the training vocabulary; labels it never saw are ignored
    val = df.iloc[:3].copy()
    val["age"] = ["3-9", "50-59", None]
    v = FaceDataset(val, label_columns="age", classes=ds.classes)
    assert v.classes == ds.classes
    assert list(v.labels("age")) == [1, IGNORE_INDEX, IGNORE_INDEX]
    own = FaceDataset(val, label_columns="age")
    assert own.classes["age"] == ["3-9", "50-59"]
    remapped = own.with_classes(ds.classes)
    assert list(remapped.labels("age")) == [1, IGNORE_INDEX, IGNORE_INDEX]
    assert list(own.labels("age")) == [0, 1, IGNORE_INDEX]  # the original is untouched


def test_sources_parquet_dask_and_crop_files(faces, tmp_path):
    ref = FaceDataset(faces, ["kind"])
    faces.to_parquet(tmp_path / "one.parquet")
    dd.from_pandas(faces, npartitions=2).to_parquet(tmp_path / "folder")
    for source in (
        tmp_path / "one.parquet",
        str(tmp_path / "folder"),
        dd.from_pandas(faces, npartitions=2),
    ):
        ds = FaceDataset(source, ["kind"])
        assert len(ds) == len(ref) and ds.classes == ref.classes
        assert torch.equal(ds[3][0], ref[3][0]) and ds[3][1] == ref[3][1]
    # crops only on disk: read lazily from crop_path
    with dask.config.set(scheduler="sync"):
        on_disk = extract_faces(
            [str(p) for p in PHOTOS], backend="dlib", keep_crops=False, crop_dir=tmp_path / "crops"
        ).compute()
    assert on_disk["crop"].isna().all()
    ds = FaceDataset(on_disk)
    assert len(ds) == len(ref)
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], ref[i][0])
    assert ds[0][1] == {}


def test_transform_gets_pil_or_numpy(faces):
    seen = []

    def to_size(im):
        seen.append(type(im).__name__)
        return np.asarray(im).shape

    ds = FaceDataset(faces, transform=to_size)
    assert ds[0][0] == (112, 112, 3) and seen == ["Image"]
    ds = FaceDataset(faces, transform=to_size, transform_input="numpy")
    assert ds[0][0] == (112, 112, 3) and seen[-1] == "ndarray"


def test_dataloader_with_two_workers(faces):
    ds = FaceDataset(faces, label_columns=["kind", "level"])
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2][0], ds[2][0])
    seq = DataLoader(ds, batch_size=4, shuffle=False, num_workers=0)
    # spawned workers: a fork of the test process (threads of earlier tests) can deadlock
    par = DataLoader(
        ds, batch_size=4, shuffle=False, num_workers=2, multiprocessing_context="spawn"
    )
    n = 0
    for (xa, la), (xb, lb) in zip(seq, par, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(la["kind"], lb["kind"]) and torch.equal(la["level"], lb["level"])
        assert la["kind"].dtype == torch.int64
        n += len(xa)
    assert n == len(ds)


def test_missing_label_column_is_refused(faces):
    with pytest.raises(KeyError, match="nope"):
        FaceDataset(faces, label_columns=["nope"])


# --- stratified_split ---------------------------------------------------------------------------


def labelled(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    race = rng.choice(["a", "b", "c", "d"], size=n, p=[0.55, 0.3, 0.12, 0.03]).astype(object)
    race[:2] = "rare"  # a class with exactly two rows
    race[2] = "single"  # and one with a single row
    return pd.DataFrame(
        {
            "path": [f"img{i // 3}.jpg" for i in range(n)],  # three faces per photo
            "race": race,
            "gender": rng.choice(["f", "m"], size=n),
            "x": np.arange(n),
        },
        index=pd.RangeIndex(1000, 1000 + n),
    )


def check_partition(df, train, val):
    assert len(train) + len(val) == len(df)
    assert not set(train.index) & set(val.index)
    assert set(train.index) | set(val.index) == set(df.index)
    assert (train["x"].diff().dropna() > 0).all()  # order kept
    pd.testing.assert_frame_equal(df.loc[val.index], val)


def test_stratified_split_rows():
    df = labelled()
    train, val = stratified_split(df, by="race", val_fraction=0.25, seed=3)
    check_partition(df, train, val)
    assert 0.2 <= len(val) / len(df) <= 0.3
    counts = df["race"].value_counts()
    for cls, n in counts.items():
        nv = int((val["race"] == cls).sum())
        if n >= 2:
            assert 0 < nv < n, cls  # both sides
        if n >= 10:
            assert abs(nv / n - 0.25) <= 0.06, (cls, nv, n)
    assert "single" in set(train["race"])  # a one-row class is trained on
    again = stratified_split(df, by="race", val_fraction=0.25, seed=3)
    assert list(again[1].index) == list(val.index)  # deterministic
    other = stratified_split(df, by="race", val_fraction=0.25, seed=4)
    assert list(other[1].index) != list(val.index)


def test_stratified_split_several_columns():
    df = labelled(seed=1)
    train, val = stratified_split(df, by=["race", "gender"], val_fraction=0.2, seed=0)
    check_partition(df, train, val)
    for col in ("race", "gender"):
        for cls, n in df[col].value_counts().items():
            if n >= 2:
                assert cls in set(train[col]) and cls in set(val[col]), (col, cls)
    combo = df.groupby(["race", "gender"]).size()
    vcombo = val.groupby(["race", "gender"]).size().reindex(combo.index, fill_value=0)
    big = combo[combo >= 10].index
    assert (abs(vcombo[big] / combo[big] - 0.2) <= 0.1).all()


def test_stratified_split_keeps_groups_together():
    df = labelled(300, seed=2)
    train, val = stratified_split(df, by="race", val_fraction=0.2, seed=5, group="path")
    check_partition(df, train, val)
    assert not set(train["path"]) & set(val["path"])
    assert 0.15 <= len(val) / len(df) <= 0.25
    for cls in df["race"].unique():
        if df.loc[df["race"] == cls, "path"].nunique() >= 2:
            assert cls in set(train["race"]) and cls in set(val["race"]), cls
    again = stratified_split(df, by="race", val_fraction=0.2, seed=5, group="path")
    assert list(again[1].index) == list(val.index)


def test_stratified_split_refuses_bad_input():
    df = labelled(20)
    with pytest.raises(ValueError):
        stratified_split(df, by="race", val_fraction=1.0)
    with pytest.raises(KeyError):
        stratified_split(df, by="nope")


# --- FairFace -----------------------------------------------------------------------------------


@pytest.fixture()
def tiny_fairface(tmp_path):
    """A FairFace-layout folder: train/1.jpg ... val/1.jpg ... and the two label csv files."""
    root = tmp_path / "fairface"
    singles = sorted((IMAGES / "single").glob("*.jpg"))
    assert len(singles) >= 5
    rows = {"train": [], "val": []}
    labels = [
        ("20-29", "Male", "Black"),
        ("3-9", "Female", "East Asian"),
        ("50-59", "Male", "White"),
        ("more than 70", "Female", "Indian"),
        ("10-19", "Female", "Latino_Hispanic"),
    ]
    for k, (src, (age, gender, race)) in enumerate(zip(singles[:5], labels, strict=True)):
        split = "train" if k < 3 else "val"
        n = len(rows[split]) + 1
        (root / split).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / split / f"{n}.jpg")
        rows[split].append((f"{split}/{n}.jpg", age, gender, race, k % 2 == 0))
    for split, r in rows.items():
        pd.DataFrame(r, columns=["file", "age", "gender", "race", "service_test"]).to_csv(
            root / f"fairface_label_{split}.csv", index=False
        )
    return root


def test_read_fairface_and_labels_carried_through_extraction(tiny_fairface):
    train = read_fairface(tiny_fairface, split="train")
    val = read_fairface(tiny_fairface, "val")
    assert list(train.columns[:1]) == ["path"] and len(train) == 3 and len(val) == 2
    assert {"age", "gender", "race", "service_test", "file"} <= set(train.columns)
    assert all(p.startswith(str(tiny_fairface.resolve())) for p in train["path"])
    assert train["path"].iloc[1].endswith("train/2.jpg") and list(train["race"]) == [
        "Black",
        "East Asian",
        "White",
    ]
    with dask.config.set(scheduler="sync"):
        faces = extract_faces(train, backend="dlib").compute()
    assert (faces["status"] == "ok").all() and len(faces) == 3  # one face per single photo
    by_path = faces.set_index(faces["path"].astype(str))
    for _, row in train.iterrows():
        got = by_path.loc[row["path"]]
        assert got["race"] == row["race"] and got["age"] == row["age"]
        assert got["gender"] == row["gender"] and bool(got["service_test"]) == row["service_test"]
    ds = FaceDataset(faces, label_columns=["race", "gender", "age"])
    assert ds.classes["race"] == ["Black", "East Asian", "White"]
    assert ds.classes["age"] == ["3-9", "20-29", "50-59"]
    with pytest.raises(ValueError):
        read_fairface(tiny_fairface, split="test")


def test_read_fairface_reports_missing_images(tiny_fairface):
    (tiny_fairface / "val" / "2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2"):
        read_fairface(tiny_fairface, "val")
    assert len(read_fairface(tiny_fairface, "val", check_files=False)) == 2


def test_saved_faces_round_trip_to_a_dataset(faces, tmp_path):
    faces.to_parquet(tmp_path / "f.parquet")
    back = read_faces(tmp_path / "f.parquet")
    assert FaceDataset(back, ["kind"]).classes == FaceDataset(faces, ["kind"]).classes


def test_public_names_load_torch_only_on_use():
    """``faceetl.FaceDataset``, ``stratified_split`` and ``read_fairface`` keep working; the
    data-set readers and splits import without torch, the torch Dataset loads it on first use."""
    import subprocess
    import sys

    import faceetl
    import faceetl.datasets as fd

    assert faceetl.FaceDataset is fd.FaceDataset is FaceDataset
    assert faceetl.stratified_split is stratified_split and faceetl.read_fairface is read_fairface
    code = (
        "import sys, faceetl, faceetl.datasets as d\n"
        "faceetl.stratified_split, faceetl.read_fairface, d.read_annotations, d.read_widerface_gt\n"
        "assert 'torch' not in sys.modules, 'torch imported early'\n"
        "faceetl.FaceDataset\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_each_format_has_one_reader():
    """Trainers and the evaluation use faceetl.datasets' readers, not copies of their own."""
    import faceetl.datasets as fd
    from faceetl import eval as fe
    from faceetl.train import parsing as tp
    from faceetl.train import retinaface as rt

    for name in ("ImageAnnotation", "read_wider_bbx_gt", "read_retinaface_labels",
                 "write_retinaface_labels", "read_dlib_xml", "read_annotations",
                 "annotation_format", "default_image_root"):  # fmt: skip
        assert getattr(rt, name) is getattr(fd, name), name
    for name in ("PARTS", "G_MASK_PARTS", "merge_part_masks", "part_mask_path", "write_label_maps"):
        assert getattr(tp, name) is getattr(fd, name), name
    assert fe.read_widerface_gt is fd.read_widerface_gt and fe.WiderGT is fd.WiderGT
