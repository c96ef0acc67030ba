"""Pictures of face frames for notebooks: boxes and landmarks on the photos, crop grids, embedding
pairs, parsing overlays, several runs side by side.

Every function returns an RGB :class:`PIL.Image.Image` no larger than ``max_size`` pixels on its
longest side. In Jupyter it displays as one 256-colour PNG (about a third of a full-colour one,
and without the second JPEG copy Pillow's own display hook adds), so that notebooks committed
with their outputs stay small; the image itself keeps its full colours for ``.save()``.

>>> from faceetl.drawing import show
>>> show(faces)                                    # boxes, scores, landmarks on each photo
>>> show(faces, kind="crops", label="album")       # the crops, labelled by a column

PIL, OpenCV and the image reader are imported inside the functions: importing this package
costs nothing. Its modules, split by what changes together, each import only those below it:

- this module: :func:`show`, :func:`show_runs` and :func:`side_by_side`, the pictures of whole
  frames, and the package's public names;
- :mod:`.pairs` (embedding pairs, with :mod:`faceetl.compare`) and :mod:`.parsing` (parsing
  masks, with :mod:`faceetl.predictors.parsing`);
- :mod:`.boxes` (detections drawn on photos) and :mod:`.crops` (faces as crop tiles);
- :mod:`.sources`: the face frame's columns and cells, and the photos read from it;
- :mod:`.layout`: tiles, text, stacks, grids, scaling and the Jupyter display, on Pillow's
  drawing primitives; it knows nothing of faces (why it is not handed to a library: there);
- :mod:`.style`: colours and sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .boxes import _box_sheet, _runs_sheet
from .crops import _crop_tiles
from .layout import _display, _fit, _grid, _hstack, _title
from .pairs import closest_pairs, show_pairs
from .parsing import overlay_mask, show_parsing
from .sources import _BOX_COLUMNS, _frame
from .style import (
    BACKGROUND,
    BOX_COLOUR,
    DIFFERENT_COLOUR,
    FONT_SIZE,
    GAP,
    LANDMARK_COLOURS,
    MAX_FACES,
    MAX_IMAGES,
    MAX_SIZE,
    SAME_COLOUR,
    SCORE_FONT_SIZE,
    TEXT_COLOUR,
    TILE_GREY,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BACKGROUND",
    "BOX_COLOUR",
    "DIFFERENT_COLOUR",
    "FONT_SIZE",
    "GAP",
    "LANDMARK_COLOURS",
    "MAX_FACES",
    "MAX_IMAGES",
    "MAX_SIZE",
    "SAME_COLOUR",
    "SCORE_FONT_SIZE",
    "TEXT_COLOUR",
    "TILE_GREY",
    "closest_pairs",
    "overlay_mask",
    "show",
    "show_pairs",
    "show_parsing",
    "show_runs",
    "side_by_side",
]


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
    return _runs_sheet(
        frames, share, max_size, max_images,
        landmarks=landmarks, scores=scores, storage_options=storage_options,
    )  # fmt: skip
