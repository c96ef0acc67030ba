"""One partition's pass, as named stages over batches of images.

``read`` (the files' bytes) -> ``decode`` (RGB uint8, on the host or the backend's device) ->
``detect`` (the backend's ``detect_batch``) -> ``align`` (each face's transform, and its crop
warped) -> ``encode`` (crops encoded and written) -> ``rows`` (one per face, or one per image
without) -> ``predict`` (predictors run while the images are in memory). The next batch is read
and decoded in the I/O threads while this one goes through the rest. The stage names are those
the timings (:func:`stage_seconds`) and the profiler ranges (``faceetl.<stage>``) use.

Every input gets a row: an image that cannot be read or decoded, whose detection or alignment
fails, or whose crop cannot be written gets an ``error: ...`` row; only an output that takes no
file at all (:class:`faceetl.pipeline.crops.OutputError`) stops the run.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from .. import schema, storage
from ..align import crop_face, estimate_transform
from ..backends.base import REGISTRY, Detections, get_backend
from ..images import (
    ImageError,
    crop_extension,
    decode_image,
    encode_crop,
    read_image_bytes,
    read_url_bytes,
)
from ..predictors.base import output_columns
from .cluster import ENV_IO_THREADS, cpu_cores
from .crops import CropWriteError, OutputError, write_crop
from .device import Crop, decode_batch, device_crops, to_host
from .job import Job
from .names import crop_stem, safe_join
from .predict import predict_rows

log = logging.getLogger(__name__)

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def io_pool() -> ThreadPoolExecutor:
    """This process's threads for decoding the next batch and encoding crops.

    One pool per process, shared by every partition running here: OpenCV's decoders and
    encoders release the GIL, so they run beside the detector (which holds a core, or waits on
    a GPU). As many threads as cores, or ``FACEETL_IO_THREADS`` (what :func:`cluster` gives
    each worker: its share of the cores on a GPU machine, 1 beside a CPU worker's detector).
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            n = int(os.environ.get(ENV_IO_THREADS) or 0) or max(2, cpu_cores())
            _POOL = ThreadPoolExecutor(n, thread_name_prefix="faceetl-io")
        return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of the parent's threads: it starts its own pool


os.register_at_fork(after_in_child=_forget_pool)


def in_pool(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` on :func:`io_pool`, under this thread's settings (a copied context)."""
    return io_pool().submit(contextvars.copy_context().run, fn, *args)


def encode_later(rgb: np.ndarray, crop_format: str) -> Crop:
    """A crop encoded in the I/O threads; calling the result waits for its bytes."""
    return in_pool(encode_crop, rgb, crop_format).result


_STAGES: dict[str, float] = {}
_STAGES_LOCK = threading.Lock()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time spent in a pipeline stage, summed over this process's threads (see
    :func:`stage_seconds`); a named range ``faceetl.<name>`` for torch's profiler where torch
    is loaded (free when no profiler runs); and, on a distributed worker, the stage's time in
    distributed's fine performance metrics (the dashboard's "Fine Performance Metrics" page
    shows the partition tasks' time by stage; nothing is recorded outside a worker's task)."""
    torch = sys.modules.get("torch")
    rng = torch.profiler.record_function(f"faceetl.{name}") if torch else contextlib.nullcontext()
    metrics = sys.modules.get("distributed.metrics")
    meter = metrics.context_meter.meter(name) if metrics else contextlib.nullcontext()
    start = time.perf_counter()
    try:
        with rng, meter:
            yield
    finally:
        with _STAGES_LOCK:
            _STAGES[name] = _STAGES.get(name, 0.0) + time.perf_counter() - start


def stage_seconds(reset: bool = False) -> dict[str, float]:
    """Seconds this process spent in each stage (``read``, ``decode``, ``detect``, ``align``,
    ``encode``, ``rows``, ``predict``), summed over threads: where the time goes."""
    with _STAGES_LOCK:
        out = dict(_STAGES)
        if reset:
            _STAGES.clear()
    return out


def transforms(det: Detections, spec: Any) -> list[tuple[np.ndarray, str]]:
    """Each face's image-to-crop transform and how it was fitted (landmarks, shape or box)."""
    shapes = getattr(det, "shapes", None)
    return [
        estimate_transform(
            det.landmarks[k], det.boxes[k], spec, None if shapes is None else shapes[k]
        )
        for k in range(len(det))
    ]


def detect_isolating(detector: Any, images: list[np.ndarray]) -> list[Detections | Exception]:
    """Detect a batch; if it fails, detect each half again (bisection).

    A batch that runs out of (GPU) memory is retried in halves, and one image that makes the
    backend fail costs one error row, not its batch.
    """
    try:
        out = detector.detect_batch(images)
        if len(out) != len(images):
            raise RuntimeError(f"backend returned {len(out)} results for {len(images)} images")
        return [d.clip(im.shape[1], im.shape[0]) for d, im in zip(out, images, strict=True)]
    except Exception as batch_error:
        if len(images) == 1:
            return [batch_error]
        if "out of memory" in str(batch_error).lower():
            _free_device_memory()
        half = len(images) // 2
        return detect_isolating(detector, images[:half]) + detect_isolating(
            detector, images[half:]
        )


def _free_device_memory() -> None:
    """Return cached CUDA memory after an out-of-memory error (when torch is in use)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Batch:
    """The images of one batch that decoded, with their input rows, and what the stages add."""

    def __init__(self) -> None:
        self.idx: list[int] = []  # input row of each image
        self.images: list[Any] = []  # RGB uint8: numpy on the host, tensors on a device
        self.results: list[Detections | Exception] = []
        self.fits: list[Any] = []  # per image: transforms, None (no detection) or the error
        self.crops: list[list[Crop] | None] = []  # per image: crops made on the device


class PartitionRun:
    """One partition of paths through the stages; :meth:`run` gives its faces frame."""

    def __init__(self, part: pd.DataFrame, job: Job) -> None:
        self.part, self.job = part, job
        REGISTRY.ensure(job.plugin)
        self.detector = get_backend(job.backend, **job.backend_params)
        self.device = getattr(self.detector, "input_device", None)  # where it takes images
        self.prov = json.dumps(
            {"backend": self.detector.provenance(), "align": job.spec.__dict__},
            sort_keys=True, default=str,
        )  # fmt: skip
        self.paths = [str(p) for p in part["path"]]
        self.rows: list[dict[str, Any]] = []
        self.origin: list[int] = []  # input row of each output row
        self.predicted: dict[str, list[Any]] = {}
        self.sha: dict[int, str] = {}  # input row -> sha256 of its file's bytes, once read
        self.fetched: dict[int, bytes | Exception] = {}  # URL inputs read with their batch

    # -- rows ------------------------------------------------------------------------------------

    def emit(self, i: int, new: list[dict[str, Any]]) -> None:
        self.rows.extend(new)
        self.origin.extend([i] * len(new))

    def base(self, i: int) -> dict[str, Any]:
        return {**schema.empty_row(self.paths[i]), "backend": self.job.backend,
                "provenance": self.prov, "file_sha256": self.sha.get(i)}  # fmt: skip

    def error_row(self, i: int, e: Exception | str) -> dict[str, Any]:
        # an ImageError says what is wrong in words; anything else (permissions, ...) by type
        why = e if isinstance(e, str) else str(e) if isinstance(e, ImageError) else (
            f"{type(e).__name__}: {e}")  # fmt: skip
        return {**self.base(i), "status": schema.error_status(why)}

    # -- read and decode -------------------------------------------------------------------------

    def read(self, i: int) -> bytes:
        """The bytes of input ``i``, their sha256 noted for its rows (hashed here, while they are
        in memory: the file is never read again for it)."""
        data = self.fetched.pop(i, None)
        if data is None:
            data = read_image_bytes(self.paths[i], self.job.storage_options)
        elif isinstance(data, Exception):
            raise data
        self.sha[i] = hashlib.sha256(data).hexdigest()
        return data

    def fetch(self, batch: range) -> None:
        """The bytes of the batch's URL inputs, requested together (an object store answers
        them at once: a batch waits about one round trip, not one per file); :meth:`read`
        takes them from here."""
        urls = [i for i in batch if storage.is_url(self.paths[i])]
        if len(urls) > 1:
            with stage("read"):
                got = read_url_bytes([self.paths[i] for i in urls], self.job.storage_options)
            self.fetched.update(zip(urls, got, strict=True))

    def load(self, i: int, fetching: Future | None = None) -> Any:
        """Image ``i`` (RGB uint8, on the host), or its error row (after its batch's fetch)."""
        try:
            if fetching is not None:
                fetching.result()
            with stage("read"):
                data = self.read(i)
            with stage("decode"):
                return decode_image(data, max_pixels=self.job.max_pixels)
        except Exception as e:
            return self.error_row(i, e)

    def load_on_device(self, batch: range) -> list[Any]:
        """The images of ``batch`` as (H, W, 3) tensors on the backend's device, or error rows."""
        out: list[Any] = []
        datas: list[bytes] = []
        self.fetch(batch)
        with stage("read"):
            for i in batch:
                try:
                    datas.append(self.read(i))
                    out.append(None)
                except Exception as e:
                    out.append(self.error_row(i, e))
        with stage("decode"):
            decoded = iter(decode_batch(datas, str(self.device), self.job.max_pixels))
        for k, i in enumerate(batch):
            if out[k] is None:
                t = next(decoded)
                out[k] = self.error_row(i, t) if isinstance(t, Exception) else t
        return out

    def prefetch(self, start: int) -> list[tuple[int, Callable[[], Any]]]:
        """Start reading and decoding the batch at ``start`` in the I/O threads: its images side
        by side on the host, or the whole batch in one device decode."""
        batch = range(start, min(start + self.job.batch_size, len(self.paths)))
        if self.device is None:
            fetching = in_pool(self.fetch, batch)  # first in the pool's queue: never waits on a load
            return [(i, in_pool(self.load, i, fetching).result) for i in batch]
        whole = in_pool(self.load_on_device, batch)
        return [(i, lambda k=k: whole.result()[k]) for k, i in enumerate(batch)]

    def collect(self, loading: list[tuple[int, Callable[[], Any]]]) -> Batch:
        """The batch's decoded images; the error rows of those that did not decode go out."""
        batch = Batch()
        for i, got in loading:
            image = got()
            if isinstance(image, dict):
                self.emit(i, [image])
            else:
                batch.images.append(image)
                batch.idx.append(i)
        return batch

    # -- detect and align ------------------------------------------------------------------------

    def detect(self, batch: Batch) -> None:
        with stage("detect"):
            batch.results = detect_isolating(self.detector, batch.images) if batch.images else []

    def align(self, batch: Batch) -> None:
        """Each face's transform; on the device path its crops warped (and JPEGs encoded) there."""
        with stage("align"):
            for det in batch.results:
                try:
                    batch.fits.append(None if isinstance(det, Exception) else
                                      transforms(det, self.job.spec))  # fmt: skip
                except Exception as e:  # becomes the image's "alignment failed" row
                    batch.fits.append(e)
            wanted = self.device is not None and self.job.makes_crops
            batch.crops = (
                device_crops(batch.images, batch.fits, self.job.spec, self.job.crop_format,
                             encode_later)  # fmt: skip
                if wanted
                else [None] * len(batch.images)
            )

    # -- encode and rows -------------------------------------------------------------------------

    def image_rows(self, batch: Batch) -> None:
        """The rows of every image of the batch (encoding and writing its crops first)."""
        for n, (i, image, det) in enumerate(zip(batch.idx, batch.images, batch.results,
                                                strict=True)):  # fmt: skip
            h, w = image.shape[:2]
            size = {"image_width": w, "image_height": h}
            if isinstance(det, Exception):
                why = f"detection failed ({type(det).__name__}: {det})"
                self.emit(i, [{**self.error_row(i, why), **size}])
                continue
            try:
                fit = batch.fits[n]
                if isinstance(fit, Exception):
                    raise fit  # its fit failed: the "alignment failed" row below
                paths = self.crop_files(i, image, fit, batch.crops[n])
                with stage("rows"):
                    self.emit(i, self.face_rows(i, det, fit, paths, size))
            except OutputError:
                raise
            except CropWriteError as e:
                self.emit(i, [{**self.error_row(i, str(e)), **size}])
            except Exception as e:
                why = f"alignment failed ({type(e).__name__}: {e})"
                self.emit(i, [{**self.error_row(i, why), **size}])

    def crop_files(
        self, i: int, image: Any, fit: list[tuple[np.ndarray, str]], made: list[Crop] | None
    ) -> list[tuple[bytes | None, str | None]]:
        """(bytes, file) of each face's crop: aligned and encoded here unless ``made`` on the
        device, written under ``crop_dir`` (None where nobody keeps them)."""
        job = self.job
        if not job.makes_crops or not fit:  # nobody keeps the crops, or there are none
            return [(None, None)] * len(fit)
        with stage("align"):
            if made is None:  # encoded side by side in the I/O threads
                host = to_host(image)
                made = [encode_later(crop_face(host, m, job.spec), job.crop_format)
                        for m, _ in fit]  # fmt: skip
        with stage("encode"):
            crops = [c() for c in made]
            if job.crop_dir is None:
                return [(c, None) for c in crops]
            stem = safe_join(job.crop_dir, crop_stem(self.paths[i], job.crop_root, job.crop_dir))
            ext = crop_extension(job.crop_format)
            written: list[str] = []
            for k, data in enumerate(crops):
                try:
                    write_crop(f"{stem}{k}.{ext}", data, job.crop_dir, job.storage_options)
                except CropWriteError:  # no crop of an image whose row says error stays behind
                    storage.remove(written, job.storage_options)
                    raise
                written.append(f"{stem}{k}.{ext}")
        return list(zip(crops, written, strict=True))

    def face_rows(
        self, i: int, det: Detections, fit: list[tuple[np.ndarray, str]],
        crops: list[tuple[bytes | None, str | None]], size: dict[str, int],
    ) -> list[dict[str, Any]]:  # fmt: skip
        """One row per face (``no_face`` when there is none)."""
        base = {**self.base(i), **size}
        if len(det) == 0:
            return [{**base, "status": schema.STATUS_NO_FACE}]
        shapes = getattr(det, "shapes", None)
        rows = []
        for k in range(len(det)):
            box, lm = det.boxes[k], det.landmarks[k]
            shape = None if shapes is None else shapes[k]
            (m, method), (data, crop_path) = fit[k], crops[k]
            rows.append({
                **base, "face": k,
                "x1": float(box[0]), "y1": float(box[1]),
                "x2": float(box[2]), "y2": float(box[3]),
                "score": float(det.scores[k]),
                "landmarks": [float(v) for v in lm.reshape(-1)],
                "shape": None if shape is None else [float(v) for v in shape.reshape(-1)],
                "crop": data if self.job.keep_crops else None,
                "crop_path": crop_path,
                "alignment": method,
                "affine": [float(v) for v in m.reshape(-1)],
                "status": schema.STATUS_OK,
            })  # fmt: skip
        return rows

    # -- predict ---------------------------------------------------------------------------------

    def predict(self, batch: Batch, first: int) -> None:
        """The predictors' columns of the batch's rows (from ``first``), from the images in
        memory (one decode per image for everything)."""
        job = self.job
        in_memory = {self.paths[i]: to_host(im) for i, im in zip(batch.idx, batch.images,
                                                                 strict=True)}  # fmt: skip
        with stage("predict"):
            got = predict_rows(
                schema.frame(self.rows[first:]),
                [(m, p) for m, p, _ in job.predictors],
                in_memory,
                plugins=[pl for _, _, pl in job.predictors],
                storage_options=job.storage_options,
            )
        for c in got.columns[len(schema.SCHEMA) :]:
            self.predicted.setdefault(c, []).extend(got[c].tolist())

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> pd.DataFrame:
        """Every batch through the stages (the next one decoding meanwhile), then the frame."""
        size = self.job.batch_size
        upcoming = self.prefetch(0)
        for start in range(0, len(self.paths), size):
            first, loading = len(self.rows), upcoming
            more = start + size < len(self.paths)
            upcoming = self.prefetch(start + size) if more else []
            batch = self.collect(loading)
            del loading
            self.detect(batch)
            self.align(batch)
            self.image_rows(batch)
            if self.job.predictors:
                self.predict(batch, first)
        return self.frame()

    def frame(self) -> pd.DataFrame:
        """The rows in input order (an image's faces in order), carried columns and predictions
        alongside."""
        carried_cols = [c for c in self.part.columns if c != "path"]
        order = np.argsort(np.asarray(self.origin, dtype=np.int64), kind="stable")
        rows = [self.rows[j] for j in order]
        carried = (self.part[carried_cols].iloc[[self.origin[j] for j in order]]
                   if carried_cols else None)  # fmt: skip
        df = schema.frame(rows, carried)
        for model, params, _ in self.job.predictors:
            for c, dtype in output_columns(model, **params).items():
                values = [self.predicted[c][j] for j in order]
                df[c] = pd.Series(values, index=df.index, dtype=dtype)
        return df


def run_partition(part: pd.DataFrame, job: Job) -> pd.DataFrame:
    """Faces of one partition of paths (a pandas frame with a ``path`` column) in the schema."""
    if len(part) == 0:
        return schema.meta(part[[c for c in part.columns if c != "path"]])
    return PartitionRun(part, job).run()
