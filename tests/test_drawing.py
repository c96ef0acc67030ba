"""faceetl.drawing: what is drawn lands where the frame says, within the size cap."""

from __future__ import annotations

import ast
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceetl import compute, extract_faces
from faceetl.drawing import (
    BOX_COLOUR,
    DIFFERENT_COLOUR,
    GAP,
    LANDMARK_COLOURS,
    SAME_COLOUR,
    TILE_GREY,
    closest_pairs,
    overlay_mask,
    show,
    show_pairs,
    show_parsing,
    show_runs,
)
from faceetl.images import decode_png, load_image
from faceetl.predictors.parsing import colorize, encode_mask
from helpers import FACE, IMAGES

BACKEND = "retinaface"
GROUP = [IMAGES / "group" / "facenet_multiface.jpg", IMAGES / "group" / "fr_two_people.jpg"]


@pytest.fixture(scope="module")
def face_df() -> pd.DataFrame:
    """A real detection of the one face in FACE (320x240)."""
    df = compute(extract_faces([str(FACE)], backend=BACKEND), progress=False)
    assert (df.status == "ok").sum() == 1
    return df


@pytest.fixture(scope="module")
def group_df() -> pd.DataFrame:
    df = compute(extract_faces([str(p) for p in [FACE, *GROUP]], backend=BACKEND), progress=False)
    assert (df.status == "ok").sum() >= 5
    return df


def has_colour(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 0) -> bool:
    return bool((np.abs(pixels.astype(int) - colour).max(axis=-1) <= tol).any())


def test_box_and_landmarks_drawn_on_the_photo(face_df):
    photo = load_image(FACE)
    img = show(face_df)
    out = np.asarray(img)
    h, w = photo.shape[:2]
    assert out.shape[1] == w and out.shape[0] > h  # the photo at its own size, a caption below
    r = face_df[face_df.status == "ok"].iloc[0]
    x1, y1, x2, y2 = (int(round(r[c])) for c in ("x1", "y1", "x2", "y2"))
    ys, xs = slice(y1 + 6, y2 - 6), slice(x1 + 6, x2 - 6)
    # what Jupyter shows (256 colours) keeps the drawing's colours exact too
    shown = np.asarray(Image.open(io.BytesIO(img._repr_png_())).convert("RGB"))
    for pixels in (out, shown):
        # the outline on all four edges, for their whole length
        for edge in (pixels[ys, x1], pixels[ys, x1 + 1], pixels[ys, x2], pixels[ys, x2 - 1],
                     pixels[y2, xs], pixels[y2 - 1, xs], pixels[y1, xs], pixels[y1 + 1, xs]):  # fmt: skip
            assert (edge == BOX_COLOUR).all()
        # each landmark's own colour at its place
        for k, (px, py) in enumerate(np.asarray(r["landmarks"]).reshape(5, 2)):
            assert tuple(pixels[int(round(py)), int(round(px))]) == LANDMARK_COLOURS[k]
    # away from the face the photo is untouched
    assert (out[: max(1, y1 - 20), :] == photo[: max(1, y1 - 20), :]).all()
    assert not has_colour(out[y1 + 10 : y2 - 10, x1 + 10 : x1 + 20], BOX_COLOUR)


def test_pictures_are_capped(group_df):
    img = show(group_df, max_size=300)
    assert max(img.size) <= 300
    assert max(show(group_df).size) <= 800  # the default cap
    grid = show(group_df, kind="crops", crop_size=200, columns=10, max_size=250)
    assert max(grid.size) <= 250
    # what Jupyter gets: one palette PNG of the same size, no JPEG copy
    png = img._repr_png_()
    assert img._repr_jpeg_() is None
    shown = Image.open(io.BytesIO(png))
    assert shown.format == "PNG" and shown.size == img.size and shown.mode == "P"
    assert img.mode == "RGB"  # the image itself keeps its colours


