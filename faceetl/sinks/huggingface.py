"""Hugging Face ``datasets``' own layout: ``data/train-00000-of-00004.parquet`` ..., one row per
ok face with the crop as an ``Image`` (its bytes inside the file), the label as a ``ClassLabel``
and the face's columns, list columns as lists. ``datasets.load_dataset(folder)`` finds the
splits by these names; :func:`load_huggingface` reads any URL.

The files are written by the workers, one task per file, with pyarrow; ``datasets`` is needed
only to read them. Its features are named in each file's schema metadata (the ``huggingface``
key, as ``Dataset.to_parquet`` writes it), by hand and only for the image and label columns:
the other columns' features follow from their Arrow types, so the files read the same with
every ``datasets`` release from 2.19 on, whichever writes them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..extras import require
from .base import (
    INDEX,
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
from .plan import (
    TRAIN,
    VAL,
    Split,
    check_columns,
    lay_out,
    sample_key,
    shard_numbers,
    sides,
    survey,
)

DEFAULT_SHARD_SIZE = 1000
#: rows per row group: what ``datasets`` writes for images, so a reader streams a few at a time
ROW_GROUP = 100
#: the image column's Arrow type: ``datasets.Image``'s storage
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
#: the sides' names here: ``datasets``' own split names (in file names, index.json, the result)
HF_SPLIT = {"": TRAIN, TRAIN: TRAIN, VAL: "validation"}


@dataclass(frozen=True)
class FileJob:
    """What every file task needs."""

    label: bool
    schema: pa.Schema
    storage_options: dict[str, Any] | None


def _row_bytes(rows: pd.DataFrame, storage_options: dict[str, Any] | None) -> np.ndarray:
    """About each face's bytes in a file: its crop and its other columns (as JSON)."""
    keys = [sample_key(p, f) for p, f in zip(rows["path"], rows["face"], strict=True)]
    other = np.array([len(j) for j in json_rows(rows, keys)], np.int64)
    return crop_sizes(rows, storage_options) + other


def write_file(name: str, plan: pd.DataFrame, job: FileJob, *parts: pd.DataFrame) -> dict:
    """Write one parquet file of the plan's faces (atomically)."""
    rows = gather(plan, parts)
    keys = plan["key"].tolist()
    images = crops(rows, job.storage_options)
    table = rows.drop(columns=[c for c in rows.columns if c.startswith("_")])
    table.insert(0, "key", keys)
    table.insert(1, "image", [{"bytes": b, "path": f"{k}.{image_ext(b)}"}
                              for k, b in zip(keys, images, strict=True)])  # fmt: skip
    if job.label:
        table.insert(2, "label", rows["_cls"].to_numpy())
    out = rows_table(table, job.schema)
    meta = dict(out.schema.metadata or {})
    meta[b"huggingface"] = job.schema.metadata[b"huggingface"]
    out = out.replace_schema_metadata(meta)
    with storage.open_atomic(name, job.storage_options) as f:
        pq.write_table(out, f, row_group_size=ROW_GROUP)
    return {"samples": len(keys)}


