"""Face parsing masks laid over their faces: each face's parsing crop beside the same crop with
its label mask over it, and a legend of the classes shown.

It changes with :mod:`faceetl.predictors.parsing` (mask encoding, classes and their colours) and
with the alignment that made the crop (:mod:`faceetl.align`), both imported when called.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .layout import (
    _caption,
    _display,
    _fit,
    _font,
    _grid,
    _hstack,
    _line_height,
    _message_tile,
    _text_width,
    _vstack,
)
from .sources import _BOX_COLUMNS, _frame, _missing, _name, _PhotoCache, _points
from .style import BACKGROUND, FONT_SIZE, MAX_SIZE, TEXT_COLOUR

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image


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

    from ..predictors.parsing import decode_mask

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
    from ..predictors.parsing import colorize

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


def _parsing_crop(row: pd.Series, photo: np.ndarray, size: int) -> np.ndarray:
    """The crop the parsing mask of ``row`` was predicted on, made again from the photo."""
    from ..align import AlignSpec, crop_face, estimate_transform
    from ..predictors.parsing import DEFAULT_PADDING

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


def _legend(labels: Sequence[int], width: int) -> Image.Image:
    """Colour swatches and names of the parsing classes in ``labels`` (background left out)."""
    from PIL import Image, ImageDraw

    from ..predictors.parsing import colorize, parsing_classes

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
