"""dlib chips as dlib makes them: ``get_face_chip_details`` geometry, ``extract_image_chip``
(image pyramid, bilinear), the native shape carried through the frame, and parity with the
authors' pipelines on the shared photos (``face_recognition``'s descriptors, FairFace's input).

Measured here (dlib 20.0.1, the dlib backend's HOG boxes, 76 faces of single/, group/ and
dlib_pascal/, 3 of them over 300 px): descriptors from the frame's dlib shape equal dlib's own
(L2 0.0 for 68- and 5-point shapes; the code before this differed by median 0.126, max 0.321
(68-point) and median 0.229, max 0.452 (5-point)); FairFace's input tensor equals FairFace's own
(mean abs 0.0; before: 0.25-0.89, median 0.46). From the 5 ArcFace points alone (no shape) the
dlib fit gives median L2 0.103 to the 68-point descriptor (before 0.126).
"""

from __future__ import annotations

import cv2
import dask
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.transform import SimilarityTransform

from faceetl import extract_faces, predict
from faceetl.align import (
    DLIB_FIT_68,
    DLIB_MEAN_68,
    AlignmentError,
    AlignSpec,
    DlibChip,
    _rect_area,
    _rect_down,
    align_face,
    dlib_chip,
    dlib_face_chip,
    estimate_transform,
    extract_dlib_chip,
    five_from_68,
    pyramid_down,
    transform_points,
)
from faceetl.backends.base import Detections
from faceetl.backends.dlib import predictor_path
from faceetl.boxes import box_iou
from faceetl.pipeline.predict import _crops_for
from faceetl.predictors.embedding import DLIB_ALIGN, dlib_model_path
from faceetl.predictors.fairface import FairFacePredictor, preprocess
from helpers import IMAGES, load_rgb

dlib = pytest.importorskip("dlib")

PHOTOS = sorted(
    [*(IMAGES / "single").glob("*.jpg"), *(IMAGES / "group").glob("*.jpg")]
    + [*(IMAGES / "dlib_pascal").glob("*.jpg")]
)
RAW_THRESHOLD = 0.15  # the dlib backend's default HOG threshold (upsample 1)


@pytest.fixture(scope="module")
def predictors() -> dict[str, object]:
    return {k: dlib.shape_predictor(str(predictor_path(k))) for k in ("68", "5")}


@pytest.fixture(scope="module")
def shapes(predictors) -> list[tuple[np.ndarray, np.ndarray, object]]:
    """(image, 68-point and 5-point dlib shapes) of the faces of a few shared photos."""
    hog = dlib.get_frontal_face_detector()
    out = []
    for path in (IMAGES / "single" / "deepface_img5.jpg", IMAGES / "group" / "fr_two_people.jpg"):
        img = load_rgb(path)
        for rect in hog(img, 0):
            for kind in ("68", "5"):
                out.append((img, predictors[kind](img, rect), kind))
    return out


def _points(shape) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


def _rect(chip) -> np.ndarray:
    r = chip.rect
    return np.array([r.left(), r.top(), r.right(), r.bottom()])


# ---------------------------------------------------------------------------------------------
# geometry and extraction against dlib's own functions


def test_geometry_equals_get_face_chip_details(shapes) -> None:
    for _, shape, kind in shapes:
        pts = _points(shape)
        for size, padding in ((150, 0.25), (300, 0.25), (151, 0.2), (40, 0.5)):
            ref = dlib.get_face_chip_details(shape, size, padding)
            for engine in ("numpy", "dlib"):
                ours = dlib_face_chip(pts, size, padding, engine=engine)
                np.testing.assert_allclose(ours.rect, _rect(ref), atol=1e-9, err_msg=kind)
                assert ours.angle == pytest.approx(ref.angle, abs=1e-12)
                assert ours.size == size
            # the image-to-chip matrix and back give the same chip
            back = DlibChip.from_matrix(ours.matrix(), size)
            np.testing.assert_allclose(back.rect, ours.rect, atol=1e-9)
            assert back.angle == pytest.approx(ours.angle, abs=1e-12)


def test_chip_corners_map_to_pixels_0_and_size_minus_1() -> None:
    chip = DlibChip((10.0, 20.0, 109.0, 119.0), 0.3, 50)
    c = np.array([59.5, 69.5])
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    corners = (np.array([[10.0, 20.0], [109.0, 20.0], [109.0, 119.0]]) - c) @ rot.T + c
    np.testing.assert_allclose(
        transform_points(chip.matrix(), corners), [[0, 0], [49, 0], [49, 49]], atol=1e-9
    )


