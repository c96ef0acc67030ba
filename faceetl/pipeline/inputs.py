"""Inputs: paths from a glob, a folder, a list or a frame, listed on the driver and cut into
partitions sized for the workers."""

from __future__ import annotations

import glob as _glob
import itertools
import math
import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import schema, storage
from ..images import escape_name, frame_path
from .cluster import cpu_cores
from .progress import remember_images

if TYPE_CHECKING:  # dask.dataframe loads on first use: it is most of faceetl's import time
    import dask.dataframe as dd

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".gif",
)  # fmt: skip
DEFAULT_PARTITION_SIZE = 64


def _list_folder(folder: str, extensions: Sequence[str] | None) -> Iterator[str]:
    """Every entry below ``folder`` that is not a folder (files, FIFOs, broken links: the decoder
    says what each is), optionally only those whose name ends in one of ``extensions``, in
    sorted order, folder by folder (never all of them as Python strings at once)."""
    exts = None if extensions is None else tuple(e.lower() for e in extensions)
    for root, dirs, files in os.walk(folder):  # does not descend into symlinked folders
        dirs.sort()
        for name in sorted(files):
            if exts is None or name.lower().endswith(exts):
                yield os.path.join(root, name)


def _expand_glob(
    pattern: str | os.PathLike,
    extensions: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Iterator[str]:
    """The paths a folder, a glob or a URL names, in the frame's form (FileNotFoundError when
    there are none); a folder's are listed as they are consumed."""
    if storage.is_url(pattern):  # listed through the URL's filesystem, never the local disk
        found = storage.list_files(os.fspath(pattern), extensions, storage_options)
        if not found:
            raise FileNotFoundError(f"no files match {pattern!r}")
        return iter(found)
    p = os.path.expanduser(storage.local_path(pattern))
    if os.path.isdir(p):
        listed: Iterator[str] = _list_folder(p, extensions)
    elif _glob.has_magic(p):
        found = sorted(f for f in _glob.glob(p, recursive=True) if not os.path.isdir(f))
        if extensions is not None:
            exts = tuple(e.lower() for e in extensions)
            found = [f for f in found if f.lower().endswith(exts)]
        listed = iter(found)
    else:  # a single file: kept even if missing, so it gets its error row
        return iter([frame_path(p if isinstance(pattern, str) else Path(p))])
    first = next(listed, None)
    if first is None:
        raise FileNotFoundError(f"no files match {pattern!r}")
    # names as the OS gives them, in the frame's form
    return map(escape_name, itertools.chain([first], listed))


def path_series(paths: Iterable[Any], chunk: int = 1 << 14) -> pd.Series:
    """``paths`` (text, bytes or ``os.PathLike``) as a ``path`` column in the frame's form
    (:func:`faceetl.images.frame_path`), built ``chunk`` at a time into Arrow strings, so that a
    million paths never live as a million Python strings at once."""
    import pyarrow as pa

    arrays = []
    it = iter(paths)
    while True:
        block = [frame_path(p) for p in itertools.islice(it, chunk)]
        if not block:
            break
        arrays.append(pa.array(block, pa.large_string()))
    values = pa.chunked_array(arrays, pa.large_string())
    return pd.Series(pd.arrays.ArrowStringArray(values), name="path")


def _parallel_slots() -> int:
    """Tasks that can run at once: the active distributed client's threads, else the cores
    (Dask's threaded scheduler runs one task per core)."""
    try:
        from distributed import default_client

        workers = default_client().scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    except (ImportError, ValueError):
        return cpu_cores()


#: partitions per parallel slot a job is cut into when it is small enough (below the size cap):
#: the last wave leaves a worker idle for about half a partition, so with ``k`` partitions a slot
#: about 1/(4k) of the run is lost there (more where photos differ in cost)
PARTITIONS_PER_SLOT = 16


def auto_partition_size(n_paths: int, slots: int | None = None) -> int:
    """Paths per partition: about :data:`PARTITIONS_PER_SLOT` partitions per parallel slot, so
    every worker gets work and the workers finish close together, and at most
    DEFAULT_PARTITION_SIZE paths (large jobs: few tasks)."""
    slots = slots or _parallel_slots()
    per_slot = PARTITIONS_PER_SLOT * slots
    return int(min(DEFAULT_PARTITION_SIZE, max(1, math.ceil(n_paths / per_slot))))


def read_images(
    source: str | os.PathLike | Sequence[str | os.PathLike] | pd.DataFrame | dd.DataFrame,
    partition_size: int | None = None,
    npartitions: int | None = None,
    extensions: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dd.DataFrame:
    """A Dask DataFrame with a ``path`` column from a glob, a folder, a list of paths, or a frame.

    Paths may be local or any fsspec URL (``s3://bucket/photos/**/*.jpg``); a URL's folder or
    glob is listed through its filesystem, with ``storage_options`` (as in ``dd.read_parquet``).

    A folder gives every file below it (whatever its name: the decoder reports what is not an
    image); ``extensions=(".jpg", ".png")`` keeps only names ending so (for a folder or a glob).
    File names that are not valid UTF-8 are kept, escaped (:func:`faceetl.images.frame_path`);
    paths given as text are read as the frame writes them (a backslash before ``x80``-``xff``
    or ``x5c`` is an escape), paths given as bytes or ``pathlib.Path`` as the OS names them.
    A pandas or Dask DataFrame must have a ``path`` column; its other columns (labels, ids) are
    carried through extraction. ``partition_size`` paths go in each partition (default:
    :func:`auto_partition_size`, from the number of paths and of workers) unless ``npartitions``
    is given.
    """
    import dask.dataframe as dd

    if isinstance(source, dd.DataFrame):
        if "path" not in source.columns:
            raise ValueError("the DataFrame needs a 'path' column")
        schema.check_carried(source.columns)
        return source.assign(path=source["path"].astype(schema.STRING))
    df = input_frame(source, extensions, storage_options)
    return partitioned(df, partition_size, npartitions)


def input_frame(
    source: str | os.PathLike | Iterable[Any] | pd.DataFrame,
    extensions: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The pandas frame :func:`read_images` cuts into partitions: a ``path`` column of Arrow
    strings in the frame's form (and a frame's carried columns), listed here."""
    if isinstance(source, pd.DataFrame):
        if "path" not in source.columns:
            raise ValueError("the DataFrame needs a 'path' column")
        df = source.reset_index(drop=True).copy()
    elif isinstance(source, (str, os.PathLike)):
        found = _expand_glob(source, extensions, storage_options)
        df = pd.DataFrame({"path": path_series(found)}, copy=False)
    else:
        df = pd.DataFrame({"path": path_series(source)}, copy=False)
    if len(df) == 0:
        raise ValueError("no input paths")
    schema.check_carried(df.columns)
    df["path"] = _frame_paths(df["path"])
    return df


def _frame_paths(column: pd.Series) -> Any:
    """A ``path`` column in the frame's form as Arrow strings. Arrow text holds no undecodable
    name (it is valid UTF-8), so a column of it without nulls is taken as it is; anything else
    goes through :func:`faceetl.images.frame_path`, a chunk at a time."""
    if _arrow_text(column) and not column.hasnans:
        return column.astype(schema.STRING).array
    return path_series(column).array


def partitioned(
    df: pd.DataFrame, partition_size: int | None = None, npartitions: int | None = None
) -> dd.DataFrame:
    """Listed inputs (a pandas frame as :func:`read_images` makes it) cut into partitions:
    ``partition_size`` paths each (default: :func:`auto_partition_size`), or ``npartitions``."""
    import dask.dataframe as dd

    size = partition_size or auto_partition_size(len(df))
    n = npartitions or max(1, -(-len(df) // max(1, size)))
    return remember_images(dd.from_pandas(df, npartitions=min(n, len(df)), sort=False), len(df))


def _arrow_text(column: pd.Series) -> bool:
    """Whether ``column`` holds Arrow strings."""
    import pyarrow as pa

    dtype = column.dtype
    if isinstance(dtype, pd.StringDtype):
        return dtype.storage == "pyarrow"
    t = getattr(dtype, "pyarrow_dtype", None)
    return t is not None and (pa.types.is_string(t) or pa.types.is_large_string(t))


def partition_bounds(n: int, partition_size: int | None = None) -> list[int]:
    """The row offsets (``npartitions + 1`` of them) where :func:`partitioned` cuts ``n`` listed
    inputs: as Dask's ``from_pandas`` cuts a frame with a range index into
    ``ceil(n / partition_size)`` partitions, whose sizes differ by at most one."""
    size = partition_size or auto_partition_size(n)
    parts = min(max(1, -(-n // max(1, size))), n) if n else 1
    base, extra = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (i < extra))
    return bounds


def common_root(paths: Iterable[str]) -> str | None:
    """The deepest folder holding every path (None when there are none, or they are on
    different filesystems). A column of paths is first cut to one path per folder
    (:func:`_one_per_folder`): the answer depends on the folders only."""
    arrow = isinstance(paths, pd.Series) and _arrow_text(paths) and not paths.hasnans
    paths = _one_per_folder(paths) if arrow else list(paths)
    protocols = {storage.protocol(p) if storage.is_url(p) else None for p in paths}
    if len(protocols) > 1:
        return None
    proto = next(iter(protocols), None)
    if proto is not None:
        dirs = {posixpath.dirname("/" + storage.strip(p).lstrip("/")) for p in paths}
        root = posixpath.commonpath(sorted(dirs)).lstrip("/")
        return f"{proto}://{root}" if root else None
    dirs = {os.path.dirname(os.path.abspath(storage.local_path(p))) for p in paths}
    if not dirs:
        return None
    try:
        return os.path.commonpath(sorted(dirs))
    except ValueError:  # different drives
        return None


def _one_per_folder(paths: pd.Series, chunk: int = 1 << 14) -> list[str]:
    """Stand-ins for ``paths`` with the same :func:`common_root`, one per folder, found with
    Arrow (no Python string per path): each path's last part replaced by ``_``, except a last
    part that moves the folder itself (``''``, ``.``, ``..``), which is kept as it is."""
    import pyarrow.compute as pc

    if os.name == "nt":  # other separators
        return list(paths)
    values = paths.array.__arrow_array__()  # the column's own Arrow data, not a copy
    folders: set[str] = set()
    for start in range(0, len(values), chunk):  # a chunk's stand-ins at a time
        part = values.slice(start, chunk)
        keep = pc.match_substring_regex(part, r"(^|/)(\.\.?)?$")
        named = pc.replace_substring_regex(part, r"[^/]+$", "_")
        folders.update(pc.unique(pc.if_else(keep, part, named)).to_pylist())
    return sorted(folders)
