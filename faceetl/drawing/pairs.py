"""Pairs of faces side by side with their embedding distance and same-person verdict.

It changes with :mod:`faceetl.compare` (distances, thresholds), which it imports when called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .crops import _crops
from .layout import _caption, _grid, _hstack
from .sources import _frame, _name
from .style import DIFFERENT_COLOUR, MAX_SIZE, SAME_COLOUR, TEXT_COLOUR

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image


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
    from ..compare import THRESHOLDS, compare

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
    from ..compare import compare, vectors

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