def test_pyramid_down_equals_dlib() -> None:
    rng = np.random.default_rng(0)
    pyr = dlib.pyramid_down(2)
    for h, w in ((9, 9), (10, 13), (57, 40), (300, 201), (8, 50)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref, ours = np.asarray(pyr(img)), pyramid_down(img)
        if min(h, w) <= 8:
            assert ours.size == 0 and ref.size == 0
        else:
            assert ours.shape == ((h - 3) // 2, (w - 3) // 2, 3)
            np.testing.assert_array_equal(ours, ref)


def _pyramid_depth(chip: DlibChip) -> int:
    """How many pyramid levels dlib's extract_image_chips goes down for ``chip``."""
    depth, rect = 0, _rect_down(chip.rect)
    while _rect_area(rect) > chip.size**2:
        rect, depth = _rect_down(rect), depth + 1
    return depth


def test_numpy_extraction_equals_dlib_extract_image_chip(shapes) -> None:
    """The numpy equivalent (used where dlib does not import) is dlib's chip, bit for bit:
    small chips of large faces (pyramid levels), large chips (upsampling), and chips reaching
    past the image's border."""
    pyramid_levels = set()
    for img, shape, _ in shapes:
        for size, padding in (
            (150, 0.25),
            (300, 0.25),
            (75, 0.25),
            (37, 0.25),
            (64, 1.5),
            (500, 0.1),
        ):
            # get_face_chip's padding is a C float (0.1 is not 0.1 there): compare with what it
            # does, extract_image_chip of get_face_chip_details, and with it where exact
            ref = np.asarray(
                dlib.extract_image_chip(img, dlib.get_face_chip_details(shape, size, padding))
            )
            if padding in (0.25, 1.5):
                np.testing.assert_array_equal(
                    ref, dlib.get_face_chip(img, shape, size=size, padding=padding)
                )
            chip = dlib_face_chip(_points(shape), size, padding)
            np.testing.assert_array_equal(extract_dlib_chip(img, chip, engine="dlib"), ref)
            np.testing.assert_array_equal(extract_dlib_chip(img, chip, engine="numpy"), ref)
            pyramid_levels.add(_pyramid_depth(chip))
    assert {0, 1, 2} <= pyramid_levels  # no pyramid, one and two levels were all checked
    # off the border: a chip hanging over the top-left corner, rotated
    img = shapes[0][0]
    for engine in ("dlib", "numpy"):
        chip = extract_dlib_chip(img, DlibChip((-40.5, -70.25, 160.0, 130.25), 0.4, 90), engine)
        assert chip.shape == (90, 90, 3)
        assert (chip[0, 0] == 0).all() and chip[60, 60].any()
    np.testing.assert_array_equal(
        *(
            extract_dlib_chip(img, DlibChip((-40.5, -70.25, 160.0, 130.25), 0.4, 90), e)
            for e in ("dlib", "numpy")
        )
    )
    # no scaling, no rotation: dlib copies the rectangle
    for engine in ("dlib", "numpy"):
        copy = extract_dlib_chip(img, DlibChip((5.0, 7.0, 54.0, 56.0), 0.0, 50), engine)
        np.testing.assert_array_equal(copy, img[7:57, 5:55])


def test_arcface_points_land_where_the_68_point_fit_puts_them() -> None:
    """Landmarks of a face shaped exactly like dlib's mean face: the 5 ArcFace points, mapped to
    their places on the mean face, give the same chip as the 33-point fit of the 68 points."""
    ang, scale, shift = np.deg2rad(-12), 230.0, np.array([140.0, 95.0])
    rot = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    p68 = np.nan_to_num(DLIB_MEAN_68, nan=0.5) @ rot.T + shift
    spec = AlignSpec("dlib", 150, 0.25)
    m68 = dlib_face_chip(p68, 150, 0.25, engine="numpy").matrix()
    m5, method = estimate_transform(five_from_68(p68), None, spec)
    assert method == "landmarks"
    probe = p68[DLIB_FIT_68]
    np.testing.assert_allclose(transform_points(m5, probe), transform_points(m68, probe), atol=1e-3)
    # with the shape given, the shape is used
    ms, method = estimate_transform(five_from_68(p68), None, spec, shape=p68)
    assert method == "shape"
    np.testing.assert_allclose(ms, m68, atol=1e-9)
    # eyes only: they land on the mean face's eye centres, as for a 2-point dlib fit
    eyes = np.full((5, 2), np.nan)
    eyes[:2] = five_from_68(p68)[:2]
    me, method = estimate_transform(eyes, None, spec)
    assert method == "eyes"
    np.testing.assert_allclose(
        transform_points(me, eyes[:2]), transform_points(m68, eyes[:2]), atol=1e-2
    )
    np.testing.assert_allclose(me, m68, atol=1e-4)  # an exact mean face: the same similarity
    # coinciding eyes give no chip: the box is used
    eyes[1] = eyes[0]
    assert estimate_transform(eyes, np.array([100, 100, 200, 220]), spec)[1] == "box"
    with pytest.raises(AlignmentError):
        dlib_chip(DLIB_MEAN_68[[36, 42]], eyes[:2], 150)


def test_incomplete_or_foreign_shapes_fall_back_to_landmarks() -> None:
    lm = np.array([[130, 100], [175, 100], [152, 125], [135, 150], [170, 150]], float)
    spec = AlignSpec("dlib", 150, 0.25)
    want, _ = estimate_transform(lm, None, spec)
    for shape in (None, np.zeros((7, 2)), np.full((68, 2), np.nan)):
        m, method = estimate_transform(lm, None, spec, shape=shape)
        assert method == "landmarks" and np.array_equal(m, want)


def test_arcface_template_is_unchanged(shapes) -> None:
    """The ArcFace crop is insightface's: Umeyama to the template + cv2.warpAffine, bit for bit,
    whatever shape the face carries."""
    for img, shape, kind in shapes:
        if kind != "68":
            continue
        pts = _points(shape)
        lm = five_from_68(pts).astype(np.float64)
        for size in (112, 224, 128):
            spec = AlignSpec("arcface", size)
            crop, m, method = align_face(img, lm, None, spec, shape=pts)
            if hasattr(SimilarityTransform, "from_estimate"):
                t = SimilarityTransform.from_estimate(lm, spec.points())
            else:
                t = SimilarityTransform()
                t.estimate(lm, spec.points())
            old = cv2.warpAffine(img, t.params[:2], (size, size), borderValue=0)
            assert method == "landmarks"
            np.testing.assert_allclose(m, t.params[:2], atol=1e-12)
            np.testing.assert_array_equal(crop, old)


# ---------------------------------------------------------------------------------------------
# the native shape in Detections and the frame


def test_detections_carry_shapes() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 30, 30], [40, 40, 50, 50]], np.float32)
    shapes = [np.full((68, 2), 1.0), None, np.full((5, 2), 2.0)]
    d = Detections(boxes, [0.9, 0.8, 0.7], None, {}, shapes)
    assert d.shapes[0].dtype == np.float32 and d.shapes[0].shape == (68, 2)
    assert Detections(boxes, [0.9, 0.8, 0.7], None).shapes is None  # old call: no shapes
    sel = d.select(np.array([2, 0]))
    assert sel.shapes[0].shape == (5, 2) and sel.shapes[1].shape == (68, 2)
    mask = d.select(np.array([False, True, True]))
    assert mask.shapes[0] is None and mask.shapes[1].shape == (5, 2)
    clipped = d.clip(45, 45)  # the third face keeps 5 x 5 pixels, all three stay
    assert len(clipped.shapes) == 3
    assert [len(s) if s is not None else 0 for s in d.clip(20, 20).shapes] == [68, 0]
    other = Detections(np.array([[1, 1, 9, 9]]), [0.95], None)
    both = Detections.concat([d, other])
    assert len(both.shapes) == 4 and both.shapes[0] is None  # other's face, best score, first
    assert Detections.concat([other, other]).shapes is None
    with pytest.raises(ValueError, match="shapes"):
        Detections(boxes, [0.9, 0.8, 0.7], None, {}, shapes[:2])


