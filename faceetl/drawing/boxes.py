"""Detections drawn on their photos: boxes, scores and the five landmarks, each photo captioned
with its file name and face count, in justified rows (:func:`faceetl.drawing.show`) or in a
grid of one row per photo and one column per run (:func:`faceetl.drawing.show_runs`).

It changes with what a detection holds (box, score, landmarks) and how it is marked on a photo;
the arrangement itself is :mod:`.layout`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from .layout import (
    _blank,
    _caption,
    _display,
    _fit,
    _font,
    _hstack,
    _is_error,
    _justified,
    _line_height,
    _message_tile,
    _text_strip,
    _titles,
    _vstack,
)
from .sources import _PhotoCache, _points
from .style import (
    BOX_COLOUR,
    DIFFERENT_COLOUR,
    GAP,
    LANDMARK_COLOURS,
    SCORE_FONT_SIZE,
    TEXT_COLOUR,
)

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

#: the size an unreadable photo's tile stands in for
_ERROR_SIZE = (320, 240)


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


def _source_size(src: np.ndarray | str) -> tuple[int, int]:
    """(width, height) of a photo, or the size its error message stands in for."""
    return src.shape[1::-1] if isinstance(src, np.ndarray) else _ERROR_SIZE


def _box_sheet(
    df: pd.DataFrame,
    max_size: int,
    max_images: int,
    landmarks: bool,
    scores: bool,
    storage_options: dict[str, Any] | None,
) -> Image.Image:
    sources, more = _sources(df, max_images, _PhotoCache(storage_options))
    sizes = [_source_size(s) for _, _, s in sources]
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


def _runs_sheet(
    frames: Mapping[str, pd.DataFrame],
    share: int,
    max_size: int,
    max_images: int,
    *,
    landmarks: bool,
    scores: bool,
    storage_options: dict[str, Any] | None,
) -> Image.Image:
    """One row per photo (in the order the runs first have it), one column ``share`` wide per
    run with that run's boxes on the photo, under the runs' names."""
    paths = list(dict.fromkeys(p for df in frames.values() for p in df["path"].astype(str)))
    grid = _run_cells(frames, paths[:max_images], share, max_size, _PhotoCache(storage_options))
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
            w0, h0 = _source_size(src)
            h = max(1, int(h * scale))
            tile = _box_tile(path, rows, src, (max(1, round(h * w0 / h0)), h), landmarks, scores)
            tiles.append(_hstack([tile, _blank(share - tile.width, 1)], gap=0))  # columns align
        strips.append(_hstack(tiles, gap=12))
    if footer:
        strips.append(footer)
    return _display(_fit(_vstack(strips), max_size))


def _run_cells(
    frames: Mapping[str, pd.DataFrame],
    paths: list[str],
    share: int,
    max_size: int,
    photos: _PhotoCache,
) -> list[list[tuple[pd.DataFrame, np.ndarray | str, float]]]:
    """Per photo, per run: (its rows, pixels or error text, height before scaling to fit)."""
    grid = []
    for path in paths:
        cells = []
        for df in frames.values():
            rows = df[df["path"].astype(str) == path]
            src = _sources(rows, 1, photos)[0][0][2] if len(rows) else "not in this run"
            w0, h0 = _source_size(src)
            cells.append((rows, src, min(max_size / 2, share * h0 / w0)))
        grid.append(cells)
    return grid


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
