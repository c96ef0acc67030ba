"""What every training-set writer shares: the output folder's life (checked, locked, cleaned,
``index.json`` written last), each sample's crop bytes and JSON, the per-file tables, running
the writers' tasks on the workers with progress in faces, and what an export returns.

An export is finished when its ``index.json`` exists: the file is written last, atomically,
and names every file of the export. Each data file is written once under its final name,
atomically (:func:`faceetl.storage.write_atomic`, :func:`faceetl.storage.open_atomic`), so a
killed run leaves whole files and no ``index.json``; running it again takes over the dead run's
lock, deletes what it wrote and writes everything anew.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import storage
from ..pipeline.lock import Lock
from ..pipeline.manifest import Output, arrow_table, list_names
from .plan import sample_key

INDEX = "index.json"
CLASSES = "classes.txt"
WORK = ".faceetl"  # the lock and the started run's note (hidden: no reader or pattern sees it)
STARTED = f"{WORK}/export.json"
VERSION = 1  # of index.json's layout
#: threads reading crop files and writing ImageFolder files: object stores answer each request
#: in milliseconds, so more requests in flight than cores (a process-wide pool)
IO_THREADS = 16
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def io_pool() -> ThreadPoolExecutor:
    """This process's threads for the writers' requests (see ``IO_THREADS``)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="faceetl-sink")
        return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool)


@dataclass(frozen=True)
class SplitFiles:
    """One side of an export: where its files are (a brace pattern of shards, or a folder), how
    many files and faces."""

    location: str
    files: int
    samples: int


@dataclass(frozen=True)
class Export:
    """What an export wrote: its folder, format, each side's files ("all" without a split,
    else "train" and "val"; "validation" for Hugging Face), the class names (index i: class i)
    and the faces skipped, by reason."""

    url: str
    format: str
    splits: dict[str, SplitFiles]
    classes: list[str] | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def pattern(self) -> str:
        """The location of the export's only side (a split export: ``splits[side].location``)."""
        if len(self.splits) != 1:
            raise ValueError(f"this export has sides {sorted(self.splits)}: use .splits[side]")
        return next(iter(self.splits.values())).location

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.splits.values())

    def summary(self) -> str:
        """One line per side, then the skipped faces."""
        lines = [f"faceetl: {self.format}: {self.samples} faces -> {self.url}"]
        for side, s in self.splits.items():
            where = s.location or "(none)"
            lines.append(f"  {side}: {s.samples} faces in {s.files} files: {where}")
        if self.skipped:
            said = ", ".join(f"{n} {why}" for why, n in self.skipped.items())
            lines.append(f"  skipped: {said}")
        return "\n".join(lines)


class Source:
    """The partitions an export reads: the same ones for the survey (a few columns) and for
    the write (all of them), so a face's place found by the survey is its place when written.

    A faces dataset's URL: one partition per parquet file, each read with only the columns
    asked for. A Dask frame: its partitions as they are (``to_delayed``, taken once; a column
    selection is made after computing them, since Dask would otherwise plan the projected
    frame's partitions anew, fusing small files, and the places would no longer match): the
    frame is computed twice, once by the survey.
    """

    def __init__(self, faces: Any, storage_options: dict[str, Any] | None) -> None:
        import dask.dataframe as dd

        self.storage_options = storage_options
        self.files: list[str] | None = None
        self._parts: list[Any] | None = None
        if isinstance(faces, (str, os.PathLike)):
            import pyarrow.parquet as pq

            from ..schema import _arrow_types, faces_dataset, meta, part_files

            url = faces_dataset(os.fspath(faces), storage_options)
            fs, inner = storage.filesystem(url, storage_options)
            found = sorted(f["name"] for f in part_files(fs, inner))
            self.files = [fs.unstrip_protocol(f) if storage.is_url(url) else f for f in found]
            self.meta = (pq.read_schema(found[0], filesystem=fs).empty_table()
                         .to_pandas(types_mapper=_arrow_types) if found else meta())  # fmt: skip
            return
        if isinstance(faces, pd.DataFrame):
            n = max(1, math.ceil(len(faces) / 1024))
            faces = dd.from_pandas(faces.reset_index(drop=True), npartitions=n, sort=False)
        if not isinstance(faces, dd.DataFrame):
            raise TypeError(f"an export takes a face frame (Dask or pandas) or its URL, not "
                            f"{type(faces).__name__}")  # fmt: skip
        self.meta = faces._meta
        self._frame = faces

    @property
    def columns(self) -> list[str]:
        return list(self.meta.columns)

    def parts(self, columns: list[str] | None = None) -> list[Any]:
        """One Dask delayed per partition, holding ``columns`` (None: all)."""
        import dask

        if self.files is not None:
            return [dask.delayed(read_part, pure=True)(f, columns, self.storage_options)
                    for f in self.files]  # fmt: skip
        if self._parts is None:
            self._parts = self._frame.to_delayed()
        if columns is None:
            return self._parts
        return [dask.delayed(_select, pure=True)(p, columns) for p in self._parts]


