"""The paper's API: ``Pife(backend, concurrency).extract(paths, output_dir)``."""

from __future__ import annotations

import json
import logging
import os
import time
import weakref
from typing import Any

import numpy as np
import pandas as pd

from . import schema, storage
from .align import AlignSpec
from .backends.base import REGISTRY, backend_spec
from .backends.params import canonical_params, effective_params
from .images import crop_extension, parse_crop_format
from .pipeline import pathset
from .pipeline.cluster import cluster, in_worker_process
from .pipeline.crops import check_writable
from .pipeline.extract import compute
from .pipeline.inputs import (
    common_root,
    input_frame,
    partition_bounds,
    partitioned,
    read_images,
)
from .pipeline.job import Job
from .pipeline.lock import ConcurrentRunError, Lock
from .pipeline.manifest import (
    MANIFEST,
    Commit,
    Output,
    SettingsError,
    check_settings,
    commit_partition,
    committed_paths,
    part_names,
    read_part,
    record_weights,
    recover,
    target_schema,
)
from .pipeline.pathset import PathSet
from .pipeline.progress import (
    COUNTS,
    compute_batches,
    distributed_client,
    remember_images,
    summary,
)
from .schema import read_faces

log = logging.getLogger(__name__)

#: partitions sent to the cluster at once (at least 4 a worker thread); at most two batches wait
#: in the scheduler, so the driver's memory does not grow with the run's partitions
BATCH_TASKS = 256

LOCAL_SCHEDULERS = ("threads", "threading", "sync", "synchronous", "single-threaded", "processes")

__all__ = ["MANIFEST", "ConcurrentRunError", "Pife", "SettingsError"]


