"""The Dask pipeline: every input has its row, labels carried, schema kept, crops on disk."""

from __future__ import annotations

import os
import shutil

import dask
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceetl import SCHEMA, decode_png, extract_faces, landmarks_array, read_faces, read_images
from faceetl.pipeline.extract import crop_relpath
from helpers import IMAGES, make_bad_inputs

BACKEND = "dlib"  # fast and fully offline: the pipeline tests do not depend on a model's download


@pytest.fixture(scope="module")
def sync():
    with dask.config.set(scheduler="sync"):
        yield


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Real photos, a blank image, and every kind of bad file."""
    d = tmp_path_factory.mktemp("mixed")
    bad = make_bad_inputs(d)
    Image.new("RGB", (320, 240), (128, 128, 128)).save(d / "blank.jpg")
    good = [IMAGES / "single" / "fr_obama_small.jpg", IMAGES / "group" / "facenet_multiface.jpg"]
    paths = [str(p) for p in good] + [str(d / "blank.jpg")] + [str(p) for p in bad.values()]
    return paths, bad


def test_every_input_has_a_row_and_bad_input_a_status(sync, mixed):
    paths, bad = mixed
    df = extract_faces(read_images(paths, partition_size=4), backend=BACKEND).compute()
    assert set(df["path"]) == set(paths)
    status = df.groupby("path")["status"].first()
    assert status[str(IMAGES / "single" / "fr_obama_small.jpg")] == "ok"
    assert (df[df["path"].str.endswith("multiface.jpg")]["status"] == "ok").sum() == 6
    assert status[str(bad["zero"])].startswith("error: empty file")
    assert status[str(bad["truncated"])].startswith("error: corrupt")
    assert status[str(bad["text"])].startswith("error: not an image")
    assert status[str(bad["missing"])].startswith("error: file not found")
    assert status[str(bad["huge"])].startswith("error: image too large")
    assert status[df["path"].str.endswith("blank.jpg").idxmax() and str(paths[2])] == "no_face"
    for name in ("gray", "rgba", "sixteen", "cmyk", "exif", "unicode"):
        assert status[str(bad[name])] == "ok", name  # a face is found in each odd-format copy
    errors = df[df["status"].str.startswith("error")]
    assert (errors["face"] == -1).all() and errors["crop"].isna().all()


def test_exif_rotated_face_found_upright(sync, mixed):
    paths, bad = mixed
    df = extract_faces([str(bad["exif"]), paths[0]], backend=BACKEND).compute()
    a, b = (df[df["path"] == p].iloc[0] for p in (str(bad["exif"]), paths[0]))
    assert (a.image_width, a.image_height) == (b.image_width, b.image_height)
    assert abs(a.x1 - b.x1) < 3 and abs(a.y1 - b.y1) < 3


def test_schema_meta_matches_result_and_parquet_roundtrip(sync, tmp_path):
    src = pd.DataFrame(
        {"path": [str(IMAGES / "single" / f) for f in ("fr_obama_small.jpg", "deepface_img5.jpg")],
         "label": ["a", "b"], "subject": [7, 9]}
    )  # fmt: skip
    faces = extract_faces(src, backend=BACKEND, size=128)
    assert list(faces.columns) == [*SCHEMA, "label", "subject"]
    df = faces.compute()
    assert (df.dtypes == faces._meta.dtypes).all()
    assert df.set_index("path")["label"].to_dict() == dict(zip(src.path, src.label, strict=True))
    crop = decode_png(df["crop"].iloc[0])
    assert crop.shape == (128, 128, 3)
    assert landmarks_array(df).shape == (2, 5, 2)
    faces.to_parquet(tmp_path / "faces.parquet")
    back = read_faces(tmp_path / "faces.parquet").sort_values("path", ignore_index=True)
    df = df.sort_values("path", ignore_index=True)
    assert len(back) == 2 and bytes(back["crop"].iloc[0]) == bytes(df["crop"].iloc[0])
    assert np.allclose(landmarks_array(back), landmarks_array(df), equal_nan=True)


def test_label_clash_is_refused():
    with pytest.raises(ValueError, match="clash"):
        read_images(pd.DataFrame({"path": ["a.jpg"], "score": [1]}))


def test_unknown_backend_fails_early():
    with pytest.raises(ValueError, match="unknown backend"):
        extract_faces(["a.jpg"], backend="nope")


def test_glob_and_folder_inputs(tmp_path):
    for sub in ("a", "b/c"):
        (tmp_path / sub).mkdir(parents=True)
        shutil.copy(IMAGES / "single" / "fr_obama_small.jpg", tmp_path / sub / "x.jpg")
    (tmp_path / "notes.txt").write_text("x")
    assert len(read_images(str(tmp_path / "**" / "*.jpg")).compute()) == 2
    assert len(read_images(tmp_path).compute()) == 2
    with pytest.raises(FileNotFoundError):
        read_images(str(tmp_path / "*.png"))


@pytest.mark.parametrize(
    "path,root,expected",
    [
        ("/data/photos/a/b.jpg", "/data/photos", "a/b.jpg.face0.png"),
        ("/data/photos/b.jpg", "/data/photos", "b.jpg.face0.png"),
        ("/elsewhere/x/../y.jpg", "/data/photos", "elsewhere/y.jpg.face0.png"),
        ("/data/photos/été/顔.jpg", "/data/photos", "été/顔.jpg.face0.png"),
    ],
)
def test_crop_paths_mirror_layout_and_stay_inside(path, root, expected, tmp_path):
    rel = crop_relpath(path, root, 0)
    assert rel == expected
    full = os.path.abspath(os.path.join(tmp_path, rel))
    assert os.path.commonpath([str(tmp_path), full]) == str(tmp_path)


def test_crops_written_mirroring_inputs(sync, tmp_path):
    root = tmp_path / "in"
    for sub in ("p/q", "r"):
        (root / sub).mkdir(parents=True)
        shutil.copy(IMAGES / "single" / "fr_obama_small.jpg", root / sub / "face.jpg")
    out = tmp_path / "out"
    df = extract_faces(str(root / "**" / "*.jpg"), backend=BACKEND, crop_dir=out, crop_root=root,
                       keep_crops=False).compute()  # fmt: skip
    assert df["crop"].isna().all()
    assert sorted(os.path.relpath(p, out) for p in df["crop_path"]) == [
        "p/q/face.jpg.face0.png", "r/face.jpg.face0.png"]  # fmt: skip
    assert all(np.asarray(Image.open(p)).shape == (112, 112, 3) for p in df["crop_path"])


def test_graph_carries_no_model():
    """Building the graph loads nothing here, and the graph is small: models load on workers."""
    import cloudpickle

    from faceetl.backends import base

    base.clear_cache()
    faces = extract_faces(
        [str(IMAGES / "single" / "fr_obama_small.jpg")] * 50, backend="retinaface"
    )
    assert base.REGISTRY.loaded() == []
    assert len(cloudpickle.dumps(faces.__dask_graph__())) < 200_000


def test_a_failing_image_costs_only_its_own_row():
    """The batch is bisected: the image the backend refuses gets an error, the others results."""
    from faceetl.backends.base import get_backend
    from faceetl.images import load_image
    from faceetl.pipeline.extract import _detect_isolating

    good = load_image(IMAGES / "single" / "fr_obama_small.jpg")
    bad = good.astype(np.float32)  # RetinaFace refuses anything but RGB uint8
    out = _detect_isolating(get_backend("retinaface"), [good, good, bad, good, good])
    assert [type(o).__name__ for o in out] == ["Detections"] * 2 + ["ValueError"] + [
        "Detections"
    ] * 2
    assert all(len(o) == 1 for i, o in enumerate(out) if i != 2)
