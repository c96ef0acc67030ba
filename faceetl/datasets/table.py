"""Face tables as training data: reading them (parquet, pandas, Dask) and encoding label columns.

No torch here: :mod:`.faces` builds the torch Dataset on top, :mod:`.split` the splits.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import schema

log = logging.getLogger(__name__)

#: label value of a missing label (NaN / None) in an encoded column; ``cross_entropy`` ignores it
IGNORE_INDEX = -100


def _natural_key(v: Any) -> tuple:
    """Sort key comparing the digit runs of strings as numbers: '3-9' < '10-19' < 'more than 70'."""
    parts = re.split(r"(\d+)", str(v))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "")


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float) and math.isnan(v)


def _to_python(v: Any) -> Any:
    """numpy scalars to Python ones (checkpoints and JSON want plain values)."""
    return v.item() if isinstance(v, np.generic) else v


def as_pandas(source: Any, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """A face table as pandas: a parquet path is read, a Dask DataFrame computed.

    The parquet file or folder may be an fsspec URL, read with ``storage_options``.
    """
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, (str, os.PathLike)):
        return schema.read_faces(os.fspath(source), storage_options=storage_options, lazy=False)
    try:
        import dask.dataframe as dd

        if isinstance(source, dd.DataFrame):
            return source.compute()
    except ImportError:  # pragma: no cover - dask is a dependency
        pass
    raise TypeError(
        f"expected a parquet path, a pandas or a Dask DataFrame, got {type(source).__name__}"
    )


def encode_labels(
    values: pd.Series, classes: Sequence[Any] | None = None
) -> tuple[np.ndarray, list[Any] | None]:
    """Encode one label column: ``(codes, classes)``.

    Strings (and categoricals, booleans) become integer indices into ``classes`` (given, the
    categorical's order, or the values sorted with numbers compared as numbers). Integer columns
    stay as they are (their classes are ``0 .. max``), float columns stay floats (classes None:
    a regression target). Missing labels, and labels not in given ``classes``, become
    :data:`IGNORE_INDEX`.
    """
    s = values.reset_index(drop=True)
    numeric_int = (
        pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)
    ) and classes is None
    if numeric_int:
        if (s.dropna() < 0).any():
            raise ValueError(
                f"integer label column {values.name!r} has negative values; "
                "class indices must be >= 0 (use strings to have them encoded)"
            )
        codes = s.to_numpy(np.int64, na_value=IGNORE_INDEX)
        top = int(codes.max()) if len(codes) and (codes >= 0).any() else -1
        return codes, list(range(top + 1))
    if classes is None and pd.api.types.is_float_dtype(s.dtype):
        return s.to_numpy(np.float32, na_value=np.nan), None
    if classes is None:
        if isinstance(s.dtype, pd.CategoricalDtype):
            classes = [_to_python(c) for c in s.dtype.categories]
        else:
            uniq = {_to_python(v) for v in s if not _is_missing(v)}
            classes = sorted(uniq, key=_natural_key)
    classes = [_to_python(c) for c in classes]
    lookup: dict[Hashable, int] = {c: i for i, c in enumerate(classes)}
    # numeric vocabularies also match values that came back as floats or strings of them
    codes = np.full(len(s), IGNORE_INDEX, np.int64)
    unknown = set()
    for i, v in enumerate(s):
        if _is_missing(v):
            continue
        v = _to_python(v)
        k = lookup.get(v)
        if k is None:
            unknown.add(v)
            continue
        codes[i] = k
    if unknown:
        log.warning(
            "column %r: %d label(s) not in the vocabulary are ignored: %s",
            values.name,
            len(unknown),
            sorted(map(str, unknown))[:10],
        )
    return codes, list(classes)


__all__ = ["IGNORE_INDEX", "as_pandas", "encode_labels"]