def write_huggingface(
    faces: Any,
    url: str | os.PathLike,
    label: str | None = None,
    split: str | Mapping[str, Any] | Split | None = None,
    shard_size: int | None = None,
    shard_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Export:
    """Write the ok faces of ``faces`` (a Dask or pandas face frame, or a faces dataset's URL)
    as a Hugging Face dataset in ``url``: ``data/<split>-00000-of-00004.parquet``, each row
    ``key``, ``image`` (the crop: ``datasets.Image``), ``label`` (with ``label=``: a
    ``ClassLabel`` over the sorted classes, also in ``classes.txt``) and the face's columns
    except the crop bytes. Without ``split`` every face is in ``train``; ``split=`` as in
    :func:`faceetl.write_webdataset` gives ``train`` and ``validation`` (``datasets``' names).
    Files hold ``shard_size`` faces (default 1000), or about ``shard_bytes``. Read it with ``datasets.load_dataset(url)`` (a local folder) or :func:`load_huggingface`.
    """
    split = Split.parse(split)
    if shard_size is None and shard_bytes is None:
        shard_size = DEFAULT_SHARD_SIZE
    if (shard_size is not None and shard_size < 1) or (shard_bytes is not None and shard_bytes < 1):
        raise ValueError("shard_size and shard_bytes must be positive")
    frame = Source(faces, storage_options)
    check_columns(list(frame.columns), label, split)
    own = {"key": pa.string(), "image": IMAGE, **({"label": pa.int64()} if label else {})}
    schema = table_schema(frame.meta, own)
    owned = r"data/(?:train|validation)-[0-9]{5}-of-[0-9]{5}\.parquet"
    target = Target(os.fspath(url), storage_options, "huggingface", owned, overwrite)
    target.begin()
    try:
        measure = partial(_row_bytes, storage_options=storage_options)
        lay = lay_out(survey(frame, label, split, measure if shard_bytes else None), label, split)
        # the features ``datasets`` reads from the schema (see the module's docstring)
        features: dict[str, Any] = {"image": {"_type": "Image"}}
        if label:
            features["label"] = {"names": lay.classes, "_type": "ClassLabel"}
        schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        job = FileJob(bool(label), schema, storage_options)
        parts = frame.parts()
        tasks, weights, found = [], [], {}
        for side in sides(split):
            rows = lay.rows[lay.rows["side"] == side]
            sizes = rows["_size"].to_numpy() if shard_bytes else None
            numbers = shard_numbers(sizes, len(rows), shard_size, shard_bytes)
            n = int(numbers.max()) + 1 if len(rows) else 0
            stem = storage.join(target.url, "data", HF_SPLIT[side])
            for shard, sub in rows.groupby(numbers, sort=True):
                name = f"{stem}-{shard:05d}-of-{n:05d}.parquet"
                key = f"faceetl-huggingface-{side or 'all'}-{shard}-{target.lock.run}"
                tasks.append(task(write_file, name, sub, job, parts, key))
                weights.append(len(sub))
            where = pattern(f"{stem}-", n, 5, f"-of-{n:05d}.parquet") if n else ""
            found[HF_SPLIT[side]] = SplitFiles(where, n, len(rows))
        run_tasks(tasks, weights, progress, "huggingface")
        index = {
            "splits": {side: {"pattern": relative(target, s.location) or None, "files": s.files,
                              "samples": s.samples} for side, s in found.items()},
            "columns": schema.names, "label": label, "classes": lay.classes,
            "split": split.record() if split else None, "skipped": lay.skipped,
        }  # fmt: skip
        target.finish(index, lay.classes)
    except BaseException:
        target.abandon()
        raise
    return report(Export(target.url, "huggingface", found, lay.classes, lay.skipped), progress)


def expand(brace: str) -> list[str]:
    """The names a ``stem{00000..00003}tail`` pattern stands for. Written out here: the one
    form faceetl writes, and ``braceexpand`` comes with webdataset, not with ``datasets``."""
    m = re.search(r"\{([0-9]+)\.\.([0-9]+)\}", brace)
    if m is None:
        return [brace]
    width, lo, hi = len(m.group(1)), int(m.group(1)), int(m.group(2))
    return [f"{brace[: m.start()]}{i:0{width}d}{brace[m.end():]}" for i in range(lo, hi + 1)]


def load_huggingface(
    url: str | os.PathLike, storage_options: dict[str, Any] | None = None, **kwargs: Any
) -> Any:
    """The export at ``url`` (:func:`write_huggingface`; local or any fsspec URL) as a
    ``datasets.DatasetDict`` (``train``, and ``validation`` from a split), through
    ``datasets.load_dataset("parquet", data_files=...)`` over exactly the files its
    ``index.json`` names; ``kwargs`` go to ``load_dataset`` (``cache_dir=``, ...)."""
    datasets = require("datasets", "formats", "faceetl.load_huggingface")
    base = os.fspath(url)
    index = json.loads(storage.read_bytes(storage.join(base, INDEX), storage_options))
    if index.get("format") != "huggingface":
        raise ValueError(f"{base} holds a {index.get('format')} export, not a huggingface one")
    files = {side: [storage.join(base, f) for f in expand(s["pattern"])]
             for side, s in index["splits"].items() if s["pattern"]}  # fmt: skip
    return datasets.load_dataset("parquet", data_files=files, storage_options=storage_options,
                                 **kwargs)  # fmt: skip
