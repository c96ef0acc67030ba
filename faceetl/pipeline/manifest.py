"""A run's output: crops plus a parquet dataset that the workers commit partition by partition.

Layout under the output folder (a local path or any fsspec URL)::

    faces.parquet/part-<run>-<n>.parquet  the rows of one partition, written after all its crops
    faces.parquet/_faceetl.json           the settings every run into this output must share
    .faceetl/lock.json                    the run writing now (host, pid, heartbeat)
    .faceetl/inflight/<part>.json         a partition whose crops may exist but not yet its part
    <crops>                               mirroring the inputs' layout

Each part is written atomically (:func:`faceetl.storage.write_atomic`) and only after every
crop of its partition, so a part exists only when its crops do. A driver or worker killed at any
moment loses at most the partitions in flight: their notes tell the next run which crops and
temporary files to delete. Files whose names start with ``_`` or ``.`` are skipped by pyarrow's
dataset discovery, so ``pd.read_parquet`` and ``dd.read_parquet`` read the parts alone.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import config, schema, storage
from ..backends.base import get_backend
from .extract import extract_partition
from .job import Job
from .names import crop_file_re, crop_stem, is_crop_stem, safe_join, split_stem
from .pathset import PathSet
from .progress import COUNTS, counts

log = logging.getLogger(__name__)

MANIFEST = "faces.parquet"
SETTINGS = "_faceetl.json"
STATE = ".faceetl"
INFLIGHT = f"{STATE}/inflight"


class SettingsError(ValueError):
    """The output holds faces made with other settings than this run's."""


@dataclass(frozen=True, eq=False)
class Output:
    """An output folder (local or URL) and the storage options to reach it; pickles to workers."""

    url: str
    storage_options: dict[str, Any] | None = field(default=None)

    def path(self, *rel: str) -> str:
        return storage.join(self.url, *rel)

    @property
    def dataset(self) -> str:
        return self.path(MANIFEST)

    def read(self, rel: str) -> bytes | None:
        try:
            return storage.read_bytes(self._fresh(self.path(rel)), self.storage_options)
        except (FileNotFoundError, IsADirectoryError):
            return None

    def write(self, rel: str, data: bytes) -> None:
        storage.write_atomic(self.path(rel), data, self.storage_options)

    def remove(self, rels: Iterable[str]) -> None:
        storage.remove([self.path(r) for r in rels], self.storage_options)

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) in folder ``rel``; [] when it does not exist."""
        return list_names(self.path(rel), self.storage_options)

    def _fresh(self, url: str) -> str:
        if storage.is_url(url):  # other processes wrote here: no cached listing may answer
            fs, p = storage.filesystem(url, self.storage_options)
            fs.invalidate_cache(p)
        return url


def list_names(folder: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names of the entries of ``folder`` (local or URL), [] when it does not exist."""
    if not storage.is_url(folder):
        try:
            return sorted(os.listdir(storage.local_path(folder)))
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs, p = storage.filesystem(folder, storage_options)
    fs.invalidate_cache(p)
    try:
        return sorted(os.path.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))
    except FileNotFoundError:
        return []


def part_names(out: Output) -> list[str]:
    """The committed parts of the dataset."""
    return [n for n in out.listdir(MANIFEST) if n.startswith("part-") and n.endswith(".parquet")]


def read_part(out: Output, name: str, columns: list[str] | None = None) -> pa.Table:
    data = out.read(f"{MANIFEST}/{name}")
    if data is None:
        raise FileNotFoundError(out.path(MANIFEST, name))
    return pq.read_table(io.BytesIO(data), columns=columns)


# -- settings -----------------------------------------------------------------------------------


def read_settings(out: Output) -> dict[str, Any] | None:
    fs, p = storage.filesystem(out.dataset, out.storage_options)
    if fs.isfile(p):
        raise SettingsError(
            f"{out.dataset} is a single file, written by an earlier faceetl: move it away (it "
            "reads with faceetl.read_faces) or write to another output folder."
        )
    data = out.read(f"{MANIFEST}/{SETTINGS}")
    return None if data is None else json.loads(data)


