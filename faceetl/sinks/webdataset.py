"""WebDataset shards: ``faces-000000.tar`` ... (one sample per ok face: its crop, its row as
JSON, its class index), each with ``faces-000000.parquet`` beside it holding the same faces'
rows, written by the workers, one task per shard.

WebDataset's own ``ShardWriter`` numbers shards as it fills them, in one process, on local
files; here the shards of all workers must be numbered contiguously, written once under their
final names (atomically) and reach any fsspec URL, so the numbering comes from the survey
(:mod:`faceetl.sinks.plan`) and each shard is one ``webdataset.TarWriter`` over
:func:`faceetl.storage.open_atomic`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import storage
from ..extras import check, require
from ..pipeline.manifest import parquet_bytes
from .base import (
    Export,
    Source,
    SplitFiles,
    Target,
    crop_sizes,
    crops,
    gather,
    image_ext,
    json_rows,
    pattern,
    relative,
    report,
    rows_table,
    run_tasks,
    table_schema,
    task,
)
from .plan import ALL, Split, check_columns, lay_out, sample_key, shard_numbers, sides, survey

BLOCK = 512  # a tar member: a header block, then its data padded to whole blocks
RECORD = 20 * BLOCK  # a tar file ends with two zero blocks and is padded to whole records
DEFAULT_SHARD_SIZE = 1000
_PREFIX = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]*")


@dataclass(frozen=True)
class ShardJob:
    """What every shard task needs (pickled to the workers once per task)."""

    label: bool
    schema: pa.Schema
    storage_options: dict[str, Any] | None


# Sizes counted by hand: tarfile cannot say how large a member or an archive will be before
# writing it, and the shards are cut by size on the driver, before any is written.
def _member(size: int) -> int:
    return BLOCK + -(-size // BLOCK) * BLOCK


def _tar_bytes(samples: int) -> int:
    """A tar file's size from its samples' bytes (:func:`_sample_bytes`)."""
    return -(-(samples + 2 * BLOCK) // RECORD) * RECORD


def _sample_bytes(rows: pd.DataFrame, storage_options: dict[str, Any] | None,
                  label: bool) -> np.ndarray:  # fmt: skip
    """Each face's bytes in a shard: its crop's and its JSON's members, and the class index's
    (one block of data whatever the number)."""
    keys = [sample_key(p, f) for p, f in zip(rows["path"], rows["face"], strict=True)]
    jsons = json_rows(rows, keys)
    image = crop_sizes(rows, storage_options)
    return np.array([_member(int(i)) + _member(len(j)) + (2 * BLOCK if label else 0)
                     for i, j in zip(image, jsons, strict=True)], np.int64)  # fmt: skip


def write_shard(name: str, plan: pd.DataFrame, job: ShardJob, *parts: pd.DataFrame) -> dict:
    """Write shard ``name`` (its URL without extension): ``.tar`` and ``.parquet``, each
    atomically; returns its faces and image extensions."""
    wds = require("webdataset", "formats", "faceetl.write_webdataset")
    rows = gather(plan, parts)
    keys = plan["key"].tolist()
    images = crops(rows, job.storage_options)
    jsons = json_rows(rows, keys)
    classes = rows["_cls"].tolist() if job.label else []
    exts = set()
    with storage.open_atomic(f"{name}.tar", job.storage_options) as f:
        # mtime fixed: the same faces give the same bytes in every run
        with wds.TarWriter(f, encoder=False, mtime=0) as sink:
            for i, key in enumerate(keys):
                ext = image_ext(images[i])
                exts.add(ext)
                sample = {"__key__": key, ext: images[i], "json": jsons[i]}
                if job.label:
                    sample["cls"] = str(classes[i]).encode()
                sink.write(sample)
    table = rows.drop(columns=[c for c in rows.columns if c.startswith("_")])
    table.insert(0, "key", keys)
    if job.label:
        table.insert(1, "cls", rows["_cls"].to_numpy())
    data = parquet_bytes(rows_table(table, job.schema))
    storage.write_atomic(f"{name}.parquet", data, job.storage_options)
    return {"samples": len(keys), "exts": sorted(exts)}


def write_webdataset(
    faces: Any,
    url: str | os.PathLike,
    label: str | None = None,
    split: str | Mapping[str, Any] | Split | None = None,
    shard_size: int | None = None,
    shard_bytes: int | None = None,
    prefix: str = "faces",
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Export:
    """Write the ok faces of ``faces`` (a Dask or pandas face frame, or a faces dataset's URL)
    as WebDataset shards in ``url`` (a folder: local or any fsspec URL).

    Each sample is ``<key>.png`` (or ``.jpg``/``.webp``: the crop as stored), ``<key>.json``
    (the row's columns except bytes) and, with ``label=`` (any column: ``identity``, a carried
    label), ``<key>.cls`` (the class index; the classes, sorted, in ``classes.txt``). Shards
    hold ``shard_size`` faces (default 1000) or, with ``shard_bytes``, as many as keep the tar
    within that size; ``faces-000000.parquet`` beside each shard holds its faces' rows with
    their ``key``. ``split=`` (``"identity"`` or ``{"by": ..., "group": ..., "val_fraction":
    0.1, "seed": 0}``) writes ``train/`` and ``val/``, no group on both sides.
    ``index.json``, written last, names each side's brace pattern
    (``faces-{000000..000041}.tar``): the export is finished when it exists. A run that was
    killed is run again as it was: it deletes what the killed run wrote and writes it all anew.
    """
    check([("webdataset", "formats", "faceetl.write_webdataset")])
    split = Split.parse(split)
    if shard_size is None and shard_bytes is None:
        shard_size = DEFAULT_SHARD_SIZE
    if (shard_size is not None and shard_size < 1) or (shard_bytes is not None and shard_bytes < 1):
        raise ValueError("shard_size and shard_bytes must be positive")
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r}: letters, digits, '-' and '_' only")
    frame = Source(faces, storage_options)
    check_columns(list(frame.columns), label, split)
    own = {"key": pa.string(), **({"cls": pa.int64()} if label else {})}
    schema = table_schema(frame.meta, own)
    owned = rf"(?:(?:train|val)/)?{re.escape(prefix)}-[0-9]{{6}}\.(?:tar|parquet)"
    target = Target(os.fspath(url), storage_options, "webdataset", owned, overwrite)
    target.begin()
    try:
        measure = partial(_sample_bytes, storage_options=storage_options, label=bool(label))
        lay = lay_out(survey(frame, label, split, measure if shard_bytes else None), label, split)
        job = ShardJob(bool(label), schema, storage_options)
        parts = frame.parts()
        tasks, weights, found = [], [], {}
        for side in sides(split):
            rows = lay.rows[lay.rows["side"] == side]
            sizes = rows["_size"].to_numpy() if shard_bytes else None
            numbers = shard_numbers(sizes, len(rows), shard_size, shard_bytes, _tar_bytes)
            folder = target.path(side) if side else target.url
            for shard, sub in rows.groupby(numbers, sort=True):
                name = storage.join(folder, f"{prefix}-{shard:06d}")
                key = f"faceetl-webdataset-{side or 'all'}-{shard}-{target.lock.run}"
                tasks.append(task(write_shard, name, sub, job, parts, key))
                weights.append(len(sub))
            n = int(numbers.max()) + 1 if len(rows) else 0
            where = pattern(storage.join(folder, f"{prefix}-"), n, 6, ".tar") if n else ""
            found[side or ALL] = SplitFiles(where, n, len(rows))
        done = run_tasks(tasks, weights, progress, "webdataset")
        exts = sorted({e for d in done for e in d["exts"]})
        index = {
            "splits": {side: {"pattern": relative(target, s.location) or None,
                                       "shards": s.files, "samples": s.samples}
                       for side, s in found.items()},
            "parquet": "beside each shard: <shard>.parquet, its faces' rows and keys",
            "sample": {"image": exts, "json": "the row's columns", "cls": bool(label)},
            "label": label, "classes": lay.classes, "split": split.record() if split else None,
            "skipped": lay.skipped, "shard_size": shard_size, "shard_bytes": shard_bytes,
        }  # fmt: skip
        target.finish(index, lay.classes)
    except BaseException:
        target.abandon()
        raise
    return report(Export(target.url, "webdataset", found, lay.classes, lay.skipped), progress)

