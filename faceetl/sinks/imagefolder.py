"""torchvision's ``ImageFolder`` layout: ``root/<label>/<key>.png``, one folder per class (and
``root/train/...``, ``root/val/...`` with a split), written by the workers, one task per
partition of the frame, each file atomically.

What ``torchvision.datasets.ImageFolder`` takes from it: the classes are the sorted names of the
folders below the root (``classes.txt`` lists them in that order: class i is line i), a folder
with no image is an error, and files count by extension (``.png``, ``.jpg``, ``.webp`` are
among its ``IMG_EXTENSIONS``). So label values become safe folder names
(:func:`faceetl.sinks.folder_name`: no ``/``, no hidden or empty name), faces without a label
are skipped and counted, and no empty folder is left behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .. import storage
from .base import (
    Export,
    Source,
    SplitFiles,
    Target,
    crops,
    gather,
    image_ext,
    io_pool,
    report,
    run_tasks,
    task,
)
from .plan import ALL, KEY_RE, Split, check_columns, lay_out, sides, survey


@dataclass(frozen=True)
class FolderJob:
    """What every partition's task needs."""

    root: str
    storage_options: dict[str, Any] | None


def write_files(name: str, plan: pd.DataFrame, job: FolderJob, *parts: pd.DataFrame) -> dict:
    """Write the plan's faces as ``<root>/[<side>/]<folder>/<key>.<ext>`` (in threads: on object
    stores each file is a request); returns the faces written per side."""
    rows = gather(plan, parts)
    images = crops(rows, job.storage_options)
    sides_, keys, folders = plan["side"].tolist(), plan["key"].tolist(), rows["_folder"].tolist()

    def put(i: int) -> None:
        where = [sides_[i]] if sides_[i] else []
        name = f"{keys[i]}.{image_ext(images[i])}"
        storage.write_atomic(storage.join(job.root, *where, folders[i], name), images[i],
                             job.storage_options)  # fmt: skip

    list(io_pool().map(put, range(len(rows))))
    return {"samples": pd.Series(sides_).value_counts().to_dict()}


def write_imagefolder(
    faces: Any,
    url: str | os.PathLike,
    label: str,
    split: str | Mapping[str, Any] | Split | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Export:
    """Write the ok faces of ``faces`` (a Dask or pandas face frame, or a faces dataset's URL)
    into ``url`` as ``<label>/<key>.<ext>`` (the crop as stored), the layout
    ``torchvision.datasets.ImageFolder`` reads; ``split=`` (as in
    :func:`faceetl.write_webdataset`) writes ``train/<label>/...`` and ``val/<label>/...``.

    Label values become folder names by :func:`faceetl.sinks.folder_name` (``/``, ``%``, ``\\``
    and control characters as ``%XX``, a leading ``.`` as ``%2E``); faces whose label is null,
    NaN or empty are skipped and counted (the summary and ``index.json`` say how many).
    ``classes.txt`` lists the classes, sorted as torchvision sorts the folders.
    """
    split = Split.parse(split)
    frame = Source(faces, storage_options)
    check_columns(list(frame.columns), label, split)
    owned = rf"(?:(?:train|val)/)?[^/]+/{KEY_RE}\.(?:png|jpg|webp)"
    target = Target(os.fspath(url), storage_options, "imagefolder", owned, overwrite)
    target.begin()
    try:
        lay = lay_out(survey(frame, label, split), label, split)
        job = FolderJob(target.url, storage_options)
        parts = frame.parts()
        tasks, weights = [], []
        for part, sub in lay.rows.groupby("_part", sort=True):
            key = f"faceetl-imagefolder-{part}-{target.lock.run}"
            tasks.append(task(write_files, str(part), sub, job, parts, key))
            weights.append(len(sub))
        run_tasks(tasks, weights, progress, "imagefolder")
        found, index_splits = {}, {}
        for side in sides(split):
            rows = lay.rows[lay.rows["side"] == side]
            folder = target.path(side) if side else target.url
            found[side or ALL] = SplitFiles(folder, len(rows), len(rows))
            index_splits[side or ALL] = {"folder": side or ".", "files": len(rows),
                                         "samples": len(rows),
                                         "classes": int(rows["_folder"].nunique())}  # fmt: skip
        index = {
            "splits": index_splits,
            "label": label, "classes": lay.classes, "split": split.record() if split else None,
            "skipped": lay.skipped,
        }  # fmt: skip
        target.finish(index, lay.classes)
    except BaseException:
        target.abandon()
        raise
    return report(Export(target.url, "imagefolder", found, lay.classes, lay.skipped), progress)
