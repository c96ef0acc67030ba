"""Quality and head-pose columns (the ``quality`` predictor) on real photos and real backends.

Pose: a projected mean face gives its pose back with the documented signs; a mirrored photo flips
yaw and roll and keeps pitch; a photo turned 20 degrees turns roll by 20; five points agree with
dlib's 68 within measured tolerances. Crop measures: a blurred copy
is less sharp, a darkened one darker. The columns made in the extraction pass equal those added
to an existing output by ``faceetl.predict``, under the sync and the threaded scheduler.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import faceetl
from faceetl import schema
from faceetl.align import align_face
from faceetl.boxes import box_iou
from faceetl.curate import PRESETS
from faceetl.measures.pose import MEAN_FACE_68, OPENFACE_MEAN_68, head_pose
from faceetl.measures.quality import QUALITY_ALIGN, crop_measures
from faceetl.predictors.quality import COLUMNS
from helpers import IMAGES, load_rgb

POSE = ["yaw", "pitch", "roll"]


def _save(path: Path, rgb: np.ndarray) -> str:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # PNG: lossless
    return str(path)


def _faces(paths: list[str], backend: str, **params) -> pd.DataFrame:
    """The ok faces of ``paths`` with the quality columns, made in the extraction pass."""
    with dask.config.set(scheduler="sync"):
        df = faceetl.extract_faces(paths, backend=backend, predict="quality", **params).compute()
    return df[df["status"] == "ok"].reset_index(drop=True)


def test_mean_face_is_the_published_one_made_symmetric() -> None:
    assert OPENFACE_MEAN_68[0].tolist() == [-73.393523, -29.801432, 47.667532]
    assert OPENFACE_MEAN_68[30].tolist() == [1.226783, -8.414541, -36.94806]  # nose tip: nearest
    assert np.abs(MEAN_FACE_68 - OPENFACE_MEAN_68).max() < 1.4
    # a frontal upright face (the ArcFace template, far away) reads no yaw and no roll
    from faceetl.align import ARCFACE_112

    yaw, pitch, roll, n = head_pose(ARCFACE_112 - ARCFACE_112.mean(0) + 2000, None, 4000, 4000)
    assert n == 5 and abs(yaw) < 0.1 and abs(roll) < 0.5 and abs(pitch) < 6


def test_mirrored_photo_flips_yaw_and_roll(tmp_path: Path) -> None:
    photo = IMAGES / "group" / "fr_two_people.jpg"
    rgb = load_rgb(photo)
    w = rgb.shape[1]
    mirrored = _save(tmp_path / "mirrored.png", np.ascontiguousarray(np.fliplr(rgb)))
    df = _faces([str(photo), mirrored], "retinaface", device="cpu")
    a, b = df[df["path"] == str(photo)], df[df["path"] == mirrored]
    assert len(a) == len(b) == 2 and (a["pose_points"] == 5).all()
    flipped = b[["x1", "y1", "x2", "y2"]].to_numpy().copy()
    flipped[:, [0, 2]] = w - flipped[:, [2, 0]]
    match = box_iou(a[["x1", "y1", "x2", "y2"]].to_numpy(), flipped).argmax(axis=1)
    turned = 0
    for (_, fa), j in zip(a.iterrows(), match, strict=True):
        fb = b.iloc[j]
        print(f"yaw {fa.yaw:6.1f} / {fb.yaw:6.1f}  pitch {fa.pitch:6.1f} / {fb.pitch:6.1f}  "
              f"roll {fa.roll:6.1f} / {fb.roll:6.1f}")  # fmt: skip
        # measured: sums 0.4 and 4.4 (yaw), 0.4 and 0.8 (roll); pitch differs by 1.4-1.5
        assert abs(fa.yaw + fb.yaw) <= 5 and abs(fa.roll + fb.roll) <= 3
        assert abs(fa.pitch - fb.pitch) <= 3
        if abs(fa.yaw) > 5:
            assert np.sign(fa.yaw) == -np.sign(fb.yaw)
            turned += 1
    assert turned >= 1  # a face turned well away from the camera (yaw ~26): the sign matters
    # the man on the photo's left turns toward the image's right (looked at): yaw > 0
    assert a.sort_values("x1")["yaw"].iloc[0] > 20


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` (degrees): the documented convention."""
    y, p, r = np.radians([-yaw, -pitch, roll])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rz @ ry @ rx


