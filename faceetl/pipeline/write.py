"""Writing a face frame once: ``faceetl.write_faces(faces, path)``.

A lazy frame's ``to_parquet`` after ``faceetl.compute`` runs the extraction twice, and pandas
cannot read back the Arrow list dtype it records for the list columns (pandas #57411). Here the
workers write one part per partition as they compute it (the frame is computed once, with
faceetl's progress in images and its summary line), in the layout ``pd.read_parquet``,
``dd.read_parquet`` and :func:`faceetl.read_faces` all read.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd
import pyarrow as pa

from .. import storage
from .manifest import arrow_table, parquet_bytes
from .progress import COUNTS, counts, images_planned, remember_images, summary


def write_faces(
    faces: Any,
    path: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> str:
    """Compute ``faces`` (a lazy Dask face frame, or a pandas one) once and write it to the
    parquet dataset folder ``path`` (local or any fsspec URL), a ``part-<n>.parquet`` per
    partition written by the worker that computed it; returns ``path``.

    The folder must not hold parts already (a second write would mix two frames). Read it back
    with :func:`faceetl.read_faces` (the list columns as Arrow lists), ``pd.read_parquet`` or
    ``dd.read_parquet``.
    """
    import dask.dataframe as dd

    from .extract import compute

    url = os.fspath(path)
    fs, inner = storage.filesystem(url, storage_options)
    if fs.isdir(inner) and any(n.rstrip("/").endswith(".parquet") for n in fs.ls(inner, False)):
        raise FileExistsError(f"{url} already holds a parquet dataset: write to a new folder")
    if isinstance(faces, pd.DataFrame):
        _write_part(faces, url, storage_options, _schema(faces), {"number": 0})
        return url
    if not isinstance(faces, dd.DataFrame):
        raise TypeError(f"write_faces takes a face frame (pandas or Dask), not {type(faces)}")
    written = faces.map_partitions(
        _write_part, url, storage_options, _schema(faces._meta),
        meta=pd.DataFrame({c: pd.Series([], dtype="int64") for c in COUNTS}),
    )  # fmt: skip
    written = remember_images(written, images_planned(faces))
    start = time.perf_counter()
    done = compute(written, progress=progress, summarize=False)
    if progress:
        print(f"faceetl: {summary(done, time.perf_counter() - start)} -> {url}")
    return url


def _schema(meta: pd.DataFrame) -> pa.Schema:
    """The Arrow schema every part shares, from the frame's meta (a column whose type the meta
    does not tell, an ``object`` column of labels, takes each part's own)."""
    return pa.Schema.from_pandas(meta, preserve_index=False).remove_metadata()


def _write_part(
    part: pd.DataFrame,
    url: str,
    storage_options: dict[str, Any] | None,
    target: pa.Schema,
    partition_info: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Write one computed partition as ``part-<n>.parquet`` (atomically); return its counts."""
    if len(part) == 0:  # nothing to write: no part
        return pd.DataFrame([[0] * len(COUNTS)], columns=COUNTS)
    number = (partition_info or {}).get("number", 0)
    own = pa.Schema.from_pandas(part, preserve_index=False)
    fields = [own.field(f.name) if pa.types.is_null(f.type) else f for f in target]
    table = arrow_table(part, pa.schema(fields))
    name = storage.join(url, f"part-{number:05d}.parquet")
    storage.write_atomic(name, parquet_bytes(table), storage_options)
    return counts(part)