def settings_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: stored -> new`` for each setting that differs.

    A backend's ``weights`` given on one side only (the release on the other) is not compared
    here: the workers compare the sha256 of the file they load with the output's recorded one.
    """
    keys = sorted(set(stored) | set(new))
    diff = []
    for k in keys:
        a, b = stored.get(k), new.get(k)
        if k == "backend_params" and isinstance(a, dict) and isinstance(b, dict):
            if (a.get("weights") is None) != (b.get("weights") is None):
                a, b = dict(a), dict(b)
                a.pop("weights", None)
                b.pop("weights", None)
            diff += [
                f"{k}.{p}: {a.get(p)!r} -> {b.get(p)!r}"
                for p in sorted(set(a) | set(b))
                if a.get(p) != b.get(p)
            ]
        elif a != b:
            diff.append(f"{k}: {a!r} -> {b!r}")
    return diff


def check_settings(
    out: Output,
    settings: dict[str, Any],
    crop_root: str | None,
    effective: Callable[[dict[str, Any]], dict[str, Any]] = lambda s: s,
) -> dict[str, Any]:
    """The stored settings record (written now if the output is new, with the folder the crops'
    layout mirrors); SettingsError if this run's ``settings`` differ from the output's.

    Both sides are compared as ``effective`` gives them (defaults filled in, old names
    translated: what the settings do, not how they were typed)."""
    record = read_settings(out)
    if record is None:
        if part_names(out):
            raise SettingsError(
                f"{out.dataset} has parts but no {SETTINGS}: it was not written by this version "
                "of faceetl. Write to another output folder."
            )
        record = {"settings": settings, "crop_root": crop_root, "faceetl": _version()}
        out.write(f"{MANIFEST}/{SETTINGS}", json.dumps(record, indent=1).encode())
        return record
    diff = settings_differences(effective(record["settings"]), effective(settings))
    if diff:
        raise SettingsError(
            f"{out.url} holds faces made with other settings ({'; '.join(diff)}). "
            "Write to another output folder, or delete this one to start over."
        )
    return record


def record_weights(out: Output, record: dict[str, Any], weights: dict[str, str]) -> None:
    """Store the weight files (name -> sha256) the run's rows were made with."""
    if weights and record.get("weights") != weights:
        record = {**record, "weights": weights}
        out.write(f"{MANIFEST}/{SETTINGS}", json.dumps(record, indent=1).encode())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("faceetl")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


# -- recovery of runs that stopped ---------------------------------------------------------------


NOTE_VERSION = 2
PART_RE = re.compile(r"part-[0-9a-f]{6,32}-\d{5,}\.parquet")
REFUSED = f"{STATE}/refused"


def recover(out: Output) -> int:
    """Clean up after partitions that were in flight when a run stopped; returns their number.

    A partition whose part was committed keeps its crops (only temporary files go); one whose
    part is missing loses every crop it may have written: its paths are redone by this run.
    Only what a note of this output could name is touched: crops and temporaries of the note's
    inputs, named as :func:`faceetl.pipeline.names.crop_stem` names them, under this output. A
    note naming anything else (written by hand, by another program or another faceetl) is
    refused as a whole: nothing it names is deleted, it is moved to ``.faceetl/refused/`` and
    reported.
    """
    notes = [n for n in out.listdir(INFLIGHT) if n.endswith(".json") and not n.startswith(".")]
    committed = set(part_names(out))
    record = None
    for name in notes:
        data = out.read(f"{INFLIGHT}/{name}")
        if data is None:
            continue  # another process took it meanwhile
        if record is None:
            record = read_settings(out) or {}
        why, note = _check_note(out, name, data, record.get("crop_root"))
        if why:
            log.warning("refused the in-flight note %s: %s; nothing it names was deleted (kept "
                        "as %s)", out.path(INFLIGHT, name), why, out.path(REFUSED, name))  # fmt: skip
            out.write(f"{REFUSED}/{name}", data)
            out.remove([f"{INFLIGHT}/{name}"])
            continue
        keep = note["part"] in committed
        _remove_crops(out, note["crops"], temporary_only=keep)
        stale = [n for n in out.listdir(MANIFEST) if n.startswith(f".{note['part']}.tmp-")]
        out.remove([f"{MANIFEST}/{n}" for n in stale])
        out.remove([f"{INFLIGHT}/{name}"])
    # a note whose write was cut short (killed between writing its hidden temporary and the
    # rename) never landed, so its partition wrote nothing after it: the temporary just goes
    orphans = [n for n in out.listdir(INFLIGHT) if n.startswith(".") and ".json.tmp-" in n]
    out.remove([f"{INFLIGHT}/{n}" for n in orphans])
    return len(notes)


def make_note(out: Output, part: str, paths: list[str], root: str | None) -> dict[str, Any]:
    """What a partition may leave behind: its part and each input's crop stem."""
    return {
        "version": NOTE_VERSION,
        "part": part,
        "paths": paths,
        "crops": [crop_stem(p, root, out.url) for p in paths],
    }


