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

import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import config, schema, storage
from ..backends.base import get_backend
from .extract import crop_relpath, extract_partition
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
    """``key: stored -> new`` for each setting that differs."""
    keys = sorted(set(stored) | set(new))
    return [
        f"{k}: {stored.get(k)!r} -> {new.get(k)!r}" for k in keys if stored.get(k) != new.get(k)
    ]


def check_settings(out: Output, settings: dict[str, Any], crop_root: str | None) -> dict[str, Any]:
    """The stored settings record (written now if the output is new, with the folder the crops'
    layout mirrors); SettingsError if this run's ``settings`` differ from the output's."""
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
    diff = settings_differences(record["settings"], settings)
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


def recover(out: Output) -> int:
    """Clean up after partitions that were in flight when a run stopped; returns their number.

    A partition whose part was committed keeps its crops (only temporary files go); one whose
    part is missing loses every crop it may have written: its paths are redone by this run.
    """
    notes = [n for n in out.listdir(INFLIGHT) if n.endswith(".json")]
    committed = set(part_names(out))
    for name in notes:
        data = out.read(f"{INFLIGHT}/{name}")
        note = json.loads(data) if data else {"part": name[: -len(".json")], "crops": []}
        keep = note["part"] in committed
        for prefix in note["crops"]:
            _remove_crops(prefix, out.storage_options, temporary_only=keep)
        stale = [n for n in out.listdir(MANIFEST) if n.startswith(f".{note['part']}.tmp")]
        out.remove([f"{MANIFEST}/{n}" for n in stale])
        out.remove([f"{INFLIGHT}/{name}"])
    # a note whose write was cut short (killed between writing its hidden temporary and the
    # rename) never landed, so its partition wrote nothing after it: the temporary just goes
    orphans = [n for n in out.listdir(INFLIGHT) if n.startswith(".") and ".tmp-" in n]
    out.remove([f"{INFLIGHT}/{n}" for n in orphans])
    return len(notes)


def _remove_crops(
    prefix: str, storage_options: dict[str, Any] | None, temporary_only: bool
) -> None:
    """Delete ``<prefix><k>.png`` crops (and their hidden temporaries) of one input image."""
    if storage.is_url(prefix):
        folder, stem = prefix.rsplit("/", 1)
    else:
        folder, stem = os.path.split(prefix)
    names = list_names(folder, storage_options)
    victims = [n for n in names if n.startswith(f".{stem}") and ".tmp-" in n]
    if not temporary_only:
        victims += [
            n for n in names if n.startswith(stem) and n[len(stem) :].split(".")[0].isdigit()
        ]
    storage.remove([storage.join(folder, n) for n in victims], storage_options)


# -- what is done --------------------------------------------------------------------------------


def committed_paths(out: Output, wanted: set[str]) -> set[str]:
    """Paths with a final result in the dataset (ok or no_face). Error rows of ``wanted`` paths
    are deleted from their parts (rewritten atomically), so those paths are tried again."""
    import pyarrow.compute as pc

    done: set[str] = set()
    wanted_values: pa.Array | None = None  # built once, only if some part has error rows
    for name, data in _part_bytes(out, part_names(out)):
        table = pq.read_table(io.BytesIO(data), columns=["path", "status"])
        failed = pc.starts_with(table["status"].cast(pa.string()), "error").fill_null(False)
        done.update(table["path"].filter(pc.invert(failed)).to_pylist())
        if not pc.any(failed).as_py():
            continue
        if wanted_values is None:
            wanted_values = pa.array(sorted(wanted), pa.string())
        path = table["path"].cast(pa.string())
        retry = pc.and_(failed, pc.is_in(path, value_set=wanted_values))
        if pc.any(retry).as_py():
            rest = pq.read_table(io.BytesIO(data)).filter(pc.invert(retry))
            if rest.num_rows:
                out.write(f"{MANIFEST}/{name}", _parquet_bytes(rest))
            else:
                out.remove([f"{MANIFEST}/{name}"])
    return done


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


def _parquet_bytes(table: pa.Table) -> bytes:
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
    faces = pa.Schema.from_pandas(schema.meta(), preserve_index=False)
    fields = list(faces)
    if len(carried.columns):
        extra = pa.Schema.from_pandas(carried, preserve_index=False)
        fields += [extra.field(c) for c in carried.columns]
    return pa.schema(fields)


# -- the worker side ----------------------------------------------------------------------------


def crop_prefix(out_url: str, path: str, root: str | None) -> str:
    """The crop paths of image ``path`` without their face number: ``<prefix><k>.png``."""
    rel = crop_relpath(path, root, 0)
    return storage.join(out_url, rel[: -len("0.png")])


def commit_partition(
    part: pd.DataFrame,
    out: Output,
    run: str,
    extract: dict[str, Any],
    target: pa.Schema,
    expect_weights: dict[str, str] | None = None,
    partition_info: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Extract one partition, write its crops, then commit its part; return its counts.

    Runs on a worker. The in-flight note is written before the first crop and removed after the
    part, so a kill anywhere leaves either a committed part or a note the next run cleans up.
    """
    if len(part) == 0:
        return pd.DataFrame([[0] * len(COUNTS)], columns=COUNTS)
    number = (partition_info or {}).get("number", 0)
    name = f"part-{run}-{number:05d}.parquet"
    if expect_weights is not None:  # the model must be the one the output was made with
        with config.applied(extract.get("settings")):
            made = get_backend(extract["backend"], **extract["backend_params"]).provenance()
        if made.get("weights") and made["weights"] != expect_weights:
            raise SettingsError(
                f"{out.url} was made with weights {expect_weights}; this run loads "
                f"{made['weights']}. Write to another output folder."
            )
    root = extract.get("crop_root")
    note = {"part": name, "crops": [crop_prefix(out.url, str(p), root) for p in part["path"]]}
    out.write(f"{INFLIGHT}/{name}.json", json.dumps(note).encode())
    faces = extract_partition(
        part, **extract, crop_dir=out.url, storage_options=out.storage_options
    )
    out.write(f"{MANIFEST}/{name}", _parquet_bytes(arrow_table(faces, target)))
    out.remove([f"{INFLIGHT}/{name}.json"])
    return counts(faces)
