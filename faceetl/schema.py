"""The one schema of the face DataFrame: column names, dtypes, and how rows become frames."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

STRING = pd.StringDtype("pyarrow")
FLOATS = pd.ArrowDtype(pa.list_(pa.float32()))
DOUBLES = pd.ArrowDtype(pa.list_(pa.float64()))
BYTES = pd.ArrowDtype(pa.binary())

#: column -> dtype, in output order. Landmarks are 10 floats (x, y of the 5 ArcFace points, NaN
#: where unknown); ``shape`` is the backend's native landmarks, x, y interleaved (dlib: its 68 or
#: 5 points, which dlib chips are fitted on), null when the backend has none; ``affine`` is the
#: 6-float row-major image-to-crop transform; ``file_sha256`` is the hex sha256 of the input
#: file's bytes, hashed as they are read (null where the file could not be read): byte-identical
#: inputs share it (:func:`faceetl.duplicates`).
SCHEMA: dict[str, Any] = {
    "path": STRING,
    "face": "int64",
    "x1": "float64",
    "y1": "float64",
    "x2": "float64",
    "y2": "float64",
    "score": "float64",
    "landmarks": FLOATS,
    "shape": FLOATS,
    "crop": BYTES,
    "crop_path": STRING,
    "alignment": STRING,
    "affine": DOUBLES,
    "status": STRING,
    "backend": STRING,
    "image_width": "int64",
    "image_height": "int64",
    "provenance": STRING,
    "file_sha256": STRING,
}

STATUS_OK = "ok"
STATUS_NO_FACE = "no_face"


def error_status(reason: str) -> str:
    """The status string of an image that failed: ``error: <reason>``, on one line (OpenCV's
    messages span several)."""
    return "error: " + " ".join(str(reason).split())


def empty_row(path: str) -> dict[str, Any]:
    """A row with every schema column at its 'nothing' value, for ``path``."""
    return {
        "path": path,
        "face": -1,
        "x1": np.nan,
        "y1": np.nan,
        "x2": np.nan,
        "y2": np.nan,
        "score": np.nan,
        "landmarks": None,
        "shape": None,
        "crop": None,
        "crop_path": None,
        "alignment": None,
        "affine": None,
        "status": "",
        "backend": "",
        "image_width": -1,
        "image_height": -1,
        "provenance": "",
        "file_sha256": None,
    }


def frame(rows: Iterable[Mapping[str, Any]], carried: pd.DataFrame | None = None) -> pd.DataFrame:
    """A pandas frame in the schema from row dicts; ``carried`` columns (same length) are appended."""
    rows = list(rows)
    cols = {c: pd.Series([r[c] for r in rows], dtype=t) for c, t in SCHEMA.items()}
    df = pd.DataFrame(cols)
    if carried is not None:
        carried = carried.reset_index(drop=True)
        for c in carried.columns:
            df[c] = carried[c]
    return df


def meta(carried: pd.DataFrame | None = None) -> pd.DataFrame:
    """The empty frame that describes the output (for ``map_partitions(meta=...)``)."""
    return frame([], None if carried is None else carried.iloc[:0])


def check_carried(columns: Iterable[str]) -> list[str]:
    """Input columns carried through to the output; clashes with schema names are refused."""
    cols = [c for c in columns if c != "path"]
    clash = sorted(set(cols) & set(SCHEMA))
    if clash:
        raise ValueError(
            f"input columns {clash} clash with faceetl's output columns; rename them first"
        )
    return cols


def landmarks_array(df: pd.DataFrame) -> np.ndarray:
    """The ``landmarks`` column as an (N, 5, 2) float array (NaN for rows without a face)."""
    out = np.full((len(df), 5, 2), np.nan, np.float32)
    for i, v in enumerate(df["landmarks"]):
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            out[i] = np.asarray(v, np.float32).reshape(5, 2)
    return out


def boxes_array(df: pd.DataFrame) -> np.ndarray:
    """The box columns as an (N, 4) float array."""
    return df[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)


def _arrow_types(t: pa.DataType) -> pd.ArrowDtype | None:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_binary(t):
        return pd.ArrowDtype(t)
    return None


#: a dataset larger than this on disk is read lazily (as a Dask frame) by ``read_faces``
LAZY_BYTES = 256 * 2**20


def faces_dataset(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """``path``'s ``faces.parquet`` dataset when ``path`` is a run's output folder (its
    crops are not the dataset), else ``path``."""
    from . import storage

    fs, inner = storage.filesystem(path, storage_options)
    fs.invalidate_cache(inner)
    if fs.isdir(inner) and fs.isdir(f"{inner.rstrip('/')}/faces.parquet"):
        return storage.join(path, "faces.parquet")
    return path


def part_files(fs: Any, inner: str) -> list[dict[str, Any]]:
    """The parquet files (fsspec info dicts) of a faces file or dataset folder ``inner`` on
    ``fs``, as Dask and pyarrow read a dataset: no name below it starting with '_' or '.'."""
    fs.invalidate_cache(inner)  # other processes wrote here: no cached listing may answer
    if not fs.isdir(inner):
        return [fs.info(inner)]
    return [
        f
        for f in fs.find(inner, detail=True).values()
        if f["name"].endswith(".parquet")
        and not any(
            part.startswith(("_", ".")) for part in f["name"][len(inner) :].split("/") if part
        )
    ]


def read_faces(
    path: str | Any,
    columns: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    lazy: bool | None = None,
) -> Any:
    """Read a faces parquet file or dataset folder (:func:`faceetl.write_faces`, a run's
    ``faces.parquet/`` or the run's output folder holding it), local or any fsspec URL, with
    faceetl's column dtypes.

    ``lazy=None`` gives a pandas frame, or a Dask frame (one partition per part file) when the
    data on disk exceed ``LAZY_BYTES``; ``lazy=True``/``False`` chooses. Plain
    ``pd.read_parquet`` / ``dd.read_parquet`` read the same files, with the list columns
    (``landmarks``, ``affine``) as arrays of objects rather than Arrow lists.
    """
    import pyarrow.parquet as pq

    from . import storage

    url = faces_dataset(str(path), storage_options)
    fs, inner = storage.filesystem(url, storage_options)
    files = part_files(fs, inner)
    if lazy is None:
        lazy = sum(int(f.get("size") or 0) for f in files) > LAZY_BYTES
    if not files:  # an output with no part committed yet
        empty = meta() if columns is None else meta()[columns]
        if lazy:
            import dask.dataframe as dd

            return dd.from_pandas(empty, npartitions=1)
        return empty
    if lazy:
        import dask.dataframe as dd

        return dd.read_parquet(
            url,
            columns=columns,
            storage_options=storage_options,
            arrow_to_pandas={"types_mapper": _arrow_types},
        )
    table = pq.read_table(inner, columns=columns, filesystem=fs)
    return table.to_pandas(types_mapper=_arrow_types)