def _check_note(
    out: Output, name: str, data: bytes, root: str | None
) -> tuple[str, dict[str, Any]]:
    """('', note) for a note this output's runs could have written, else (why not, {})."""
    try:
        note = json.loads(data)
    except ValueError:
        return "not JSON", {}
    if not isinstance(note, dict) or note.get("version") != NOTE_VERSION:
        return f"not a version-{NOTE_VERSION} note", {}
    part, paths, crops = note.get("part"), note.get("paths"), note.get("crops")
    if not isinstance(part, str) or not PART_RE.fullmatch(part) or name != f"{part}.json":
        return f"part {part!r} is not this note's part name", {}
    if not (isinstance(paths, list) and isinstance(crops, list) and len(paths) == len(crops)):
        return "paths and crops do not pair up", {}
    for path, stem in zip(paths, crops, strict=True):
        if not isinstance(path, str) or not isinstance(stem, str):
            return "an entry is not text", {}
        if not is_crop_stem(stem) or stem != crop_stem(path, root, out.url):
            return f"{stem!r} is not where this output puts the crops of {path!r}", {}
        if not _inside(out, safe_join(out.url, stem)):
            return f"{stem!r} lies outside {out.url}", {}
    return "", note


def _inside(out: Output, target: str) -> bool:
    """True when ``target`` lies under the output, symbolic links resolved (locally)."""
    if storage.is_url(out.url):
        return storage.under(target, out.url)
    root = os.path.realpath(storage.local_path(out.url))
    real = os.path.realpath(target)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _remove_crops(out: Output, stems: list[str], temporary_only: bool) -> None:
    """Delete the crops (``<stem><k>.<ext>``) and their write temporaries of a note's inputs."""
    by_folder: dict[str, list[str]] = {}
    for stem in stems:
        folder, last = split_stem(safe_join(out.url, stem))
        by_folder.setdefault(folder, []).append(last)
    for folder, lasts in by_folder.items():
        names = list_names(folder, out.storage_options)
        victims = []
        for last in lasts:
            pattern = crop_file_re(last)
            victims += [
                n for n in names
                if pattern.fullmatch(n) and (not temporary_only or n.startswith("."))
            ]  # fmt: skip
        storage.remove([storage.join(folder, n) for n in victims], out.storage_options)


# -- what is done --------------------------------------------------------------------------------


