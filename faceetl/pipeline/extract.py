"""The Dask layer: paths in, a lazy DataFrame of faces out. It never knows which model runs.

Each partition of paths goes through the stages of :mod:`faceetl.pipeline.stages` inside the
worker, as a :class:`~faceetl.pipeline.job.Job` made on the driver says; the backend is looked
up by name in the registry, so models load once per worker process and are never pickled into
the task graph. Every input path appears in the output: one row per face, or one row with
``face == -1`` and status ``no_face`` / ``error: <reason>``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import config, schema
from ..align import AlignSpec
from ..predictors.base import output_columns
from .cluster import one_model_thread
from .crops import CropWriteError, OutputError, check_writable
from .inputs import IMAGE_EXTENSIONS, auto_partition_size, common_root, read_images
from .job import DEFAULT_BATCH_SIZE, Job
from .progress import compute_frame, images_planned, remember_images
from .stages import run_partition, stage_seconds

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = [
    "IMAGE_EXTENSIONS", "CropWriteError", "Job", "OutputError", "auto_partition_size",
    "check_writable", "common_root", "compute", "extract_faces", "extract_partition",
    "read_images", "stage_seconds",
]  # fmt: skip


def extract_partition(
    part: pd.DataFrame,
    job: Job | str,
    backend_params: dict[str, Any] | None = None,
    spec: AlignSpec | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Faces of one partition of paths (a pandas frame with a ``path`` column) in the schema.

    ``job``: the run's :class:`Job`; or, for a call by hand, a backend name with its
    parameters, the alignment and the other :class:`Job` fields as keywords. The job's settings
    (captured on the driver: weights mirror, offline, pixel limit) apply while the partition
    runs, whatever the worker's environment says, and its models run on one torch thread (see
    :func:`faceetl.pipeline.cluster.one_model_thread`).
    """
    if not isinstance(job, Job):
        job = Job.make(job, backend_params, spec=spec or AlignSpec(), **options)
    with config.applied(job.settings), one_model_thread():
        return run_partition(part, job)


def extract_faces(
    paths: Any,
    backend: str = "retinaface",
    size: int = 112,
    template: str = "arcface",
    padding: float = 0.25,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_crops: bool = True,
    crop_dir: str | os.PathLike | None = None,
    crop_root: str | os.PathLike | None = None,
    max_pixels: int | None = None,
    storage_options: dict[str, Any] | None = None,
    crop_format: str = "png",
    predict: Sequence[str | tuple[str, dict[str, Any]]] | dict[str, dict[str, Any]] = (),
    **backend_params: Any,
) -> dd.DataFrame:
    """Lazy Dask DataFrame of detected, aligned faces (see :mod:`faceetl.schema` for columns).

    ``paths`` is anything :func:`read_images` takes. ``backend_params`` go to the backend's
    constructor (e.g. ``score_threshold=0.6``). With ``crop_dir`` (a folder or an fsspec URL) the
    crops are also written as PNG files there, mirroring the inputs' layout below ``crop_root``;
    ``keep_crops=False`` leaves the ``crop`` bytes out of the frame. ``storage_options`` are
    those of the input and crop URLs. ``crop_format``: ``"png"`` (lossless, the default),
    ``"jpeg"`` / ``"jpeg:85"`` (quality, default 95) or ``"webp"`` / ``"webp:90"`` (101:
    lossless), for the ``crop`` bytes and the files.

    ``predict``: predictors to run in the same pass, while each image is in memory (one decode
    per image for detection, alignment and every predictor's own crop): model names, or
    ``(name, params)`` pairs, or ``{name: params}``; their columns follow the others, as
    :func:`faceetl.predict` adds them.
    """
    import dask.dataframe as dd

    job = Job.make(
        backend, backend_params, predict=predict, spec=AlignSpec(template, size, padding),
        batch_size=batch_size, crop_format=crop_format, crop_dir=crop_dir, crop_root=crop_root,
        keep_crops=keep_crops, storage_options=storage_options, max_pixels=max_pixels,
    )  # fmt: skip
    if job.crop_dir is not None:
        check_writable(job.crop_dir, storage_options)
    ddf = (
        paths
        if isinstance(paths, dd.DataFrame) and "path" in paths.columns
        else read_images(paths, storage_options=storage_options)
    )
    carried = schema.check_carried(ddf.columns)
    meta = schema.meta(ddf._meta[carried])
    for model, params, _ in job.predictors:
        for c, dtype in output_columns(model, **params).items():
            if c in meta.columns:
                raise ValueError(f"column {c!r} of {model!r} clashes with another column")
            meta[c] = pd.Series([], dtype=dtype)
    out = ddf.map_partitions(extract_partition, job, meta=meta, clear_divisions=True)
    return remember_images(out, images_planned(ddf))


def compute(collection: Any, progress: bool = True, summarize: bool = True) -> Any:
    """Compute a Dask collection (on the active distributed client, else the local scheduler).

    For a face frame, progress counts images (img/s, ETA) and a summary line ends the run:
    images ok / no_face / error, faces, img/s (see :mod:`faceetl.pipeline.progress`).
    """
    return compute_frame(collection, progress=progress, summarize=summarize)
