"""Faces as square crop tiles: each row's crop (kept bytes, a crop file, or its box cut from the
photo) and, for a crop grid, the tile of a row without a face, captioned by a column's value.

Used by :func:`faceetl.drawing.show` (``kind="crops"``) and :func:`faceetl.drawing.show_pairs`;
it changes with where faceetl keeps its crops and how a grid labels them.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from .layout import _caption, _fit_text, _is_error, _message_tile, _square
from .sources import _missing, _name, _PhotoCache
from .style import DIFFERENT_COLOUR, TEXT_COLOUR

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image


def _crops(
    df: pd.DataFrame, size: int, storage_options: dict[str, Any] | None
) -> dict[Any, Image.Image]:
    """Each row's crop as a ``size`` square picture: the ``crop`` bytes, else the file at
    ``crop_path``, else the box cut from the photo; a crop that cannot be had says why."""
    from PIL import Image

    from .. import storage

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