def committed_paths(out: Output, wanted: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Paths with a final result in the dataset (ok or no_face), as Arrow strings. Error rows of
    ``wanted`` paths (Arrow strings: the run's inputs) are deleted from their parts (rewritten
    atomically), so those paths are tried again. Parts written by an earlier faceetl are first
    given the columns it did not have (:func:`upgraded_part`). Nothing here makes a Python
    string per path: a resume of a million inputs holds them as Arrow data only."""
    import pyarrow.compute as pc

    done: list[pa.Array | pa.ChunkedArray] = []
    wanted_set: PathSet | None = None  # built once, only if some part has error rows
    upgraded = 0
    for name, data in _part_bytes(out, part_names(out)):
        newer = upgraded_part(data)
        if newer is not None:
            out.write(f"{MANIFEST}/{name}", newer)
            data, upgraded = newer, upgraded + 1
        table = pq.read_table(io.BytesIO(data), columns=["path", "status"])
        failed = pc.starts_with(table["status"].cast(pa.string()), "error").fill_null(False)
        path = table["path"].cast(pa.large_string())
        done.append(path.filter(pc.invert(failed)))
        if not pc.any(failed).as_py():
            continue
        if wanted_set is None:
            wanted_set = PathSet(wanted)
        retry = pc.and_(failed, pa.array(wanted_set.contains(path)))
        if pc.any(retry).as_py():
            rest = pq.read_table(io.BytesIO(data)).filter(pc.invert(retry))
            if rest.num_rows:
                out.write(f"{MANIFEST}/{name}", parquet_bytes(rest))
            else:
                out.remove([f"{MANIFEST}/{name}"])
    if upgraded:
        log.warning("%d parts of %s, written by an earlier faceetl, were given the columns it did "
                    "not have (null)", upgraded, out.dataset)  # fmt: skip
    chunks = [c for piece in done for c in piece.chunks]
    return pa.chunked_array(chunks, pa.large_string())


@functools.cache
def faces_schema() -> pa.Schema:
    """The Arrow schema of faceetl's columns (made once: a resume checks it against every
    part, and making it takes milliseconds)."""
    return pa.Schema.from_pandas(schema.meta(), preserve_index=False)


def upgraded_part(data: bytes) -> bytes | None:
    """A part (parquet bytes) written by an earlier faceetl, with the schema's columns it lacks
    (``file_sha256``) appended as nulls; None when it has them all.

    A resumed output gets parts with today's columns beside the old ones, and pyarrow takes a
    folder's columns from one file (``pd.read_parquet`` drops a column the first file lacks,
    ``dd.read_parquet`` fails on it): every part is given the same columns instead.
    """
    have = pq.read_schema(io.BytesIO(data)).names
    ours = faces_schema()
    missing = [f for f in ours if f.name not in have]
    if not missing:
        return None
    table = pq.read_table(io.BytesIO(data))
    for f in missing:
        table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    meta = dict(table.schema.metadata or {})
    if b"pandas" in meta:  # pandas' record of the columns' dtypes gets theirs too
        pandas_meta = json.loads(meta[b"pandas"])
        entries = {c["name"]: c for c in json.loads(ours.metadata[b"pandas"])["columns"]}
        pandas_meta["columns"] += [entries[f.name] for f in missing if f.name in entries]
        meta[b"pandas"] = json.dumps(pandas_meta).encode()
        table = table.replace_schema_metadata(meta)
    return parquet_bytes(table)


def _part_bytes(out: Output, names: list[str], chunk: int = 256) -> Iterable[tuple[str, bytes]]:
    """(name, bytes) of parts; on object stores fetched ``chunk`` at a time concurrently (one
    request each would make a resume of many thousands of parts crawl)."""
    if not storage.is_url(out.url):
        for name in names:
            data = out.read(f"{MANIFEST}/{name}")
            if data is not None:
                yield name, data
        return
    fs, root = storage.filesystem(out.dataset, out.storage_options)
    for start in range(0, len(names), chunk):
        batch = {f"{root.rstrip('/')}/{n}": n for n in names[start : start + chunk]}
        got = fs.cat(list(batch), on_error="omit")
        for path, name in batch.items():
            if path in got:
                yield name, got[path]


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def arrow_table(frame: pd.DataFrame, target: pa.Schema | None = None) -> pa.Table:
    """``frame`` as an Arrow table that plain ``pd.read_parquet`` reads back.

    pandas records an ArrowDtype list column's dtype as ``list<item: float>[pyarrow]`` in the
    file's metadata and then cannot parse that name when reading; those entries are written as
    ``object`` (the list values come back as arrays; :func:`faceetl.read_faces` restores the
    Arrow dtypes). ``target``: the schema every part of one dataset shares.
    """
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if target is not None:
        table = table.select(target.names).cast(target)
    meta = dict(table.schema.metadata or {})
    if b"pandas" in meta:
        pandas_meta = json.loads(meta[b"pandas"])
        for col in pandas_meta.get("columns", []):
            if "<" in str(col.get("numpy_type", "")):
                col["numpy_type"] = "object"
        meta[b"pandas"] = json.dumps(pandas_meta).encode()
        table = table.replace_schema_metadata(meta)
    return table


def target_schema(carried: pd.DataFrame) -> pa.Schema:
    """The Arrow schema of every part: faceetl's columns, then the carried input columns."""
    fields = list(faces_schema())
    if len(carried.columns):
        extra = pa.Schema.from_pandas(carried, preserve_index=False)
        fields += [extra.field(c) for c in carried.columns]
    return pa.schema(fields)


# -- the worker side ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Commit:
    """Where one run commits its partitions: the output, the run's id (in the parts' names),
    the parts' Arrow schema, and the weights the output was made with (None: a new output)."""

    out: Output
    run: str
    target: pa.Schema
    expect_weights: dict[str, str] | None = None


def commit_partition(
    part: pd.DataFrame,
    job: Job,
    commit: Commit,
    partition_info: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Extract one partition, write its crops, then commit its part; return its counts.

    Runs on a worker. The in-flight note is written before the first crop and removed after the
    part, so a kill anywhere leaves either a committed part or a note the next run cleans up.
    ``job`` writes its crops under the output (``job.crop_dir`` is ``commit.out.url``).
    """
    if len(part) == 0:
        return pd.DataFrame([[0] * len(COUNTS)], columns=COUNTS)
    out = commit.out
    number = (partition_info or {}).get("number", 0)
    name = f"part-{commit.run}-{number:05d}.parquet"
    if commit.expect_weights is not None:  # the model must be the one the output was made with
        with config.applied(job.settings):
            made = get_backend(job.backend, **job.backend_params).provenance()
        if made.get("weights") and made["weights"] != commit.expect_weights:
            raise SettingsError(
                f"{out.url} was made with weights {commit.expect_weights}; this run loads "
                f"{made['weights']}. Write to another output folder."
            )
    note = make_note(out, name, [str(p) for p in part["path"]], job.crop_root)
    out.write(f"{INFLIGHT}/{name}.json", json.dumps(note).encode())
    faces = extract_partition(part, job)
    out.write(f"{MANIFEST}/{name}", parquet_bytes(arrow_table(faces, commit.target)))
    out.remove([f"{INFLIGHT}/{name}.json"])
    return counts(faces)