# ---------------------------------------------------------------------------------------------
# parity with the authors' pipelines on the shared photos


def _reference(img: np.ndarray, predictors, model) -> list[dict]:
    """dlib's own pipeline (face_recognition's): HOG rectangles, shape predictor on each,
    get_face_chip + compute_face_descriptor; FairFace's chip and transform on the 5-point shape."""
    hog = dlib.get_frontal_face_detector()
    rects, _, _ = hog.run(img, 1, RAW_THRESHOLD)
    out = []
    for r in rects:
        face = {"box": np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float)}
        for kind in ("68", "5"):
            shape = predictors[kind](img, r)
            chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
            face[f"desc{kind}"] = np.asarray(model.compute_face_descriptor(chip))
        shape5 = predictors["5"](img, r)
        face["fairface"] = _fairface_transform(dlib.get_face_chip(img, shape5, 300, 0.25))
        out.append(face)
    return out


def _fairface_transform(chip: np.ndarray) -> np.ndarray:
    """FairFace's predict.py transform: PIL Resize((224, 224)) (bilinear), ToTensor, Normalize
    with the ImageNet mean/std, written with PIL and numpy."""
    x = np.asarray(Image.fromarray(chip).resize((224, 224), Image.BILINEAR), np.float32) / 255
    x = (x - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    return x.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def parity(predictors) -> pd.DataFrame:
    """One row per face and shape kind: faceetl's pipeline (extract_faces with the dlib backend,
    predict's crops) against dlib's own, with the face's box width."""
    model = dlib.face_recognition_model_v1(str(dlib_model_path()))
    refs = {str(p): _reference(load_rgb(p), predictors, model) for p in PHOTOS}
    rows = []
    with dask.config.set(scheduler="sync"):
        for kind in ("68", "5"):
            faces = extract_faces([str(p) for p in PHOTOS], backend="dlib", landmarks=kind)
            df = predict(faces, model="embedding").compute().reset_index(drop=True)
            ok = np.flatnonzero((df["status"] == "ok").to_numpy())
            fair = _crops_for(df, ok, FairFacePredictor.align)
            for i in ok:
                row = df.iloc[i]
                assert len(row["shape"]) == 2 * int(kind)
                box = row[["x1", "y1", "x2", "y2"]].to_numpy(float)
                ref_faces = refs[row["path"]]
                j = int(np.argmax(box_iou(box[None], np.stack([f["box"] for f in ref_faces]))))
                ref = ref_faces[j]
                vec = np.asarray(row["embedding_vector"], np.float64)
                tensor = preprocess([fair[i]]).numpy()[0]
                rows.append(
                    {
                        "kind": kind,
                        "image": row["path"].rsplit("/", 1)[-1],
                        "width": box[2] - box[0],
                        "l2": float(np.linalg.norm(vec - ref[f"desc{kind}"])),
                        "fairface": float(np.abs(tensor - ref["fairface"]).mean()),
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_descriptors_equal_face_recognition(parity) -> None:
    for kind in ("68", "5"):
        p = parity[parity["kind"] == kind]
        assert len(p) >= 70 and (p["width"] > 300).any()  # large faces: the pyramid is used
        small = p[p["width"] <= 300]
        print(
            f"{kind}-point: {len(p)} faces, L2 to dlib's own: max {p['l2'].max():.4f}, "
            f"median {p['l2'].median():.4f} ({len(small)} faces up to 300 px: max "
            f"{small['l2'].max():.4f})"
        )
        assert small["l2"].max() <= 0.01, small.sort_values("l2").tail()
        assert p["l2"].max() <= 0.03, p.sort_values("l2").tail()


@pytest.mark.slow
def test_fairface_input_equals_fairface_pipeline(parity) -> None:
    """With the dlib backend's 5-point shapes (FairFace's own landmarks) the tensor is FairFace's;
    with the 68-point shapes it is dlib's 68-point chip, which FairFace was not fed."""
    five = parity[parity["kind"] == "5"]
    print(
        f"FairFace tensor, mean abs difference to FairFace's own: max {five['fairface'].max():.4f}"
        f", median {five['fairface'].median():.4f} ({len(five)} faces)"
    )
    assert five["fairface"].max() <= 0.05, five.sort_values("fairface").tail()


def test_predict_crops_use_the_shape_and_old_frames_still_work(tmp_path) -> None:
    """predict's crop for a dlib chip comes from the frame's shape; a frame without the column
    (written before it existed) or with a null shape aligns on its landmarks."""
    path = str(IMAGES / "single" / "fr_obama_small.jpg")
    with dask.config.set(scheduler="sync"):
        df = extract_faces([path], backend="dlib", landmarks="5").compute()
    img = load_rgb(path)
    shape = np.asarray(df["shape"].iloc[0], np.float64).reshape(5, 2)
    sp5 = dlib.shape_predictor(str(predictor_path("5")))
    x1, y1, x2, y2 = (int(v) for v in df[["x1", "y1", "x2", "y2"]].iloc[0])
    ref = np.asarray(dlib.get_face_chip(img, sp5(img, dlib.rectangle(x1, y1, x2 - 1, y2 - 1))))
    crops = _crops_for(df, np.array([0]), DLIB_ALIGN)
    np.testing.assert_array_equal(crops[0], ref)
    np.testing.assert_array_equal(
        crops[0], align_face(img, df["landmarks"].iloc[0], None, DLIB_ALIGN, shape=shape)[0]
    )
    lm = np.asarray(df["landmarks"].iloc[0], np.float64).reshape(5, 2)
    by_landmarks = align_face(img, lm, None, DLIB_ALIGN)[0]
    for frame in (
        df.drop(columns=["shape"]),
        df.assign(shape=pd.Series([None], dtype=df["shape"].dtype)),
    ):
        np.testing.assert_array_equal(_crops_for(frame, np.array([0]), DLIB_ALIGN)[0], by_landmarks)
    # the stored crop of a dlib-template extraction is the same chip
    with dask.config.set(scheduler="sync"):
        chips = extract_faces([path], backend="dlib", landmarks="5", template="dlib", size=150)
        stored = chips.compute()
    from faceetl import decode_png

    np.testing.assert_array_equal(decode_png(stored["crop"].iloc[0]), ref)
    assert stored["alignment"].iloc[0] == "shape"
    # a backend without a native shape leaves the column null
    with dask.config.set(scheduler="sync"):
        cv = extract_faces([path], backend="opencv").compute()
    assert cv["shape"].isna().all()