@pytest.mark.parametrize("pose", [(20, 0, 0), (0, 15, 0), (0, 0, 10), (-35, -10, 25)])
def test_a_projected_mean_face_gives_back_its_pose_with_the_documented_signs(pose) -> None:
    from faceetl.measures.pose import MEAN_FACE_5

    side = 1000.0
    cam = np.array([[side, 0, side / 2], [0, side, side / 2], [0, 0, 1]])
    rvec = cv2.Rodrigues(_rotation(*pose))[0]
    tvec = np.array([0.0, 0.0, 1500.0])
    p68 = cv2.projectPoints(MEAN_FACE_68, rvec, tvec, cam, None)[0].reshape(68, 2)
    p5 = cv2.projectPoints(MEAN_FACE_5, rvec, tvec, cam, None)[0].reshape(5, 2)
    np.testing.assert_allclose(head_pose(None, p68, side, side)[:3], pose, atol=1e-3)
    np.testing.assert_allclose(head_pose(p5, None, side, side)[:3], pose, atol=1e-3)
    eyes, nose = p5[:2].mean(axis=0), p5[2]
    front = cv2.projectPoints(MEAN_FACE_5, np.zeros(3), tvec, cam, None)[0].reshape(5, 2)
    if pose == (20, 0, 0):  # turned to the image's right: the nose tip moves right
        assert nose[0] > eyes[0] + 5
    if pose == (0, 15, 0):  # looking up: the nose tip rises towards the eyes
        assert nose[1] - eyes[1] < front[2, 1] - front[:2, 1].mean() - 5
    if pose == (0, 0, 10):  # clockwise: the eye on the image's right is lower
        assert p5[1, 1] > p5[0, 1] + 5