def read_part(url: str, columns: list[str] | None, storage_options: dict[str, Any] | None
              ) -> pd.DataFrame:  # fmt: skip
    """One parquet file of a faces dataset, ``columns`` only, with faceetl's dtypes."""
    import pyarrow.parquet as pq

    from ..schema import _arrow_types

    fs, inner = storage.filesystem(url, storage_options)
    return pq.read_table(inner, columns=columns, filesystem=fs).to_pandas(types_mapper=_arrow_types)


def _select(part: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return part[columns]


# -- the output folder ------------------------------------------------------------------------


class Target:
    """An export's folder. ``begin``: refuse a folder holding anything but a faceetl export
    (a finished one only with ``overwrite``), take the run lock, remove ``index.json`` and every
    file an earlier or killed export wrote (``owned`` matches their paths, relative to the
    folder). ``finish``: ``classes.txt``, then ``index.json``, then unlock."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None, fmt: str,
                 owned: str, overwrite: bool = False) -> None:  # fmt: skip
        self.url, self.fmt, self.overwrite = storage.join(url), fmt, overwrite
        self.out = Output(self.url, storage_options)
        self.owned = re.compile(rf"(?:{owned}|{re.escape(CLASSES)})")
        self.lock: Lock | None = None

    def path(self, *rel: str) -> str:
        return self.out.path(*rel)

    def _format(self, rel: str) -> str | None:
        """The format a note of an export names (``index.json``, the started run's); None
        without the note, "" for a file by that name that is no such note."""
        data = self.out.read(rel)
        if data is None:
            return None
        try:
            return str(json.loads(data).get("format") or "")
        except (ValueError, AttributeError):
            return ""

    def begin(self) -> None:
        names = list_names(self.url, self.out.storage_options)
        finished = self._format(INDEX) if INDEX in names else None
        started = self._format(STARTED) if WORK in names else None
        for fmt, state in ((finished, "a finished"), (started, "an unfinished")):
            if fmt and fmt != self.fmt:
                raise FileExistsError(f"{self.url} holds {state} {fmt} export: use another folder")
        if finished and not self.overwrite:
            raise FileExistsError(
                f"{self.url} holds a finished export (index.json): overwrite=True replaces it"
            )
        others = [n for n in names if n != WORK]
        if others and not finished and not started:
            raise FileExistsError(
                f"{self.url} holds files that no faceetl export wrote ({others[0]}, ...): "
                "export to a new folder"
            )
        self.lock = Lock(self.out).acquire()
        try:
            self.out.remove([INDEX])  # from here no reader takes the folder for a finished one
            self.out.write(STARTED, json.dumps({"format": self.fmt, **self.lock.info}).encode())
            self._clean()
        except BaseException:
            self.abandon()
            raise

    def _files(self) -> list[str]:
        """Every file below the folder but the work folder, relative to it ('/'-separated)."""
        if not storage.is_url(self.url):
            root = storage.local_path(self.url)
            found = []
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if not (folder == root and d == WORK)]
                rel = os.path.relpath(folder, root)
                found += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files]
            return found
        fs, inner = storage.filesystem(self.url, self.out.storage_options)
        fs.invalidate_cache(inner)
        base = inner.rstrip("/") + "/"
        return [p[len(base):] for p in fs.find(inner) if not p[len(base):].startswith(WORK + "/")]

    def _clean(self) -> None:
        """Delete what an earlier export of this folder wrote, and its temporaries."""
        mine = [f for f in self._files() if self.owned.fullmatch(f) or _is_temp(f, self.owned)]
        list(io_pool().map(lambda f: storage.remove([self.path(f)], self.out.storage_options),
                           mine))  # fmt: skip
        if not storage.is_url(self.url):  # ImageFolder readers take an empty folder for a class
            root = storage.local_path(self.url)
            for folder, _, _ in os.walk(root, topdown=False):
                if folder != root and not os.listdir(folder):
                    os.rmdir(folder)

    def finish(self, index: dict[str, Any], classes: Sequence[str] | None) -> None:
        """Write the class list and, last, ``index.json``; then leave the folder."""
        if classes is not None:
            self.out.write(CLASSES, "".join(f"{c}\n" for c in classes).encode())
        body = {"format": self.fmt, "version": VERSION, **index}
        self.out.write(INDEX, json.dumps(body, indent=1, ensure_ascii=False).encode())
        self.out.remove([STARTED])
        self.abandon()

    def abandon(self) -> None:
        """Release the lock (the files stay; a new run cleans them)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if not storage.is_url(self.url):
            try:
                os.rmdir(os.path.join(storage.local_path(self.url), WORK))
            except OSError:  # not empty (a killed run's note stays for the next run) or absent
                pass


def _is_temp(rel: str, owned: re.Pattern[str]) -> bool:
    """Whether ``rel`` is the atomic write's temporary of a file ``owned`` names."""
    folder, _, name = rel.rpartition("/")
    m = re.fullmatch(r"\.(.+)\.tmp-[0-9a-f]{8}", name)
    return m is not None and bool(owned.fullmatch(f"{folder}/{m.group(1)}" if folder else m.group(1)))


# -- the samples --------------------------------------------------------------------------------


def _absent(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def crops(rows: pd.DataFrame, storage_options: dict[str, Any] | None) -> list[bytes]:
    """Each row's crop: its ``crop`` bytes, else the file at its ``crop_path`` (read in
    threads)."""
    data = rows["crop"].tolist() if "crop" in rows.columns else [None] * len(rows)
    paths = rows["crop_path"].tolist() if "crop_path" in rows.columns else [None] * len(rows)
    need = [i for i, d in enumerate(data) if _absent(d)]
    for i in need:
        if _absent(paths[i]):
            raise ValueError(
                f"face {rows['face'].iloc[i]} of {rows['path'].iloc[i]} has no crop (no 'crop' "
                "bytes, no 'crop_path'): extract with keep_crops=True or a crop_dir"
            )
    read = io_pool().map(lambda i: storage.read_bytes(paths[i], storage_options), need)
    for i, got in zip(need, read, strict=True):
        data[i] = got
    return [bytes(d) for d in data]


def crop_sizes(rows: pd.DataFrame, storage_options: dict[str, Any] | None) -> np.ndarray:
    """Each row's crop size in bytes without reading files (their sizes are asked)."""
    data = rows["crop"].tolist() if "crop" in rows.columns else [None] * len(rows)
    paths = rows["crop_path"].tolist() if "crop_path" in rows.columns else [None] * len(rows)

    def size(i: int) -> int:
        if not _absent(data[i]):
            return len(data[i])
        if _absent(paths[i]):
            return 0  # the write says which face has no crop
        if not storage.is_url(paths[i]):
            return os.path.getsize(storage.local_path(paths[i]))
        fs, inner = storage.filesystem(paths[i], storage_options)
        return int(fs.size(inner))

    return np.fromiter(io_pool().map(size, range(len(rows))), np.int64, len(rows))


def image_ext(data: bytes) -> str:
    """The file extension of an encoded crop, from its first bytes. Written out rather than
    asking Pillow (which parses the header for the same answer): faceetl writes only these."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ValueError("a crop that is neither PNG, JPEG nor WebP")


def binary_columns(frame: pd.DataFrame) -> set[str]:
    """Columns holding bytes (``crop``, a predictor's PNG masks): no JSON for them."""
    schema = pa.Schema.from_pandas(frame.iloc[:0], preserve_index=False)
    out = {f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)}
    for c in frame.columns:
        if frame[c].dtype == object and len(frame) and isinstance(frame[c].iloc[0], bytes):
            out.add(c)
    return out | {"crop"}


def _plain(value: Any) -> Any:
    """JSON's values: NaN and infinities as null (strict JSON has neither), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def json_rows(rows: pd.DataFrame, keys: Sequence[str]) -> list[bytes]:
    """Each row's columns as strict JSON (lists, numbers, text, null; no bytes), with its key
    first."""
    binary = binary_columns(rows)
    cols = [c for c in rows.columns if c not in binary and not c.startswith("_")]
    table = pa.Table.from_pandas(rows[cols], preserve_index=False)
    return [
        json.dumps({"key": k, **_plain(r)}, allow_nan=False, ensure_ascii=False,
                   default=str).encode()  # fmt: skip
        for k, r in zip(keys, table.to_pylist(), strict=True)
    ]


def table_schema(meta: pd.DataFrame, first: dict[str, pa.DataType]) -> pa.Schema:
    """The schema every file's table shares: ``first`` (the writer's own columns), then the
    frame's columns but ``crop`` (its bytes are the sample's image). A column whose type the
    frame's meta does not tell (``object``) is null here, and each file takes its own."""
    cols = [c for c in meta.columns if c != "crop" and not c.startswith("_")]
    clash = sorted(set(cols) & set(first))
    if clash:
        raise ValueError(f"the face frame's columns {clash} clash with the export's own: rename them")
    own = pa.Schema.from_pandas(meta[cols], preserve_index=False).remove_metadata()
    return pa.schema([pa.field(n, t) for n, t in first.items()] + list(own))


def rows_table(rows: pd.DataFrame, target: pa.Schema) -> pa.Table:
    """``rows`` (holding the ``target`` columns) as an Arrow table of that schema, fields the
    target leaves null taking the rows' own types."""
    own = pa.Schema.from_pandas(rows[target.names], preserve_index=False)
    fields = [own.field(f.name) if pa.types.is_null(f.type) else f for f in target]
    return arrow_table(rows[target.names], pa.schema(fields))


def gather(plan: pd.DataFrame, parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The rows ``plan`` names (its ``_part``, ``_pos``), in its order, from ``parts`` (one per
    distinct ``_part``, in order), with the plan's columns beside; each row's key is checked."""
    pieces = []
    for (_, sub), part in zip(plan.groupby("_part", sort=False), parts, strict=True):
        pieces.append(part.iloc[sub["_pos"].to_numpy()])
    rows = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    keys = [sample_key(p, f) for p, f in zip(rows["path"], rows["face"], strict=True)]
    if keys != plan["key"].tolist():
        raise RuntimeError(
            "the face frame gave other rows when written than when surveyed: export a frame "
            "whose partitions read the same each time (a written dataset, or .persist())"
        )
    for c in plan.columns:
        if c.startswith("_") and c not in ("_part", "_pos"):
            rows[c] = plan[c].to_numpy()
    return rows


# -- running the tasks ------------------------------------------------------------------------


def run_tasks(tasks: list[Any], weights: list[int], progress: bool, what: str) -> list[Any]:
    """Compute the writers' tasks (on the active distributed client, else Dask's local
    scheduler), a progress bar counting ``weights`` (faces) as each task ends."""
    import dask

    from ..pipeline.progress import _in_kernel, distributed_client, tqdm

    show = progress and (sys.stderr.isatty() or _in_kernel())
    bar = tqdm(total=sum(weights), unit="face", desc=what, smoothing=0.1) if show else None
    try:
        client = distributed_client(tasks[0]) if tasks else None
        if client is not None:
            from distributed import as_completed, span

            with span("faceetl", f"{what} ({sum(weights)} faces)"):
                futures = client.compute(tasks)
            index = {f.key: i for i, f in enumerate(futures)}
            results: list[Any] = [None] * len(futures)
            for fut in as_completed(futures):
                results[index[fut.key]] = fut.result()
                if bar is not None:
                    bar.update(weights[index[fut.key]])
            return results
        from dask.callbacks import Callback

        keys = {t.key: w for t, w in zip(tasks, weights, strict=True)}

        class Count(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001 (Dask's hook)
                if bar is not None and key in keys:
                    bar.update(keys[key])

        with Count():
            return list(dask.compute(*tasks))
    finally:
        if bar is not None:
            bar.close()


def report(export: Export, progress: bool) -> Export:
    """Print the export's summary (with ``progress``) and hand it back."""
    if progress:
        print(export.summary(), flush=True)
    return export


def relative(target: Target, location: str) -> str:
    """``location`` relative to the export's folder (index.json names its files so: the folder
    can be moved)."""
    base = target.url.rstrip("/\\")
    return location[len(base) + 1 :].replace(os.sep, "/") if location.startswith(base) else location


def pattern(stem: str, n: int, width: int, tail: str = "") -> str:
    """The brace pattern of ``n`` numbered files: ``stem{000000..000041}tail``."""
    last = max(n - 1, 0)
    return f"{stem}{{{0:0{width}d}..{last:0{width}d}}}{tail}"


def task(fn: Callable[..., Any], name: str, sub: pd.DataFrame, job: Any, parts: list[Any],
         key: str) -> Any:  # fmt: skip
    """A writer task ``fn(name, plan, job, *partitions)`` over the partitions the plan rows
    ``sub`` draw from (each partition computed once, shared by the tasks that need it)."""
    import dask

    keep = [c for c in sub.columns if c in ("_part", "_pos", "key", "_cls", "_folder", "side")]
    plan = sub[keep].reset_index(drop=True)
    needed = [parts[p] for p in pd.unique(plan["_part"])]
    return dask.delayed(fn, pure=False)(name, plan, job, *needed, dask_key_name=key)