def test_crop_grid_dimensions_and_content(group_df):
    ok = group_df[group_df.status == "ok"].reset_index(drop=True)
    n, cols, size = len(ok), 3, 50
    rows = -(-n // cols)
    bare = np.asarray(show(ok, kind="crops", columns=cols, crop_size=size, captions=False))
    assert bare.shape[:2] == (rows * size + (rows - 1) * GAP, cols * size + (cols - 1) * GAP)
    # tile k holds crop k, in frame order
    for k in (0, n - 1):
        y, x = (k // cols) * (size + GAP), (k % cols) * (size + GAP)
        want = np.asarray(Image.fromarray(decode_png(ok.crop[k])).resize((size, size)), float)
        assert np.abs(bare[y : y + size, x : x + size] - want).mean() < 12
    labelled = show(ok, kind="crops", columns=cols, crop_size=size, label="score")
    assert labelled.width == bare.shape[1] and labelled.height > bare.shape[0]
    with pytest.raises(ValueError, match="no column"):
        show(ok, kind="crops", label="fairface_race")


def test_bad_rows_are_shown_not_raised(face_df, tmp_path):
    photo = tmp_path / "gone.jpg"
    shutil.copy(FACE, photo)
    df = compute(
        extract_faces([str(FACE), str(tmp_path / "missing.jpg"), str(photo)], backend=BACKEND),
        progress=False,
    )
    assert df.status.str.startswith("error").sum() == 1
    photo.unlink()  # an ok row whose photo went away since
    for kind in ("boxes", "crops"):
        out = np.asarray(show(df, kind=kind))
        assert has_colour(out, TILE_GREY)  # the stand-in tile
        assert has_colour(out, DIFFERENT_COLOUR, tol=60)  # its error text
    boxes = np.asarray(show(df))
    assert has_colour(boxes, BOX_COLOUR)  # the good photo still has its box


def test_dask_frame_is_computed(face_df):
    import dask.dataframe as dd

    ddf = dd.from_pandas(pd.concat([face_df, face_df]), npartitions=2)
    assert show(ddf).size == show(face_df).size


def test_overlay_colours_where_the_mask_says():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[5:20, 10:30] = 1  # skin
    mask[25:35, 40:55] = 17  # hair
    full = overlay_mask(image, mask, alpha=1.0)
    palette = colorize(mask)
    assert (full[mask > 0] == palette[mask > 0]).all()
    assert (full[mask == 0] == image[mask == 0]).all()  # background untouched
    half = overlay_mask(image, mask, alpha=0.5).astype(float)
    want = (image.astype(float) + palette) / 2
    assert np.abs(half[mask > 0] - want[mask > 0]).max() <= 0.5


def test_parsing_overlay_on_the_face(face_df):
    df = face_df[face_df.status == "ok"].copy()
    mask = np.zeros((512, 512), np.uint8)
    mask[:, :256] = 1  # left half skin
    mask[:, 256:] = 17  # right half hair
    df["parsing_mask"] = [encode_mask(mask)]
    prov = {"align": {"template": "dlib", "size": 512, "padding": 0.75}}
    df["parsing_provenance"] = [json.dumps(prov)]
    size = 96
    out = np.asarray(show_parsing(df, alpha=1.0, size=size, legend=True))
    left, right = out[:size, :size], out[:size, size + 2 : 2 * size + 2]
    skin, hair = colorize(np.array([[1, 17]], np.uint8))[0]
    assert (right[:, : size // 2 - 1] == skin).all() and (right[:, size // 2 + 1 :] == hair).all()
    assert left.std() > 10
    assert has_colour(out[size:], tuple(hair))  # the legend's swatch
    with pytest.raises(ValueError, match="parsing_mask"):
        show_parsing(face_df.assign(parsing_mask=None))


@pytest.mark.slow
def test_pairs_closest_and_verdicts():
    from faceetl import compare, predict

    paths = [str(FACE), str(IMAGES / "group" / "fr_two_people.jpg")]
    emb = compute(predict(extract_faces(paths, backend="dlib"), model="embedding"), progress=False)
    emb = emb.reset_index(drop=True)
    pairs = closest_pairs(emb, n=10)
    assert all(emb.path[a] != emb.path[b] for a, b in pairs)  # never two faces of one photo
    d = [compare(emb.loc[a], emb.loc[b]) for a, b in pairs]
    assert d == sorted(d) and len(pairs) == 2  # 1 face x 2 faces
    assert d[0] <= 0.6 < d[1]  # Obama and Obama; Obama and Biden
    out = np.asarray(show_pairs(emb, pairs, columns=2))
    assert has_colour(out, SAME_COLOUR, tol=40) and has_colour(out, DIFFERENT_COLOUR, tol=40)


def test_runs_side_by_side(group_df, face_df):
    img = show_runs({"a": group_df, "b": face_df}, kind="boxes", max_size=500)
    assert max(img.size) <= 500
    out = np.asarray(img)  # drawn at its final size: the drawing's colours are exact
    assert all(has_colour(out, c) for c in (BOX_COLOUR, *LANDMARK_COLOURS))
    assert has_colour(out, TILE_GREY)  # the photos of group_df that face_df has not
    assert show_runs({"a": group_df, "b": face_df}, max_size=400).width <= 400


def test_module_imports_no_image_library():
    """Importing faceetl.drawing (any of its modules) must not pull in PIL or OpenCV (they load
    inside functions), nor faceetl's heavier modules: only the package's own."""
    package = Path(__import__("faceetl.drawing").drawing.__file__).parent
    for module in sorted(package.glob("*.py")):
        tree = ast.parse(module.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top for a in n.names if isinstance(n, ast.Import)}
        names |= {(n.module or "").split(".")[0] for n in top
                  if isinstance(n, ast.ImportFrom) and n.level == 0}  # fmt: skip
        assert not names & {"PIL", "cv2", "faceetl"}, module.name
        beyond = {n.module for n in top if isinstance(n, ast.ImportFrom) and n.level > 1}
        assert not beyond, (module.name, beyond)  # nothing from faceetl outside the package
