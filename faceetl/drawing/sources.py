"""What a picture is drawn from: the face frame (its columns, cells and names) and the photos
its rows point to, read once each.

This is where :mod:`faceetl.drawing` meets faceetl's frame schema and storage, and changes with
them; it draws nothing. ``faceetl.images`` (OpenCV) is imported only when a photo is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: the columns a picture of boxes needs
_BOX_COLUMNS = ("path", "status", "x1", "y1", "x2", "y2", "score", "landmarks")


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


class _PhotoCache:
    """Photos read once each through :func:`faceetl.images.load_image` (local or URL); a photo
    that cannot be read raises its error again each time it is asked for."""

    def __init__(self, storage_options: dict[str, Any] | None) -> None:
        self.storage_options = storage_options
        self._seen: dict[str, np.ndarray | Exception] = {}

    def get(self, path: str) -> np.ndarray:
        from ..images import load_image

        if path not in self._seen:
            try:
                self._seen[path] = load_image(path, storage_options=self.storage_options)
            except Exception as e:  # ImageError, or a storage error: shown, not raised
                self._seen[path] = e
        got = self._seen[path]
        if isinstance(got, Exception):
            raise got
        return got
