"""Tiles, text and their arrangement on Pillow's drawing primitives: captions, titles, message
tiles, rows and columns of pictures, grids, justified rows, scaling to a cap, and the compact
Jupyter display of the result.

Nothing here knows faces, frames or photos: it takes pictures, strings and sizes, so it changes
only with the layout itself or with Pillow, and imports only :mod:`.style` (never the
face-aware modules of the package, which build on it). PIL is imported inside the functions.

Written here rather than handed to a library, having weighed these:

- matplotlib (subplots, text) is in faceetl's ``dev`` extra only, would make the base install
  heavier and slower to import, renders text and lines its own way (the pictures would change)
  and gives much larger notebook outputs;
- Pillow has no contact sheet. ``ImageOps.pad`` / ``ImageOps.contain`` / ``Image.thumbnail``
  do what :func:`_square` and :func:`_fit` do, but round sizes and centring offsets otherwise
  (a pixel off in about a quarter of crop shapes and half of sheet sizes): the pictures would
  change. ``ImageText.Text.wrap`` (Pillow 12.1 and later; faceetl allows Pillow 10) refuses a
  word longer than the line, which :func:`_wrap` must cut (paths and URLs in error messages);
- :mod:`textwrap` counts characters, and these lines are measured in pixels of a proportional
  font; scikit-image's ``montage`` and torchvision's ``make_grid`` are in extras only and lay out
  equal tiles of arrays, without gaps of a chosen colour or captions.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .style import (
    BACKGROUND,
    DIFFERENT_COLOUR,
    FONT_SIZE,
    GAP,
    RESERVED,
    TEXT_COLOUR,
    TILE_GREY,
)

if TYPE_CHECKING:
    from PIL import Image


# ----------------------------------------------------------------------------- text


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


def _is_error(status: Any) -> bool:
    """An error status or message (faceetl's start with "error"): written in red."""
    return str(status).startswith("error")


# ----------------------------------------------------------------------------- text tiles


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


def _titles(names: Sequence[str], width: int, gap: int) -> Image.Image:
    """Column titles: ``names`` at ``width`` + ``gap`` pixel steps."""
    from PIL import Image, ImageDraw

    size = FONT_SIZE + 2
    out = Image.new("RGB", (len(names) * (width + gap) - gap, _line_height(size) + 2), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for k, name in enumerate(names):
        draw.text((k * (width + gap) + 1, 0), name, fill=TEXT_COLOUR, font=_font(size))
    return out


def _text_strip(text: str, width: int) -> Image.Image:
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (width, _line_height() + 4), BACKGROUND)
    ImageDraw.Draw(out).text(
        (2, 2), _fit_text(text, width - 4), fill=TEXT_COLOUR, font=_font(FONT_SIZE)
    )
    return out


# ----------------------------------------------------------------------------- arrangement


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


# ----------------------------------------------------------------------------- scaling


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


def _fit(img: Image.Image, max_size: int) -> Image.Image:
    """``img`` scaled down (never up) so that its longest side is at most ``max_size``."""
    from PIL import Image

    scale = max_size / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, math.floor(img.width * scale)), max(1, math.floor(img.height * scale)))
    return img.resize(size, Image.LANCZOS)


# ----------------------------------------------------------------------------- display


def _display(img: Image.Image) -> Image.Image:
    """``img`` with compact Jupyter display hooks: one 256-colour PNG, no JPEG copy.

    Pillow's own hooks give Jupyter both a PNG (compression level 1) and a JPEG of every
    image, and a full-colour PNG of a photo is large; these two instance attributes replace them
    for this image only, its pixels are left as they are.
    """
    img._repr_png_ = functools.partial(_palette_png, img)  # type: ignore[attr-defined]
    img._repr_jpeg_ = lambda: None  # type: ignore[attr-defined]
    return img


def _palette_png(img: Image.Image) -> bytes:
    """PNG bytes of ``img`` in 256 colours: the photo's own (median cut, dithered), and the
    drawing's colours exactly where the picture has them exactly."""
    from PIL import Image

    n = 256 - len(RESERVED)
    photo = img.quantize(n)
    palette = photo.getpalette()[: 3 * n]
    palette += [0, 0, 0] * (n - len(palette) // 3)  # fewer colours than asked for
    index = np.array(photo)
    rgb = np.asarray(img.convert("RGB"))
    for k, colour in enumerate(RESERVED):
        index[(rgb == colour).all(axis=-1)] = n + k
    out = Image.fromarray(index, "P")
    out.putpalette(palette + [v for colour in RESERVED for v in colour])
    buf = io.BytesIO()
    out.save(buf, "PNG", optimize=True)
    return buf.getvalue()