class Pife:
    """Extract aligned face crops from many images with one backend, on a Dask cluster.

    ``concurrency`` is how many workers run the backend (default: the backend's entry in the
    worker map: opencv 10, dlib 8, mediapipe 2, mtcnn 4, retinaface 2, ssd 4; on a CPU cluster
    at most one per core unless given). An active
    ``distributed.Client`` is used as it is; a local scheduler named in Dask's config
    (``dask.config.set(scheduler="threads")``) runs the work in this process; otherwise a local
    cluster is started on first use and kept for the next calls (``close()`` or a ``with``
    block ends it).
    ``crop_format``: ``"png"`` (default), ``"jpeg"`` / ``"jpeg:<quality>"`` or ``"webp"``
    / ``"webp:<quality>"`` for the crop files.
    """

    def __init__(
        self,
        backend: str = "retinaface",
        concurrency: int | None = None,
        *,
        size: int = 112,
        template: str = "arcface",
        padding: float = 0.25,
        batch_size: int = 16,
        partition_size: int | None = None,
        progress: bool = True,
        crop_format: str = "png",
        **backend_params: Any,
    ) -> None:
        REGISTRY.check(backend, backend_params)  # an unknown backend or parameter fails here
        # an old parameter name warned just now, at the user's line; from here on the new ones
        backend_params = canonical_params(REGISTRY.spec(backend).factory, backend_params,
                                          warn=False)  # fmt: skip
        self.backend = backend
        self._asked = concurrency  # None: the worker map's default, capped by cluster()
        self.concurrency = concurrency or backend_spec(backend).workers
        self.size, self.template, self.padding = size, template, padding
        self.batch_size, self.partition_size = batch_size, partition_size
        self.progress = progress
        crop_extension(crop_format)  # an unknown format fails here
        self.crop_format = crop_format
        self.backend_params = backend_params
        self._client = None

    def __repr__(self) -> str:
        return f"Pife({self.backend!r}, {self.concurrency})"

    def __enter__(self) -> Pife:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut down the cluster this object started (an outside client is left alone)."""
        if self._client is not None:
            self._client.close()  # cluster()'s client shuts its cluster down with it
            self._client = None

    def _ensure_client(self) -> None:
        import dask
        from distributed import default_client

        if dask.config.get("scheduler", None) in LOCAL_SCHEDULERS:
            return  # dask.config.set(scheduler="threads") asks for no cluster: honoured
        try:
            default_client()
            return
        except ValueError:
            pass
        if self._client is None:
            self._client = cluster(self.backend, self._asked)
            # closed when this object goes, or at the latest when the script ends, before
            # distributed's own exit handlers (which would kill the workers with a warning)
            weakref.finalize(self, _close_quietly, self._client)

    def settings(self) -> dict[str, Any]:
        """What the output's rows depend on: stored with the dataset, compared on every run
        by effect (:func:`effective_settings`)."""
        return effective_settings(
            {
                "backend": self.backend,
                "backend_params": self.backend_params,
                "template": self.template,
                "size": self.size,
                "padding": self.padding,
                "crop_format": self.crop_format,
            }
        )

    def extract(
        self,
        paths: Any,
        output_dir: str | os.PathLike,
        *,
        storage_options: dict[str, Any] | None = None,
        force: bool = False,
    ) -> Any:
        """Detect and align faces of ``paths``; write crops and ``faces.parquet/`` to ``output_dir``.

        ``output_dir`` and the paths may be local or any fsspec URL (``s3://bucket/out``), with
        ``storage_options`` for both. Crops go under ``output_dir`` mirroring the inputs' layout
        relative to their common folder. The workers commit the dataset partition by partition
        (see :mod:`faceetl.pipeline.manifest`): a run that stops loses only the partitions in
        flight, and the next run skips every path already done (paths that failed with an
        ``error`` status are tried again). A run with other settings than the output's raises
        :class:`SettingsError`; a second run on the same output while one writes raises
        :class:`ConcurrentRunError`. Files under ``output_dir`` are never taken as inputs.

        The run lock needs a store that creates a file only if it is absent (local folders,
        S3, GCS, Azure, ``memory://``); on any other the run is refused unless ``force=True``,
        which says that no other run writes to ``output_dir`` (the lock is then not atomic).

        Returns the whole dataset, old rows and new, as a lazy Dask frame (see
        :func:`faceetl.read_faces`; ``crop_path`` locates each crop).
        """
        if in_worker_process():  # a guard-less script re-imported by a worker: do nothing there
            return schema.meta()
        out = Output(os.fspath(output_dir), storage_options)
        check_writable(out.url, storage_options)  # an unwritable output stops the run here
        todo = _inputs(paths, storage_options)
        repeated = pathset.repeated(todo["path"])
        if repeated.any():  # a path is the dataset's key: it is done once, its first row's labels
            log.warning("%d paths are given more than once: each is done once", repeated.sum())
            todo = todo[~repeated].reset_index(drop=True)
        inside = _under(todo["path"], out.url)
        if inside.any():
            log.warning("%d files under the output folder %s are not inputs", inside.sum(), out.url)
            todo = todo[~inside]
        with Lock(out, force=force) as lock:
            recovered = recover(out)
            if recovered:
                log.warning(
                    "cleaned up %d partitions of a run that stopped in %s", recovered, out.url
                )
            record = check_settings(
                out, self.settings(), common_root(todo["path"]), effective_settings
            )
            todo, already = _left_to_do(todo, out)
            if len(todo):
                self._run(todo, out, lock.run, record)
            else:
                said = f"nothing to do: {already} images already done in {out.dataset}"
                log.info(said)
                if self.progress:
                    print(f"faceetl: {said}")
        return read_faces(out.dataset, storage_options=storage_options, lazy=True)

    def _run(self, todo: pd.DataFrame, out: Output, run: str, record: dict[str, Any]) -> None:
        self._ensure_client()
        job = Job.make(
            self.backend, self.backend_params, spec=AlignSpec(self.template, self.size,
            self.padding), batch_size=self.batch_size, crop_format=self.crop_format,
            crop_dir=out.url, crop_root=record.get("crop_root"), keep_crops=False,
            storage_options=out.storage_options,
        )  # fmt: skip
        carried = schema.check_carried(todo.columns)
        commit = Commit(out, run, target_schema(todo[carried]), record.get("weights"))
        start = time.perf_counter()
        client = distributed_client()
        if client is None:  # a local scheduler: the graph stays in this process
            counts = partitioned(todo, self.partition_size).map_partitions(
                commit_partition, job, commit,
                meta=pd.DataFrame({c: pd.Series([], dtype="int64") for c in COUNTS}),
            )  # fmt: skip
            counts = remember_images(counts, len(todo))
            done = compute(counts, progress=self.progress, summarize=False)
        else:
            done = _commit_in_batches(client, todo, self.partition_size, job, commit,
                                      self.progress)  # fmt: skip
        seconds = time.perf_counter() - start
        parts = part_names(out)
        if parts:  # the weight files the rows were made with, from one row's provenance
            prov = read_part(out, parts[-1], ["provenance"]).column(0)[0].as_py()
            record_weights(out, record, json.loads(prov or "{}").get("backend", {}).get("weights"))
        if self.progress:
            print(f"faceetl: {summary(done, seconds)} -> {out.url} (dataset {out.dataset})")


def _commit_in_batches(
    client: Any, todo: pd.DataFrame, partition_size: int | None, job: Job, commit: Commit,
    progress: bool,
) -> pd.DataFrame:  # fmt: skip
    """Every partition of ``todo`` committed on ``client``'s cluster, the partitions made and
    sent a batch at a time (:func:`faceetl.pipeline.progress.compute_batches`): the driver
    never holds a task graph of the whole run. The partitions are those :func:`partitioned`
    makes, numbered alike (the parts' names), each task ``commit_partition`` as before."""
    bounds = partition_bounds(len(todo), partition_size)
    slots = sum(client.nthreads().values()) or 1

    def submit(numbers: range) -> list[Any]:
        return client.map(
            commit_partition,
            [todo.iloc[bounds[k] : bounds[k + 1]] for k in numbers],
            [job] * len(numbers),
            [commit] * len(numbers),
            [{"number": k} for k in numbers],
            key=[(f"commit_partition-{commit.run}", k) for k in numbers],  # one group a run
        )

    return compute_batches(
        client, submit, len(bounds) - 1, batch=max(BATCH_TASKS, 4 * slots), images=len(todo),
        progress=progress, name=f"commit_partition ({len(todo)} images)",
    )  # fmt: skip


def _close_quietly(client: Any) -> None:
    """Close a client (and the cluster it owns); one already closed is fine."""
    try:
        client.close()
    except Exception as e:  # at interpreter exit some of distributed may be gone already
        log.debug("closing the cluster at exit: %s", e)


def effective_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (as :meth:`Pife.settings` gives them, or as an output stored them) by
    what they do: the backend's parameters with defaults filled in, old names translated and
    a weights file by its sha256 (:func:`faceetl.backends.params.effective_params`), the crop
    format with its quality."""
    out = dict(settings)
    try:
        factory = REGISTRY.spec(str(out.get("backend"))).factory
    except ValueError:  # a backend this process does not know: compared as stored
        factory = None
    if factory is not None:
        out["backend_params"] = effective_params(factory, out.get("backend_params") or {})
    if isinstance(out.get("crop_format"), str):
        name, quality = parse_crop_format(out["crop_format"])
        out["crop_format"] = name if quality is None else f"{name}:{quality}"
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def _inputs(paths: Any, storage_options: Any) -> pd.DataFrame:
    """The input paths (and carried columns) as a pandas frame, listed on the driver: the
    ``path`` column as Arrow strings (:func:`faceetl.pipeline.inputs.input_frame`)."""
    if isinstance(paths, pd.DataFrame) and "path" not in paths.columns:
        raise ValueError("the DataFrame needs a 'path' column")
    if _is_dask_frame(paths):  # computed here: its partitions are the driver's to cut
        return read_images(paths).compute().reset_index(drop=True)
    return input_frame(paths, storage_options=storage_options)


def _left_to_do(todo: pd.DataFrame, out: Output) -> tuple[pd.DataFrame, int]:
    """The inputs without a final result in ``out`` yet, and how many have one (error rows of
    these inputs are deleted from the output: they are tried again)."""
    paths = todo["path"].array.__arrow_array__()  # the column's Arrow data, not a copy
    already = PathSet(committed_paths(out, paths)).contains(paths)
    if not already.any():  # a new output: the inputs as they are, not a copy
        return todo.reset_index(drop=True), 0
    return todo[~already].reset_index(drop=True), int(already.sum())


def _is_dask_frame(obj: Any) -> bool:
    import sys

    dd = sys.modules.get("dask.dataframe")  # not imported: the object cannot be one
    return dd is not None and isinstance(obj, dd.DataFrame)


def _under(paths: pd.Series, folder: str, chunk: int = 1 << 16) -> np.ndarray:
    """Which ``paths`` lie in ``folder`` (:func:`faceetl.storage.under`), as a bool array.

    Local absolute paths without ``.``, ``..`` or empty parts are their own absolute form, so
    for them it is a prefix test done by Arrow; the others (relative, URLs, not normalized) go
    through :func:`~faceetl.storage.under` a chunk at a time."""
    import pyarrow.compute as pc

    out = np.zeros(len(paths), dtype=bool)
    if not len(paths):
        return out
    values = paths.array.__arrow_array__()
    if os.name == "nt" or storage.is_url(folder):
        plain = np.zeros(len(paths), dtype=bool)
    else:
        root = os.path.abspath(storage.local_path(folder))
        clean = pc.and_(pc.starts_with(values, "/"), pc.invert(
            pc.match_substring_regex(values, r"//|/\.\.?(/|$)|/$|://")))  # fmt: skip
        plain = clean.to_numpy(zero_copy_only=False)
        inside = pc.or_(pc.equal(values, root), pc.starts_with(values, root.rstrip("/") + "/"))
        out[plain] = inside.to_numpy(zero_copy_only=False)[plain]
    rest = np.flatnonzero(~plain)
    for start in range(0, len(rest), chunk):
        idx = rest[start : start + chunk]
        out[idx] = [storage.under(p, folder) for p in paths.iloc[idx].tolist()]
    return out