def _turned(rgb: np.ndarray, centre: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` on a square canvas centred on ``centre``, turned ``angle`` degrees (OpenCV:
    counter-clockwise) about the canvas centre, which is also the assumed principal point."""
    h, w = rgb.shape[:2]
    corners = [math.hypot(x - centre[0], y - centre[1]) for x in (0, w) for y in (0, h)]
    r = int(math.ceil(max(corners)))  # every corner of the photo stays on the canvas
    m = cv2.getRotationMatrix2D((r, r), angle, 1.0)
    m[:, 2] += m[:, :2] @ (np.array([r, r]) - centre)  # first move the face to the centre
    return cv2.warpAffine(rgb, m, (2 * r, 2 * r), flags=cv2.INTER_LINEAR), m


def test_turning_the_photo_by_20_degrees_turns_roll_by_20(tmp_path: Path) -> None:
    photo = IMAGES / "single" / "fr_obama_small.jpg"
    rgb = load_rgb(photo)
    first = _faces([str(photo)], "mtcnn", device="cpu")
    centre = first[["x1", "y1"]].to_numpy()[0] / 2 + first[["x2", "y2"]].to_numpy()[0] / 2
    paths, mats = [], []
    for angle in (0, -20, 20):  # OpenCV's -20: 20 degrees clockwise on screen
        img, m = _turned(rgb, centre, angle)
        paths.append(_save(tmp_path / f"turned{angle}.png", img))
        mats.append(m)
    df = _faces(paths, "mtcnn", device="cpu").set_index("path")
    roll = [float(df.loc[p, "roll"]) for p in paths]
    print("roll upright / clockwise / counter-clockwise:", np.round(roll, 2))
    # measured with MTCNN's landmarks: +20.7 and -20.8 (the detector's points move by up to 4 px
    # against the exact rotation of the upright ones)
    assert roll[1] - roll[0] == pytest.approx(20, abs=2)
    assert roll[2] - roll[0] == pytest.approx(-20, abs=2)
    # the same landmarks turned exactly: roll turns by exactly 20, yaw and pitch stay
    lm = np.asarray(df.loc[paths[0], "landmarks"], np.float64).reshape(5, 2)
    side = float(df.loc[paths[0], "image_width"])
    upright = np.array(head_pose(lm, None, side, side)[:3])
    m = mats[1] @ np.vstack([cv2.invertAffineTransform(mats[0]), [0, 0, 1]])
    turned = np.array(head_pose(lm @ m[:, :2].T + m[:, 2], None, side, side)[:3])
    np.testing.assert_allclose(turned - upright, [0, 0, 20], atol=1e-3)


def test_five_point_pose_is_near_the_68_point_pose() -> None:
    """dlib's 68 points against the five ArcFace points derived from them, face by face."""
    paths = [str(p) for p in sorted((IMAGES / "dlib_pascal").glob("*.jpg"))]
    paths.append(str(IMAGES / "landmarks" / "breakingbad.jpg"))
    df = _faces(paths, "dlib")
    assert (df["pose_points"] == 68).all()
    with_68 = df[POSE].to_numpy(float)
    without = df.drop(columns=[*COLUMNS, "quality_provenance"])
    without["shape"] = pd.Series([None] * len(df), dtype=schema.FLOATS)
    five = faceetl.predict(without, "quality")
    assert (five["pose_points"] == 5).all()
    d = np.abs(five[POSE].to_numpy(float) - with_68)
    frontal = np.abs(with_68[:, 0]) <= 30
    print(f"{len(d)} faces, |5 - 68| max {d.max(0).round(1)} median {np.median(d, 0).round(1)}; "
          f"{frontal.sum()} with |yaw| <= 30: max {d[frontal].max(0).round(1)}")  # fmt: skip
    # measured (yaw, pitch, roll), 20 faces: max 12.1, 17.1, 12.7, median 3.6, 6.2, 1.6; the 11
    # with |yaw| <= 30: max 7.7, 9.4, 2.6. Pitch is the weakest angle from five points (the
    # nose's height between eyes and mouth varies from face to face); the largest yaw and roll
    # gaps are near-profile faces (|yaw| ~50), whose 68-point jaw line is itself uncertain
    assert len(d) == 20
    assert (d.max(0) <= [14, 19, 14]).all() and (np.median(d, 0) <= [4.5, 7.5, 2.5]).all()
    assert (d[frontal].max(0) <= [9, 11, 3.5]).all()


def _measured_on(faces: pd.DataFrame, image: str) -> pd.DataFrame:
    """The quality columns of ``faces``' detections measured on ``image`` (same size) instead."""
    other = faces.drop(columns=[*COLUMNS, "quality_provenance"]).assign(path=image)
    other["crop"] = pd.Series([None] * len(other), dtype=schema.BYTES)  # made from ``image``
    return faceetl.predict(other, "quality")


def test_blurred_copy_is_less_sharp_and_darkened_copy_darker(tmp_path: Path) -> None:
    photo = IMAGES / "group" / "fr_two_people.jpg"
    rgb = load_rgb(photo)
    faces = _faces([str(photo)], "retinaface", device="cpu")
    assert len(faces) == 2
    blurred = _measured_on(faces, _save(tmp_path / "b.png", cv2.GaussianBlur(rgb, (0, 0), 2)))
    dark = _measured_on(faces, _save(tmp_path / "d.png", (rgb * 0.5).astype(np.uint8)))
    print("blur", faces["blur"].round(1).tolist(), "->", blurred["blur"].round(1).tolist())
    print("brightness", faces["brightness"].round(1).tolist(), "->",
          dark["brightness"].round(1).tolist())  # fmt: skip
    assert (blurred["blur"] < 0.25 * faces["blur"]).all()
    assert (dark["brightness"] < 0.55 * faces["brightness"]).all()
    assert (dark["contrast"] < 0.55 * faces["contrast"]).all()
    for c in ("face_size", "box_side", *POSE):  # from the rows: the same
        np.testing.assert_allclose(blurred[c], faces[c])
    # the presets select on these columns
    assert len(faces.query(PRESETS["sharp"])) == 2 and len(blurred.query(PRESETS["sharp"])) == 0


def test_face_cut_by_the_border_is_measured_inside_the_photo(tmp_path: Path) -> None:
    """The black padding of a face cut by the photo's border is not counted: its black would
    read as darkness, and its zeros and edge would change the sharpness."""
    photo = IMAGES / "single" / "fr_obama_small.jpg"
    whole = _faces([str(photo)], "retinaface", device="cpu")
    lm = np.asarray(whole["landmarks"][0], float).reshape(5, 2)
    x = int(lm[:2, 0].mean())  # the photo cut between the eyes
    half = _save(tmp_path / "half.png", np.ascontiguousarray(load_rgb(photo)[:, :x]))
    cut = _measured_on(whole.assign(image_width=x), half)
    box = whole[["x1", "y1", "x2", "y2"]].to_numpy()[0]
    padded = crop_measures(align_face(load_rgb(half), lm, box, QUALITY_ALIGN)[0])
    print("blur, brightness: whole", whole[["blur", "brightness"]].to_numpy()[0].round(1),
          "cut", cut[["blur", "brightness"]].to_numpy()[0].round(1),
          "cut with its padding", np.round(padded[:2], 1))  # fmt: skip
    # measured: blur 1199 whole, 1264 cut, 915 with the padding; brightness 144, 146, 72
    assert cut["blur"][0] == pytest.approx(whole["blur"][0], rel=0.15)
    assert cut["brightness"][0] == pytest.approx(whole["brightness"][0], abs=10)
    assert abs(padded[0] - whole["blur"][0]) > 2 * abs(cut["blur"][0] - whole["blur"][0])
    assert padded[1] < whole["brightness"][0] - 50


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_predict_on_an_existing_output_equals_the_extraction_pass(
    scheduler: str, tmp_path: Path
) -> None:
    paths = [str(IMAGES / "single" / "fr_obama_small.jpg"),
             str(IMAGES / "dlib_pascal" / "2008_001322.jpg"),
             str(IMAGES / "single" / "missing.jpg")]  # fmt: skip
    with dask.config.set(scheduler=scheduler):
        fused = faceetl.extract_faces(paths, backend="dlib", predict="quality").compute()
        faceetl.write_faces(faceetl.extract_faces(paths, backend="dlib"), tmp_path / "out")
        stored = faceetl.read_faces(tmp_path / "out")
        eager = faceetl.predict(stored, "quality")
        lazy = faceetl.predict(dd.from_pandas(stored, npartitions=2), "quality").compute()
    ok = (fused["status"] == "ok").to_numpy()
    assert ok.sum() == 4 and (~ok).sum() == 1
    for got in (eager, lazy.reset_index(drop=True)):
        assert list(got["path"]) == list(fused["path"])
        assert list(got["face"]) == list(fused["face"])
        for c in COLUMNS:
            pd.testing.assert_series_equal(got[c], fused[c], check_names=False, check_index=False)
        assert fused.loc[~ok, list(COLUMNS)].isna().all().all()
    assert fused.loc[ok, list(COLUMNS)].notna().all().all()
    assert (fused.loc[ok, "pose_points"] == 68).all()
    # the rows' own measures, by hand
    row = fused[ok].iloc[0]
    lm = np.asarray(row["landmarks"], float).reshape(5, 2)
    assert row["face_size"] == pytest.approx(np.hypot(*(lm[1] - lm[0])))
    assert row["box_side"] == pytest.approx(math.sqrt((row.x2 - row.x1) * (row.y2 - row.y1)))


def test_presets_filter_pandas_and_dask_alike() -> None:
    df = pd.DataFrame({
        "yaw": [0.0, 45.0, np.nan, -10.0], "pitch": [0.0, 0.0, np.nan, -20.0],
        "roll": [0.0, 0.0, np.nan, 30.0], "blur": [500.0, 500.0, np.nan, 20.0],
        "face_size": [60.0, 60.0, np.nan, 20.0], "brightness": [120.0, 120.0, np.nan, 10.0],
        "contrast": [50.0, 50.0, np.nan, 50.0],
    })  # fmt: skip
    want = {"frontal": [0, 3], "sharp": [0, 1], "large": [0, 1], "exposed": [0, 1],
            "training": [0]}  # fmt: skip
    for name, rows in want.items():
        assert list(df.query(PRESETS[name]).index) == rows, name
        lazy = dd.from_pandas(df, npartitions=2).query(PRESETS[name]).compute()
        assert list(lazy.index) == rows, name
