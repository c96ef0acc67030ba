"""Pictures of face frames for notebooks: boxes and landmarks on the photos, crop grids, embedding
pairs, parsing overlays, several runs side by side.

Every function returns an RGB :class:`PIL.Image.Image` no larger than ``max_size`` pixels on its
longest side. In Jupyter it displays as one 256-colour PNG (about a third of a full-colour one,
and without the second JPEG copy Pillow's own display hook adds), so that notebooks committed
with their outputs stay small; the image itself keeps its full colours for ``.save()``.

>>> from faceetl.drawing import show
>>> show(faces)                                    # boxes, scores, landmarks on each photo
>>> show(faces, kind="crops", label="album")       # the crops, labelled by a column

PIL, OpenCV and the image reader are imported inside the functions: importing this module costs
nothing. The layout (photos in justified rows, grids, captions, legends) is written here on
Pillow's drawing primitives: Pillow has no contact-sheet layout, and matplotlib, which could lay
out subplots, is not needed to display a picture and makes much larger notebook outputs.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

#: longest side of a picture, in pixels, unless a function is told otherwise
MAX_SIZE = 800
#: box outline colour (RGB)
BOX_COLOUR = (0, 255, 0)
#: colours of the five landmarks: left eye, right eye, nose, left and right mouth corner
LANDMARK_COLOURS = ((255, 0, 0), (0, 96, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))
SAME_COLOUR = (0, 150, 0)
DIFFERENT_COLOUR = (200, 0, 0)
BACKGROUND = (255, 255, 255)
TILE_GREY = (215, 215, 215)
TEXT_COLOUR = (0, 0, 0)
GAP = 4
FONT_SIZE = 12
SCORE_FONT_SIZE = 10
#: faces a crop grid shows at most; photos a box sheet shows at most
MAX_FACES = 64
MAX_IMAGES = 12

_BOX_COLUMNS = ("path", "status", "x1", "y1", "x2", "y2", "score", "landmarks")


# ----------------------------------------------------------------------------- public pictures


def show(
    faces: Any,
    kind: str = "boxes",
    *,
    label: str | None = None,
    max_size: int = MAX_SIZE,
    crop_size: int = 112,
    columns: int | None = None,
    max_images: int = MAX_IMAGES,
    max_faces: int = MAX_FACES,
    landmarks: bool = True,
    scores: bool = True,
    captions: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> Image.Image:
    """A picture of a face frame (pandas, or a small Dask frame, which is computed).

    ``kind="boxes"``: each photo (grouped by ``path``, at most ``max_images``) with its faces'
    boxes, scores (``scores``) and five landmarks (``landmarks``) drawn on it, captioned with the
    file name; a photo without a face says so, a row whose status is an error shows the error.
    ``kind="crops"``: a grid of the face crops (the ``crop`` bytes, else ``crop_path``, else the
    box cut from the photo), ``columns`` wide, each ``crop_size`` pixels and captioned with the
    ``label`` column (e.g. a FairFace prediction) or the file name and face number (none with
    ``captions=False``).
    """
    if kind not in ("boxes", "crops"):
        raise ValueError(f"kind must be 'boxes' or 'crops', not {kind!r}")
    need = _BOX_COLUMNS if kind == "boxes" else ("path", "status", "face")
    extra = ("face", "crop", "crop_path", "x1", "y1", "x2", "y2", "score")
    df = _frame(faces, need, extra + ((label,) if label else ()))
    if label is not None and label not in df.columns:
        raise ValueError(f"no column {label!r} to label the crops with")
    if kind == "boxes":
        return _box_sheet(df, max_size, max_images, landmarks, scores, storage_options)
    tiles = _crop_tiles(df.head(max_faces), label, crop_size, captions, storage_options)
    more = len(df) - max_faces
    return _grid(tiles, columns, max_size, footer=f"... and {more} more" if more > 0 else None)


def show_pairs(
    faces: Any,
    pairs: Iterable[tuple[Any, Any]] | None = None,
    *,
    n: int = 6,
    model: str = "dlib",
    threshold: float | None = None,
    crop_size: int = 112,
    columns: int = 3,
    max_size: int = MAX_SIZE,
    storage_options: dict[str, Any] | None = None,
) -> Image.Image:
    """Pairs of faces side by side with their embedding distance and same-person verdict.

    ``faces``: a frame with ``embedding_vector`` (``faceetl.predict(..., model="embedding")``);
    ``pairs``: (row label, row label) pairs of it, by default the ``n`` closest pairs of faces on
    different photos. Distance and verdict are :func:`faceetl.compare` / :func:`faceetl.verify`'s
    for ``model``, at ``threshold`` or the authors' (none is published for FaceNet: then only the
    distance is shown).
    """
    from .compare import THRESHOLDS, compare

    df = _frame(
        faces,
        ("path", "status", "embedding_vector"),
        ("face", "crop", "crop_path", "x1", "y1", "x2", "y2", "embedding_network"),
    )
    if pairs is None:
        pairs = closest_pairs(df, n, model)
    elif df is not faces:
        raise ValueError("pairs are row labels: give a pandas frame with a unique index")
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pair of faces to show")
    limit = THRESHOLDS.get(model) if threshold is None else threshold
    crops = _crops(
        df.loc[sorted({k for p in pairs for k in p}, key=str)], crop_size, storage_options
    )
    tiles = []
    for a, b in pairs:
        d = float(compare(df.loc[a], df.loc[b], model))
        if limit is None:
            text, colour = f"distance {d:.2f}", TEXT_COLOUR
        elif d <= limit:
            text, colour = f"{d:.2f} <= {limit:g}: same person", SAME_COLOUR
        else:
            text, colour = f"{d:.2f} > {limit:g}: different", DIFFERENT_COLOUR
        names = f"{_name(df.loc[a])}  |  {_name(df.loc[b])}"
        tiles.append(_caption(_hstack([crops[a], crops[b]], gap=2), [names, text], colour))
    return _grid(tiles, columns, max_size)


def closest_pairs(faces: pd.DataFrame, n: int = 6, model: str = "dlib") -> list[tuple[Any, Any]]:
    """Row labels of the ``n`` closest pairs of faces on different photos (by embedding)."""
    from .compare import compare, vectors

    ok = faces[faces["status"] == "ok"]
    if len(ok) < 2:
        return []
    vecs = vectors(ok, model)
    d = np.asarray(compare(vecs[:, None], vecs[None], model), np.float64)
    paths = ok["path"].astype(str).to_numpy()
    d[paths[:, None] == paths[None, :]] = np.inf  # same photo: never the same person
    i, j = np.triu_indices(len(ok), 1)
    order = np.argsort(d[i, j], kind="stable")
    keep = [k for k in order if np.isfinite(d[i[k], j[k]])][:n]
    return [(ok.index[i[k]], ok.index[j[k]]) for k in keep]


def show_parsing(
    faces: Any,
    *,
    column: str = "parsing_mask",
    alpha: float = 0.5,
    size: int = 192,
    max_faces: int = 6,
    columns: int = 2,
    legend: bool = True,
    max_size: int = MAX_SIZE,
    storage_options: dict[str, Any] | None = None,
) -> Image.Image:
    """Each face's parsing crop beside the same crop with its label mask laid over it.

    The crop is made again from the photo with the geometry recorded in ``parsing_provenance``
    (the predictor's 512 px dlib chip), so the mask lies on the pixels it was predicted from;
    class colours are :func:`faceetl.predictors.parsing.colorize`'s, named in a legend.
    """
    from PIL import Image

    from .predictors.parsing import decode_mask

    df = _frame(faces, ("path", "status", column), _BOX_COLUMNS + ("shape", "parsing_provenance"))
    rows = df[(df["status"] == "ok") & df[column].notna()].head(max_faces)
    if not len(rows):
        raise ValueError(f"no face with a {column!r} to show")
    photos = _PhotoCache(storage_options)
    tiles, seen = [], set()
    for _, row in rows.iterrows():
        mask = decode_mask(bytes(row[column]))
        seen.update(np.unique(mask).tolist())
        try:
            crop = _parsing_crop(row, photos.get(str(row["path"])), mask.shape[0])
        except Exception as e:  # an unreadable photo: say so in place of the face
            tiles.append(_message_tile(f"{_name(row)}: {e}", (2 * size + 2, size)))
            continue
        pair = [
            Image.fromarray(crop).resize((size, size), Image.BILINEAR),
            Image.fromarray(overlay_mask(crop, mask, alpha)).resize((size, size), Image.NEAREST),
        ]
        tiles.append(_caption(_hstack(pair, gap=2), [_name(row)]))
    sheet = _grid(tiles, columns, max_size)
    if legend:
        sheet = _vstack([sheet, _legend(sorted(seen), sheet.width)])
    return _display(_fit(sheet, max_size))


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (RGB uint8, the mask's size) with each labelled pixel blended towards its class
    colour by ``alpha``; background (label 0) is left as it is."""
    from .predictors.parsing import colorize

    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.shape[:2] != mask.shape or image.ndim != 3:
        raise ValueError(
            f"an RGB image of the mask's size {mask.shape} is needed, got {image.shape}"
        )
    colours = colorize(mask).astype(np.float32)
    out = image.astype(np.float32)
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def side_by_side(
    panels: Mapping[str, Image.Image], *, max_size: int = MAX_SIZE, gap: int = 12
) -> Image.Image:
    """Pictures in a row, each titled with its key (e.g. one crop grid per detector)."""
    if not panels:
        raise ValueError("no pictures to put side by side")
    titled = [_title(img, str(name)) for name, img in panels.items()]
    return _display(_fit(_hstack(titled, gap=gap, align="top"), max_size))


def show_runs(
    runs: Mapping[str, Any],
    kind: str = "crops",
    *,
    columns: int = 4,
    crop_size: int | None = None,
    label: str | None = None,
    max_images: int = MAX_IMAGES,
    max_faces: int = MAX_FACES,
    landmarks: bool = True,
    scores: bool = True,
    max_size: int = MAX_SIZE,
    storage_options: dict[str, Any] | None = None,
) -> Image.Image:
    """Several runs over the same photos side by side, each titled with its key: one per
    detector, or before and after fine-tuning (``{name: faces}``).

    ``kind="crops"``: each run's crop grid, ``columns`` wide, crops of ``crop_size`` (default: as
    large as fit in ``max_size``), captioned only with a ``label`` column if one is given.
    ``kind="boxes"``: one row per photo, one column per run, each run's boxes on the photo.
    """
    if not runs:
        raise ValueError("no runs to show")
    n = len(runs)
    share = (max_size - 12 * (n - 1)) // n
    if kind == "crops":
        if crop_size is None:
            crop_size = max(24, (share - GAP * (columns - 1)) // columns)
        panels = {
            name: show(
                df, "crops", label=label, captions=label is not None, crop_size=crop_size,
                columns=columns, max_faces=max_faces, max_size=10 * max_size,
                storage_options=storage_options,
            )
            for name, df in runs.items()
        }  # fmt: skip
        return side_by_side(panels, max_size=max_size)
    if kind != "boxes":
        raise ValueError(f"kind must be 'boxes' or 'crops', not {kind!r}")
    frames = {name: _frame(df, _BOX_COLUMNS, ("face",)) for name, df in runs.items()}
    paths = list(dict.fromkeys(p for df in frames.values() for p in df["path"].astype(str)))
    photos = _PhotoCache(storage_options)
    grid = []  # per photo, per run: (rows, pixels or error text, drawn height)
    for path in paths[:max_images]:
        cells = []
        for df in frames.values():
            rows = df[df["path"].astype(str) == path]
            src = _sources(rows, 1, photos)[0][0][2] if len(rows) else "not in this run"
            w0, h0 = src.shape[1::-1] if isinstance(src, np.ndarray) else _ERROR_SIZE
            cells.append((rows, src, min(max_size / 2, share * h0 / w0)))
        grid.append(cells)
    titles = _titles(list(frames), share, gap=12)
    footer = (
        _text_strip(f"... and {len(paths) - max_images} more photos", max_size)
        if len(paths) > max_images
        else None
    )
    # drawn at the final size (a picture scaled after drawing blurs its lines and landmarks)
    fixed = (
        titles.height
        + len(grid) * (_line_height() + 2 + GAP)
        + (footer.height + GAP if footer else 0)
    )
    photo_h = sum(max(h for _, _, h in cells) for cells in grid)
    scale = min(1.0, (max_size - fixed) / photo_h) if photo_h else 1.0
    strips = [titles]
    for path, cells in zip(paths[:max_images], grid, strict=True):
        tiles = []
        for rows, src, h in cells:
            w0, h0 = src.shape[1::-1] if isinstance(src, np.ndarray) else _ERROR_SIZE
            h = max(1, int(h * scale))
            tile = _box_tile(path, rows, src, (max(1, round(h * w0 / h0)), h), landmarks, scores)
            tiles.append(_hstack([tile, _blank(share - tile.width, 1)], gap=0))  # columns align
        strips.append(_hstack(tiles, gap=12))
    if footer:
        strips.append(footer)
    return _display(_fit(_vstack(strips), max_size))


def _titles(names: Sequence[str], width: int, gap: int) -> Image.Image:
    """Column titles: ``names`` at ``width`` + ``gap`` pixel steps."""
    from PIL import Image, ImageDraw

    size = FONT_SIZE + 2
    out = Image.new("RGB", (len(names) * (width + gap) - gap, _line_height(size) + 2), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for k, name in enumerate(names):
        draw.text((k * (width + gap) + 1, 0), name, fill=TEXT_COLOUR, font=_font(size))
    return out


# ----------------------------------------------------------------------------- frames and photos


def _frame(faces: Any, need: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """A pandas frame of the columns needed (a Dask frame is computed on those columns only)."""
    missing = [c for c in need if c not in faces.columns]
    if missing:
        raise ValueError(f"the frame lacks columns {missing}: a faceetl face frame is needed")
    if hasattr(faces, "dask") and hasattr(faces, "compute"):
        wanted = list(dict.fromkeys([*need, *(c for c in optional if c in faces.columns)]))
        faces = faces[wanted].compute()
    if not faces.index.is_unique:  # pieces of a Dask frame each count from 0
        faces = faces.reset_index(drop=True)
    return faces


def _name(row: pd.Series) -> str:
    """``file.jpg #face`` of a row (the file name only: no folders in the pictures)."""
    name = PurePosixPath(str(row["path"]).replace("\\", "/")).name
    face = row.get("face", -1)
    return name if face is None or int(face) < 0 else f"{name} #{int(face)}"


def _is_error(status: Any) -> bool:
    return str(status).startswith("error")


class _PhotoCache:
    """Photos read once each through :func:`faceetl.images.load_image` (local or URL); a photo
    that cannot be read raises its error again each time it is asked for."""

    def __init__(self, storage_options: dict[str, Any] | None) -> None:
        self.storage_options = storage_options
        self._seen: dict[str, np.ndarray | Exception] = {}

    def get(self, path: str) -> np.ndarray:
        from .images import load_image

        if path not in self._seen:
            try:
                self._seen[path] = load_image(path, storage_options=self.storage_options)
            except Exception as e:  # ImageError, or a storage error: shown, not raised
                self._seen[path] = e
        got = self._seen[path]
        if isinstance(got, Exception):
            raise got
        return got


def _parsing_crop(row: pd.Series, photo: np.ndarray, size: int) -> np.ndarray:
    """The crop the parsing mask of ``row`` was predicted on, made again from the photo."""
    from .align import AlignSpec, crop_face, estimate_transform
    from .predictors.parsing import DEFAULT_PADDING

    align = {}
    if isinstance(row.get("parsing_provenance"), str):
        align = json.loads(row["parsing_provenance"]).get("align", {})
    spec = AlignSpec(
        align.get("template", "dlib"),
        int(align.get("size", size)),
        align.get("padding", DEFAULT_PADDING),
    )
    lm = _points(row.get("landmarks"))
    shape = row.get("shape")
    shape = None if _missing(shape) else np.asarray(shape, np.float64)
    box = np.array([row["x1"], row["y1"], row["x2"], row["y2"]], np.float64)
    m, _ = estimate_transform(lm, box, spec, shape)
    crop = crop_face(photo, m, spec)
    if crop.shape[:2] != (size, size):
        raise ValueError(f"the recorded crop is {crop.shape[1]} px, the mask {size} px")
    return crop


def _missing(v: Any) -> bool:
    """True for an empty cell: None, NaN or a null (``pd.NA``); a list, array or bytes is there."""
    if v is None:
        return True
    if isinstance(v, (bytes, bytearray, memoryview, str)) or np.ndim(v) > 0:
        return False
    import pandas as pd

    return bool(pd.isna(v))


def _points(v: Any) -> np.ndarray | None:
    """(5, 2) landmarks of a cell, or None."""
    if _missing(v):
        return None
    return np.asarray(v, np.float64).reshape(-1, 2)


# ----------------------------------------------------------------------------- boxes on photos


def _sources(
    df: pd.DataFrame, max_images: int, photos: _PhotoCache
) -> tuple[list[tuple[str, pd.DataFrame, np.ndarray | str]], int]:
    """Up to ``max_images`` photos of ``df`` as ``(path, rows, pixels or error text)`` in the
    order of the frame, and how many more there are."""
    groups = list(df.groupby(df["path"].astype(str), sort=False))
    out: list[tuple[str, pd.DataFrame, np.ndarray | str]] = []
    for path, rows in groups[:max_images]:
        errors = rows["status"][rows["status"].map(_is_error)]
        if len(errors):
            out.append((path, rows, str(errors.iloc[0])))
            continue
        try:
            out.append((path, rows, photos.get(path)))
        except Exception as e:  # the photo went away since: its error, in place of the photo
            out.append((path, rows, f"error: {e}"))
    return out, max(0, len(groups) - max_images)


#: the size an unreadable photo's tile stands in for
_ERROR_SIZE = (320, 240)


def _box_tile(
    path: str,
    rows: pd.DataFrame,
    src: np.ndarray | str,
    size: tuple[int, int],
    landmarks: bool,
    scores: bool,
) -> Image.Image:
    """The photo at ``size`` with the boxes of ``rows`` drawn on it (or the message that stands
    for it), captioned with the file name and the number of faces."""
    from PIL import Image

    name = PurePosixPath(path.replace("\\", "/")).name
    if isinstance(src, str):
        colour = DIFFERENT_COLOUR if _is_error(src) else TEXT_COLOUR
        return _caption(_message_tile(src, size), [name], colour)
    img = Image.fromarray(src)
    if size != img.size:
        img = img.resize(size, Image.LANCZOS)
    ok = rows[rows["status"] == "ok"]
    _draw_faces(img, ok, size[0] / src.shape[1], landmarks, scores)
    what = f"{len(ok)} face{'s' if len(ok) != 1 else ''}" if len(ok) else "no face"
    return _caption(img, [f"{name}: {what}"])


def _box_sheet(
    df: pd.DataFrame,
    max_size: int,
    max_images: int,
    landmarks: bool,
    scores: bool,
    storage_options: dict[str, Any] | None,
) -> Image.Image:
    sources, more = _sources(df, max_images, _PhotoCache(storage_options))
    sizes = [s.shape[1::-1] if isinstance(s, np.ndarray) else _ERROR_SIZE for _, _, s in sources]
    footer = _line_height() + 4 + GAP if more > 0 else 0
    rows = _justified(sizes, max_size, _line_height() + 2, max_size - footer)
    strips = []
    for row in rows:
        tiles = [_box_tile(*sources[k][:3], (w, h), landmarks, scores) for k, w, h in row]
        strips.append(_hstack(tiles))
    sheet = _vstack(strips)
    if more > 0:
        sheet = _vstack([sheet, _text_strip(f"... and {more} more photos", sheet.width)])
    return _display(_fit(sheet, max_size))


def _justified(
    sizes: Sequence[tuple[int, int]], max_size: int, cap_h: int, max_height: int
) -> list[list[tuple[int, int, int]]]:
    """Photos of ``sizes`` (w, h) in rows, in order: ``[(index, width, height), ...]`` per row.

    Each row but a short last one is scaled to the sheet's full width (at most ``max_size``); the
    tallest common row height is taken at which the rows, with a ``cap_h`` caption each, fit in
    ``max_height``. A single photo smaller than ``max_size`` keeps its own size.
    """
    ratios = [w / h for w, h in sizes]
    target = min(max(h for _, h in sizes), max_height - cap_h)
    while True:
        natural = sum(r * target for r in ratios) + GAP * (len(ratios) - 1)
        width = min(max_size, int(natural))
        rows: list[list[int]] = [[]]
        used = 0.0
        for k, r in enumerate(ratios):
            w = r * target
            if rows[-1] and used + GAP + w > width:
                rows.append([])
                used = 0.0
            used += w + (GAP if rows[-1] else 0)
            rows[-1].append(k)
        out = []
        for n, row in enumerate(rows):
            room = width - GAP * (len(row) - 1)
            f = room / sum(ratios[k] * target for k in row)
            short_last = n == len(rows) - 1 and len(rows) > 1 and f > 1
            scale = 1.0 if short_last else min(f, 1.5)  # a short last row keeps the height
            h = max(1, int(target * scale))
            widths = [max(1, round(ratios[k] * h)) for k in row]
            if scale == f:  # a full row: rounding left to the last photo, the row fills exactly
                widths[-1] = max(1, room - sum(widths[:-1]))
            out.append([(k, min(w, max_size), h) for k, w in zip(row, widths, strict=True)])
        total = sum(r[0][2] + cap_h for r in out) + GAP * (len(out) - 1)
        if total <= max_height or target <= 32:
            return out
        target = max(32, int(target * 0.93))


def _draw_faces(
    img: Image.Image, rows: pd.DataFrame, scale: float, landmarks: bool, scores: bool
) -> None:
    """Boxes, scores and landmarks of ``rows`` on ``img`` (already resized by ``scale``)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 250))
    font = _font(SCORE_FONT_SIZE)
    for _, r in rows.iterrows():
        box = np.array([r["x1"], r["y1"], r["x2"], r["y2"]], np.float64) * scale
        if not np.isfinite(box).all():
            continue
        x1, y1, x2, y2 = (round(float(v)) for v in box)  # PIL would truncate
        draw.rectangle([x1, y1, x2, y2], outline=BOX_COLOUR, width=width)
        radius = float(np.clip((x2 - x1) / 24, 1.5, width + 1))  # small faces: small dots
        if landmarks:
            pts = _points(r.get("landmarks"))
            for k, (px, py) in enumerate([] if pts is None else pts * scale):
                if np.isfinite(px) and np.isfinite(py):
                    colour = LANDMARK_COLOURS[k % len(LANDMARK_COLOURS)]
                    draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
        if scores and np.isfinite(float(r.get("score", np.nan))):
            text = f"{float(r['score']):.2f}"
            tw, th = draw.textlength(text, font=font), _line_height(SCORE_FONT_SIZE)
            ty = y1 - th - 1 if y1 - th - 1 >= 0 else y1 + width  # inside the box at the top edge
            draw.rectangle([x1, ty, x1 + tw + 3, ty + th], fill=BOX_COLOUR)
            draw.text((x1 + 2, ty), text, fill=TEXT_COLOUR, font=font)


# ----------------------------------------------------------------------------- crops


def _crops(
    df: pd.DataFrame, size: int, storage_options: dict[str, Any] | None
) -> dict[Any, Image.Image]:
    """Each row's crop as a ``size`` square picture: the ``crop`` bytes, else the file at
    ``crop_path``, else the box cut from the photo; a crop that cannot be had says why."""
    from PIL import Image

    from . import storage

    photos = _PhotoCache(storage_options)
    out: dict[Any, Image.Image] = {}
    for key, r in df.iterrows():
        try:
            data = r.get("crop")
            if _missing(data) and isinstance(r.get("crop_path"), str):
                data = storage.read_bytes(r["crop_path"], storage_options)
            if not _missing(data):
                img = Image.open(io.BytesIO(bytes(data))).convert("RGB")
            else:  # no crop kept: the box, as it is in the photo
                photo = photos.get(str(r["path"]))
                x1, y1, x2, y2 = (int(round(float(r[c]))) for c in ("x1", "y1", "x2", "y2"))
                img = Image.fromarray(photo[max(0, y1) : y2, max(0, x1) : x2])
            out[key] = _square(img, size)
        except Exception as e:  # unreadable crop or photo: the tile says why
            out[key] = _message_tile(f"error: {e}", (size, size))
    return out


def _crop_tiles(
    df: pd.DataFrame,
    label: str | None,
    size: int,
    captions: bool,
    storage_options: dict[str, Any] | None,
) -> list[Image.Image]:
    ok = df[df["status"] == "ok"]
    crops = _crops(ok, size, storage_options)
    tiles = []
    for key, r in df.iterrows():
        if r["status"] == "ok":
            text = _name(r) if label is None else _label_text(r[label])
            colour = TEXT_COLOUR
            img = crops[key]
        else:
            text = _name(r)
            colour = DIFFERENT_COLOUR if _is_error(r["status"]) else TEXT_COLOUR
            status = "no face" if r["status"] == "no_face" else str(r["status"])
            img = _message_tile(status, (size, size))
        tiles.append(_caption(img, [_fit_text(text, size)], colour) if captions else img)
    return tiles


def _label_text(v: Any) -> str:
    if _missing(v):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.2f}"
    return str(v)


def _square(img: Image.Image, size: int) -> Image.Image:
    """``img`` fitted in a ``size`` square (centred on white when it is not square)."""
    from PIL import Image

    scale = size / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    img = img.resize((w, h), Image.LANCZOS)
    if (w, h) == (size, size):
        return img
    out = Image.new("RGB", (size, size), BACKGROUND)
    out.paste(img, ((size - w) // 2, (size - h) // 2))
    return out


# ----------------------------------------------------------------------------- layout


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _line_height(size: int = FONT_SIZE) -> int:
    box = _font(size).getbbox("Ag|")
    return int(box[3]) + 2


def _text_width(text: str) -> float:
    from PIL import Image, ImageDraw

    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=_font(FONT_SIZE))


def _fit_text(text: str, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if _text_width(text) <= width:
        return text
    while text and _text_width(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _wrap(text: str, width: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` pixels (long words are cut)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        cand = f"{line} {word}".strip()
        if _text_width(cand) <= width:
            line = cand
            continue
        if line:
            lines.append(line)
        while _text_width(word) > width and len(word) > 1:
            cut = max(1, len(word) - 1)
            while cut > 1 and _text_width(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines


def _message_tile(text: str, size: tuple[int, int]) -> Image.Image:
    """A grey tile of ``size`` with ``text`` written across it (what stands for a missing face
    or photo)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, TILE_GREY)
    draw = ImageDraw.Draw(img)
    lh = _line_height()
    lines = _wrap(text, max(8, size[0] - 8))[: max(1, (size[1] - 8) // lh)]
    y = max(4, (size[1] - lh * len(lines)) // 2)
    for line in lines:
        draw.text(
            (4, y),
            line,
            fill=DIFFERENT_COLOUR if _is_error(text) else TEXT_COLOUR,
            font=_font(FONT_SIZE),
        )
        y += lh
    return img


def _caption(
    img: Image.Image, lines: Sequence[str], colour: tuple[int, int, int] = TEXT_COLOUR
) -> Image.Image:
    """``img`` with ``lines`` of text under it (the last line in ``colour``)."""
    from PIL import Image, ImageDraw

    lh = _line_height()
    out = Image.new("RGB", (img.width, img.height + lh * len(lines) + 2), BACKGROUND)
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        fill = colour if k == len(lines) - 1 else TEXT_COLOUR
        draw.text(
            (1, img.height + 1 + k * lh),
            _fit_text(line, img.width - 2),
            fill=fill,
            font=_font(FONT_SIZE),
        )
    return out


def _title(img: Image.Image, title: str) -> Image.Image:
    from PIL import Image, ImageDraw

    lh = _line_height(FONT_SIZE + 2)
    out = Image.new("RGB", (img.width, img.height + lh + 2), BACKGROUND)
    ImageDraw.Draw(out).text(
        (1, 0), _fit_text(title, img.width), fill=TEXT_COLOUR, font=_font(FONT_SIZE + 2)
    )
    out.paste(img, (0, lh + 2))
    return out


def _text_strip(text: str, width: int) -> Image.Image:
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (width, _line_height() + 4), BACKGROUND)
    ImageDraw.Draw(out).text(
        (2, 2), _fit_text(text, width - 4), fill=TEXT_COLOUR, font=_font(FONT_SIZE)
    )
    return out


def _legend(labels: Sequence[int], width: int) -> Image.Image:
    """Colour swatches and names of the parsing classes in ``labels`` (background left out)."""
    from PIL import Image, ImageDraw

    from .predictors.parsing import colorize, parsing_classes

    items = [(k, parsing_classes[k]) for k in labels if 0 < k < len(parsing_classes)]
    lh = _line_height()
    x, y, rows = 2, 2, []
    for k, name in items:
        w = lh + 4 + int(_text_width(name)) + 10
        if x + w > width and x > 2:
            x, y = 2, y + lh + 2
        rows.append((x, y, k, name))
        x += w
    out = Image.new("RGB", (width, y + lh + 4), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for x, y, k, name in rows:
        colour = tuple(int(c) for c in colorize(np.array([[k]], np.uint8))[0, 0])
        draw.rectangle([x, y + 1, x + lh - 2, y + lh - 2], fill=colour, outline=(90, 90, 90))
        draw.text((x + lh + 2, y), name, fill=TEXT_COLOUR, font=_font(FONT_SIZE))
    return out


def _hstack(imgs: Sequence[Image.Image], gap: int = GAP, align: str = "top") -> Image.Image:
    from PIL import Image

    w = sum(i.width for i in imgs) + gap * (len(imgs) - 1)
    h = max(i.height for i in imgs)
    out = Image.new("RGB", (w, h), BACKGROUND)
    x = 0
    for i in imgs:
        out.paste(i, (x, 0 if align == "top" else (h - i.height) // 2))
        x += i.width + gap
    return out


def _blank(width: int, height: int) -> Image.Image:
    from PIL import Image

    return Image.new("RGB", (max(1, width), max(1, height)), BACKGROUND)


def _vstack(imgs: Sequence[Image.Image], gap: int = GAP) -> Image.Image:
    from PIL import Image

    w = max(i.width for i in imgs)
    out = Image.new("RGB", (w, sum(i.height for i in imgs) + gap * (len(imgs) - 1)), BACKGROUND)
    y = 0
    for i in imgs:
        out.paste(i, (0, y))
        y += i.height + gap
    return out


def _pack(tiles: Sequence[Image.Image], width: int) -> Image.Image:
    """Tiles left to right in rows at most ``width`` wide (a tile wider alone gets its own row)."""
    rows: list[list[Image.Image]] = [[]]
    used = 0
    for t in tiles:
        if rows[-1] and used + GAP + t.width > width:
            rows.append([])
            used = 0
        used += t.width + (GAP if rows[-1] else 0)
        rows[-1].append(t)
    return _vstack([_hstack(r) for r in rows if r])


def _grid(
    tiles: Sequence[Image.Image], columns: int | None, max_size: int, footer: str | None = None
) -> Image.Image:
    """Tiles in a grid ``columns`` wide (default: as many as fit in ``max_size``)."""
    if not tiles:
        raise ValueError("nothing to show: the frame has no rows")
    cell = max(t.width for t in tiles)
    if columns is None:
        columns = max(1, min(len(tiles), (max_size + GAP) // (cell + GAP)))
    rows = [tiles[k : k + columns] for k in range(0, len(tiles), columns)]
    sheet = _vstack([_hstack(r) for r in rows])
    if footer:
        sheet = _vstack([sheet, _text_strip(footer, sheet.width)])
    return _display(_fit(sheet, max_size))


def _fit(img: Image.Image, max_size: int) -> Image.Image:
    """``img`` scaled down (never up) so that its longest side is at most ``max_size``."""
    from PIL import Image

    scale = max_size / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, math.floor(img.width * scale)), max(1, math.floor(img.height * scale)))
    return img.resize(size, Image.LANCZOS)


def _display(img: Image.Image) -> Image.Image:
    """``img`` with compact Jupyter display hooks: one 256-colour PNG, no JPEG copy.

    Pillow's own hooks give Jupyter both a PNG (compression level 1) and a JPEG of every
    image, and a full-colour PNG of a photo is large; these two instance attributes replace them
    for this image only, its pixels are left as they are.
    """
    img._repr_png_ = functools.partial(_palette_png, img)  # type: ignore[attr-defined]
    img._repr_jpeg_ = lambda: None  # type: ignore[attr-defined]
    return img


#: colours kept exact in the 256-colour PNG (a few pixels of a landmark would otherwise be
#: merged into the photo's colours)
_RESERVED = (
    BOX_COLOUR, *LANDMARK_COLOURS, SAME_COLOUR, DIFFERENT_COLOUR, TEXT_COLOUR, BACKGROUND, TILE_GREY,
)  # fmt: skip


def _palette_png(img: Image.Image) -> bytes:
    """PNG bytes of ``img`` in 256 colours: the photo's own (median cut, dithered), and the
    drawing's colours exactly where the picture has them exactly."""
    from PIL import Image

    n = 256 - len(_RESERVED)
    photo = img.quantize(n)
    palette = photo.getpalette()[: 3 * n]
    palette += [0, 0, 0] * (n - len(palette) // 3)  # fewer colours than asked for
    index = np.array(photo)
    rgb = np.asarray(img.convert("RGB"))
    for k, colour in enumerate(_RESERVED):
        index[(rgb == colour).all(axis=-1)] = n + k
    out = Image.fromarray(index, "P")
    out.putpalette(palette + [v for colour in _RESERVED for v in colour])
    buf = io.BytesIO()
    out.save(buf, "PNG", optimize=True)
    return buf.getvalue()
