"""The paper's API: ``Pife(backend, concurrency).extract(paths, output_dir)``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from . import schema
from .backends.base import REGISTRY, backend_spec
from .pipeline.cluster import cluster, in_worker_process
from .pipeline.extract import check_writable, common_root, compute, extract_faces, read_images
from .pipeline.progress import summary

log = logging.getLogger(__name__)

MANIFEST = "faces.parquet"


class Pife:
    """Extract aligned face crops from many images with one backend, on a Dask cluster.

    ``concurrency`` is how many workers run the backend (default: the backend's entry in the
    worker map: opencv 10, dlib 8, mediapipe 2, mtcnn 4, retinaface 2, ssd 4; on a CPU cluster
    at most one per core unless given). An active
    ``distributed.Client`` is used as it is; otherwise a local cluster is started on first use
    and kept for the next calls (``close()`` or a ``with`` block ends it).
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
        **backend_params: Any,
    ) -> None:
        REGISTRY.check(backend, backend_params)  # an unknown backend or parameter fails here
        self.backend = backend
        self._asked = concurrency  # None: the worker map's default, capped by cluster()
        self.concurrency = concurrency or backend_spec(backend).workers
        self.size, self.template, self.padding = size, template, padding
        self.batch_size, self.partition_size = batch_size, partition_size
        self.progress = progress
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
        from distributed import default_client

        try:
            default_client()
            return
        except ValueError:
            pass
        if self._client is None:
            self._client = cluster(self.backend, self._asked)

    def extract(self, paths: Any, output_dir: str | os.PathLike) -> pd.DataFrame:
        """Detect and align faces of ``paths``; write crops and ``faces.parquet`` to ``output_dir``.

        Crops go under ``output_dir`` mirroring the inputs' layout relative to their common folder.
        Paths already in an earlier ``faces.parquet`` there are skipped (those that failed with an
        ``error`` status are tried again); the returned pandas frame
        (without crop bytes: see ``crop_path``) is the whole manifest, old rows and new.
        """
        if in_worker_process():  # a guard-less script re-imported by a worker: do nothing there
            return schema.meta()
        out = Path(output_dir)
        check_writable(out)  # an unwritable output stops the run here, naming the folder
        manifest = out / MANIFEST
        ddf = read_images(paths, partition_size=self.partition_size)
        todo = (
            ddf.compute() if not isinstance(paths, pd.DataFrame) else paths.reset_index(drop=True)
        )
        todo = todo.assign(path=todo["path"].map(os.fspath))
        root = common_root(todo["path"])
        old = schema.read_faces(manifest) if manifest.exists() else None
        if old is not None:  # done: paths with a result; paths that failed are tried again
            failed = old["status"].str.startswith("error")
            done = set(old.loc[~failed, "path"])
            todo = todo[~todo["path"].isin(done)]
            old = old[~old["path"].isin(set(todo["path"]))]
        if len(todo) == 0:
            log.info("nothing to do: every path is already in %s", manifest)
            return old if old is not None else schema.meta()
        self._ensure_client()
        faces = extract_faces(
            read_images(todo, partition_size=self.partition_size),
            backend=self.backend,
            size=self.size,
            template=self.template,
            padding=self.padding,
            batch_size=self.batch_size,
            keep_crops=False,
            crop_dir=out,
            crop_root=root,
            **self.backend_params,
        )
        start = time.perf_counter()
        new = compute(faces, progress=self.progress, summarize=False).reset_index(drop=True)
        seconds = time.perf_counter() - start
        result = new if old is None else pd.concat([old, new], ignore_index=True)
        result = result.drop_duplicates(subset=["path", "face"], keep="last").reset_index(drop=True)
        tmp = manifest.with_suffix(".parquet.tmp")
        result.to_parquet(tmp, index=False)
        os.replace(tmp, manifest)
        if self.progress:
            print(f"faceetl: {summary(new, seconds)} -> {out} (manifest {manifest})")
        return result
