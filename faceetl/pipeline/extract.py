"""The Dask layer: paths in, a lazy DataFrame of faces out. It never knows which model runs.

Each partition of paths is decoded and sent to the backend in batches inside the worker; the
backend is looked up by name in the registry, so models load once per worker process and are
never pickled into the task graph. Every input path appears in the output: one row per face, or
one row with ``face == -1`` and status ``no_face`` / ``error: <reason>``.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob as _glob
import json
import logging
import math
import os
import posixpath
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import config, schema, storage
from ..align import AlignSpec, crop_face, estimate_transform
from ..backends.base import REGISTRY, Detections, get_backend
from ..batched import decode_jpegs
from ..images import (
    ImageError,
    crop_extension,
    encode_crop,
    escape_name,
    frame_path,
    load_image,
    parse_crop_format,
    read_image_bytes,
)
from ..predictors.base import REGISTRY as PREDICTORS
from ..predictors.base import output_columns
from .cluster import ENV_IO_THREADS, cpu_cores, one_model_thread
from .names import crop_stem, safe_join
from .predict import predict_rows
from .progress import compute_frame, images_planned, remember_images

if TYPE_CHECKING:  # dask.dataframe loads on first use: it is most of faceetl's import time
    import dask.dataframe as dd

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".gif",
)  # fmt: skip
DEFAULT_PARTITION_SIZE = 64
DEFAULT_BATCH_SIZE = 16

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


def _in_pool(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` on :func:`io_pool`, under this thread's settings (a copied context)."""
    return io_pool().submit(contextvars.copy_context().run, fn, *args)


def _list_folder(folder: str, extensions: Sequence[str] | None) -> list[str]:
    """Every entry below ``folder`` that is not a folder (files, FIFOs, broken links: the decoder
    says what each is), optionally only those whose name ends in one of ``extensions``."""
    exts = None if extensions is None else tuple(e.lower() for e in extensions)
    found = []
    for root, dirs, files in os.walk(folder):  # does not descend into symlinked folders
        dirs.sort()
        for name in sorted(files):
            if exts is None or name.lower().endswith(exts):
                found.append(os.path.join(root, name))
    return found


def _expand_glob(
    pattern: str | os.PathLike,
    extensions: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    if storage.is_url(pattern):  # listed through the URL's filesystem, never the local disk
        found = storage.list_files(os.fspath(pattern), extensions, storage_options)
        if not found:
            raise FileNotFoundError(f"no files match {pattern!r}")
        return found
    p = os.path.expanduser(storage.local_path(pattern))
    if os.path.isdir(p):
        found = _list_folder(p, extensions)
    elif _glob.has_magic(p):
        found = sorted(f for f in _glob.glob(p, recursive=True) if not os.path.isdir(f))
        if extensions is not None:
            exts = tuple(e.lower() for e in extensions)
            found = [f for f in found if f.lower().endswith(exts)]
    else:  # a single file: kept even if missing, so it gets its error row
        return [frame_path(p if isinstance(pattern, str) else Path(p))]
    if not found:
        raise FileNotFoundError(f"no files match {pattern!r}")
    return [escape_name(f) for f in found]  # names as the OS gives them, in the frame's form


def _parallel_slots() -> int:
    """Tasks that can run at once: the active distributed client's threads, else the cores
    (Dask's threaded scheduler runs one task per core)."""
    try:
        from distributed import default_client

        workers = default_client().scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    except (ImportError, ValueError):
        return cpu_cores()


def auto_partition_size(n_paths: int, slots: int | None = None) -> int:
    """Paths per partition: about four partitions per parallel slot, so every worker gets work
    and finishes close to the others, and at most DEFAULT_PARTITION_SIZE paths (large jobs)."""
    slots = slots or _parallel_slots()
    return int(min(DEFAULT_PARTITION_SIZE, max(1, math.ceil(n_paths / (4 * slots)))))


def read_images(
    source: str | os.PathLike | Sequence[str | os.PathLike] | pd.DataFrame | dd.DataFrame,
    partition_size: int | None = None,
    npartitions: int | None = None,
    extensions: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dd.DataFrame:
    """A Dask DataFrame with a ``path`` column from a glob, a folder, a list of paths, or a frame.

    Paths may be local or any fsspec URL (``s3://bucket/photos/**/*.jpg``); a URL's folder or
    glob is listed through its filesystem, with ``storage_options`` (as in ``dd.read_parquet``).

    A folder gives every file below it (whatever its name: the decoder reports what is not an
    image); ``extensions=(".jpg", ".png")`` keeps only names ending so (for a folder or a glob).
    File names that are not valid UTF-8 are kept, escaped (:func:`faceetl.images.frame_path`);
    paths given as text are read as the frame writes them (a backslash before ``x80``-``xff``
    or ``x5c`` is an escape), paths given as bytes or ``pathlib.Path`` as the OS names them.
    A pandas or Dask DataFrame must have a ``path`` column; its other columns (labels, ids) are
    carried through extraction. ``partition_size`` paths go in each partition (default:
    :func:`auto_partition_size`, from the number of paths and of workers) unless ``npartitions``
    is given.
    """
    import dask.dataframe as dd

    if isinstance(source, dd.DataFrame):
        if "path" not in source.columns:
            raise ValueError("the DataFrame needs a 'path' column")
        schema.check_carried(source.columns)
        return source.assign(path=source["path"].astype(schema.STRING))
    if isinstance(source, pd.DataFrame):
        if "path" not in source.columns:
            raise ValueError("the DataFrame needs a 'path' column")
        df = source.reset_index(drop=True).copy()
    elif isinstance(source, (str, os.PathLike)):
        found = _expand_glob(source, extensions, storage_options)
        df = pd.DataFrame({"path": [frame_path(p) for p in found]})
    else:
        df = pd.DataFrame({"path": [frame_path(p) for p in source]})
    if len(df) == 0:
        raise ValueError("no input paths")
    schema.check_carried(df.columns)
    df["path"] = df["path"].map(frame_path).astype(schema.STRING)
    size = partition_size or auto_partition_size(len(df))
    n = npartitions or max(1, -(-len(df) // max(1, size)))
    return remember_images(dd.from_pandas(df, npartitions=min(n, len(df)), sort=False), len(df))


class OutputError(OSError):
    """The output cannot be written: the run stops (it is not a property of one image)."""


class CropWriteError(OSError):
    """One image's crop could not be written to an output that is writable: the image gets an
    ``error:`` row and the run goes on."""


def check_writable(
    folder: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> None:
    """Create ``folder`` if needed and prove a file can be written there, else OutputError."""
    folder = os.fspath(folder)
    if storage.is_url(folder):
        probe = storage.join(folder, f".faceetl-write-test-{os.getpid()}")
        try:
            storage.write_atomic(probe, b"", storage_options)
            storage.remove([probe], storage_options)
        except Exception as e:  # fsspec back ends raise their own kinds
            raise OutputError(
                f"cannot write to the output {folder}: {type(e).__name__}: {e}"
            ) from e
        return
    folder = storage.local_path(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".faceetl-write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {folder}: {e.strerror or e}") from e


def _write_crop(crop_path: str, png: bytes, out_dir: str,
                storage_options: dict[str, Any] | None) -> None:  # fmt: skip
    """Write a crop atomically (see :func:`faceetl.storage.write_atomic`).

    A failure is this image's (:class:`CropWriteError`) when the output still takes a file,
    else the run's (:class:`OutputError`: a full disk, a revoked permission, a gone bucket).
    """
    try:
        storage.write_atomic(crop_path, png, storage_options)
    except Exception as e:  # fsspec back ends raise their own kinds
        why = f"{getattr(e, 'strerror', None) or e}"
        try:
            check_writable(out_dir, storage_options)
        except OutputError as stop:
            raise OutputError(f"cannot write the crop {crop_path}: {why} ({stop})") from e
        raise CropWriteError(f"cannot write the crop {crop_path}: {why}") from e


def _face_rows(
    path: str,
    image: np.ndarray,
    det: Detections,
    base: dict[str, Any],
    spec: AlignSpec,
    crop_dir: str | None,
    crop_root: str | None,
    keep_crops: bool,
    storage_options: dict[str, Any] | None = None,
    crop_format: str = "png",
    crops: list[Callable[[], bytes]] | None = None,
    fits: list[tuple[np.ndarray, str]] | None = None,
) -> list[dict[str, Any]]:
    """The rows of one image's faces; ``fits``: their transforms (:func:`_transforms`) where
    fitted already; ``crops``: their encoded crops where they were made already (on the device,
    see :func:`_device_crops`), else made here from ``image``."""
    h, w = (int(v) for v in image.shape[:2])
    base = {**base, "image_width": w, "image_height": h}
    if len(det) == 0:
        return [{**base, "status": schema.STATUS_NO_FACE}]
    rows = []
    shapes = getattr(det, "shapes", None)
    if fits is None:
        fits = _transforms(det, spec)
    if not keep_crops and crop_dir is None:  # nobody keeps the crops: none are made
        crops = [lambda: None] * len(fits)
    elif crops is None:  # the faces' crops are encoded side by side (the encoders release the GIL)
        image = _host(image)
        crops = [
            _in_pool(encode_crop, crop_face(image, m, spec), crop_format).result for m, _ in fits
        ]
    stem = None if crop_dir is None else safe_join(crop_dir, crop_stem(path, crop_root, crop_dir))
    written: list[str] = []
    for k in range(len(det)):
        box, lm = det.boxes[k], det.landmarks[k]
        shape = None if shapes is None else shapes[k]
        m, method = fits[k]
        png = crops[k]()
        crop_path = None
        if stem is not None:
            crop_path = f"{stem}{k}.{crop_extension(crop_format)}"
            try:
                _write_crop(crop_path, png, crop_dir, storage_options)
            except CropWriteError:  # no crop of an image whose row says error stays behind
                storage.remove(written, storage_options)
                raise
            written.append(crop_path)
        rows.append(
            {
                **base,
                "face": k,
                "x1": float(box[0]),
                "y1": float(box[1]),
                "x2": float(box[2]),
                "y2": float(box[3]),
                "score": float(det.scores[k]),
                "landmarks": [float(v) for v in lm.reshape(-1)],
                "shape": None if shape is None else [float(v) for v in shape.reshape(-1)],
                "crop": png if keep_crops else None,
                "crop_path": crop_path,
                "alignment": method,
                "affine": [float(v) for v in m.reshape(-1)],
                "status": schema.STATUS_OK,
            }
        )
    return rows


_STAGES: dict[str, float] = {}
_STAGES_LOCK = threading.Lock()


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """Time spent in a pipeline stage, summed over this process's threads (see
    :func:`stage_seconds`), and a named range ``faceetl.<name>`` for torch's profiler where
    torch is loaded (free when no profiler runs)."""
    torch = sys.modules.get("torch")
    rng = torch.profiler.record_function(f"faceetl.{name}") if torch else contextlib.nullcontext()
    start = time.perf_counter()
    try:
        with rng:
            yield
    finally:
        with _STAGES_LOCK:
            _STAGES[name] = _STAGES.get(name, 0.0) + time.perf_counter() - start


def stage_seconds(reset: bool = False) -> dict[str, float]:
    """Seconds this process spent in each pipeline stage (``decode``, ``detect``,
    ``device-crops``, ``rows``, ``predict``), summed over threads: where the time goes."""
    with _STAGES_LOCK:
        out = dict(_STAGES)
        if reset:
            _STAGES.clear()
    return out


def _host(image: Any) -> np.ndarray:
    """An image as a host numpy array (a device tensor is copied over)."""
    return image if isinstance(image, np.ndarray) else image.cpu().numpy()


def _transforms(det: Detections, spec: AlignSpec) -> list[tuple[np.ndarray, str]]:
    """Each face's image-to-crop transform and how it was fitted (landmarks, shape or box)."""
    shapes = getattr(det, "shapes", None)
    return [
        estimate_transform(
            det.landmarks[k], det.boxes[k], spec, None if shapes is None else shapes[k]
        )
        for k in range(len(det))
    ]


def _device_crops(
    images: list[Any], fits: list[Any], spec: AlignSpec, crop_format: str
) -> list[list[Callable[[], bytes]] | None]:
    """Per image, its faces' encoded crops, aligned where the images are (one batched warp per
    image on their device, :func:`faceetl.batched.warp_faces`); JPEG crops are encoded there
    too where torchvision can (nvjpeg), the others from the host in the I/O threads. None for
    an image whose crops :func:`_face_rows` makes (failed detection or fit, or the dlib
    template, whose chips follow dlib's own resampling on the host). ``fits``: per image its
    :func:`_transforms`, or None / the exception where there are none."""
    from ..batched import encode_jpegs, warp_faces

    out: list[list[Callable[[], bytes]] | None] = [None] * len(images)
    if spec.template == "dlib":
        return out
    for n, (image, fit) in enumerate(zip(images, fits, strict=True)):
        if not isinstance(fit, list) or not fit:
            continue
        mats = [m for m, _ in fit]
        try:
            chw = image.permute(2, 0, 1)[None]
            faces = warp_faces(chw, [0] * len(mats), mats, spec.size)  # (F, 3, S, S) uint8
        except Exception as e:  # e.g. out of device memory: this image's crops come from the host
            log.warning(
                "device alignment failed (%s: %s); aligning on the host", type(e).__name__, e
            )
            continue
        name, quality = parse_crop_format(crop_format)
        encoded = encode_jpegs(faces, quality) if name == "jpeg" else None
        if encoded is not None:
            out[n] = [(lambda b=b: b) for b in encoded]
        else:
            host = faces.permute(0, 2, 3, 1).cpu().numpy()
            out[n] = [_in_pool(encode_crop, host[k], crop_format).result for k in range(len(host))]
    return out


def _detect_isolating(detector: Any, images: list[np.ndarray]) -> list[Detections | Exception]:
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
        return _detect_isolating(detector, images[:half]) + _detect_isolating(
            detector, images[half:]
        )


def _free_device_memory() -> None:
    """Return cached CUDA memory after an out-of-memory error (when torch is in use)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def extract_partition(
    part: pd.DataFrame,
    backend: str,
    backend_params: dict[str, Any],
    spec: AlignSpec,
    batch_size: int = DEFAULT_BATCH_SIZE,
    crop_dir: str | None = None,
    crop_root: str | None = None,
    keep_crops: bool = True,
    max_pixels: int | None = None,
    plugin: Any = None,
    storage_options: dict[str, Any] | None = None,
    settings: config.Settings | None = None,
    crop_format: str = "png",
    predictors: list[tuple[str, dict[str, Any], Any]] | None = None,
) -> pd.DataFrame:
    """Faces of one partition of paths (a pandas frame with a ``path`` column) in the schema.

    ``storage_options`` open URL inputs and write crops under a URL ``crop_dir``. ``settings``
    (captured on the driver: weights mirror, offline, pixel limit) apply while the partition
    runs, whatever the worker's environment says.
    """
    with config.applied(settings), one_model_thread():
        return _extract_partition(
            part, backend, backend_params, spec, batch_size, crop_dir, crop_root, keep_crops,
            max_pixels, plugin, storage_options, crop_format, predictors,
        )  # fmt: skip


def _extract_partition(
    part: pd.DataFrame,
    backend: str,
    backend_params: dict[str, Any],
    spec: AlignSpec,
    batch_size: int,
    crop_dir: str | None,
    crop_root: str | None,
    keep_crops: bool,
    max_pixels: int | None,
    plugin: Any,
    storage_options: dict[str, Any] | None,
    crop_format: str,
    predictors: list[tuple[str, dict[str, Any], Any]] | None = None,
) -> pd.DataFrame:
    """See :func:`extract_partition`.

    ``plugin``: the registry entry of a backend registered outside faceetl (see
    ``Registry.plugin``), so that worker processes know it. ``predictors``: (model, params,
    plugin) run on each batch while its images are in memory (one decode per image).
    """
    carried_cols = [c for c in part.columns if c != "path"]
    if len(part) == 0:
        return schema.meta(part[carried_cols])
    REGISTRY.ensure(plugin)
    detector = get_backend(backend, **backend_params)
    prov = json.dumps(
        {"backend": detector.provenance(), "align": spec.__dict__}, sort_keys=True, default=str
    )
    paths = [str(p) for p in part["path"]]
    rows: list[dict[str, Any]] = []
    origin: list[int] = []  # input row of each output row

    def emit(i: int, new: list[dict[str, Any]]) -> None:
        rows.extend(new)
        origin.extend([i] * len(new))

    def error_row(i: int, e: Exception) -> dict[str, Any]:
        base = {**schema.empty_row(paths[i]), "backend": backend, "provenance": prov}
        # an ImageError says what is wrong in words; anything else (permissions, ...) by type
        why = str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
        return {**base, "status": schema.error_status(why)}

    def load(i: int) -> Any:
        """Image ``i`` (RGB uint8, on the host), or its error row."""
        try:
            with _stage("decode"):
                return load_image(paths[i], max_pixels, storage_options)
        except Exception as e:
            return error_row(i, e)

    def load_on_device(batch: range) -> list[Any]:
        """The images of ``batch`` decoded on the detector's device (nvjpeg for JPEGs, the CPU
        decoder for the rest and for what nvjpeg refuses), as (H, W, 3) tensors, or error rows."""
        datas: list[bytes] = []
        out: list[Any] = []
        for i in batch:
            try:
                datas.append(read_image_bytes(paths[i], storage_options))
                out.append(None)
            except Exception as e:
                out.append(error_row(i, e))
        try:
            with _stage("decode"):
                decoded = iter(decode_jpegs(datas, device, max_pixels) if datas else [])
        except Exception as e:  # the device itself failed (memory, driver): decode on the host
            log.warning("device decode failed (%s: %s); decoding on the host", type(e).__name__, e)
            import torch

            decoded = iter(
                [
                    # a read-only array (some decoders give one) is copied: torch wants writable
                    got
                    if isinstance(got, dict)
                    else torch.from_numpy(np.require(got, requirements="W")).permute(2, 0, 1)
                    for got in (load(i) for k, i in enumerate(batch) if out[k] is None)
                ]
            )
        for k, i in enumerate(batch):
            if out[k] is None:
                t = next(decoded)
                if isinstance(t, dict):  # an error row already (host fallback)
                    out[k] = t
                elif isinstance(t, Exception):
                    out[k] = error_row(i, t)
                else:
                    out[k] = t.permute(1, 2, 0)
        return out

    def prefetch(start: int) -> list[tuple[int, Callable[[], Any]]]:
        """Start decoding the batch at ``start``: its images side by side on the host, or the
        whole batch in one device decode."""
        batch = range(start, min(start + batch_size, len(paths)))
        if device is None:
            return [(i, _in_pool(load, i).result) for i in batch]
        whole = _in_pool(load_on_device, batch)
        return [(i, lambda k=k: whole.result()[k]) for k, i in enumerate(batch)]

    device = getattr(detector, "input_device", None)  # where the backend takes its images
    predicted: dict[str, list[Any]] = {}
    upcoming = prefetch(0)
    for start in range(0, len(paths), batch_size):
        first = len(rows)
        loading = upcoming
        # the next batch decodes while this one is detected, aligned and encoded
        upcoming = prefetch(start + batch_size) if start + batch_size < len(paths) else []
        idx, images = [], []
        for i, got in loading:
            image = got()
            if isinstance(image, dict):
                emit(i, [image])
            else:
                images.append(image)
                idx.append(i)
        del loading
        with _stage("detect"):
            results = _detect_isolating(detector, images) if images else []
        fits: list[Any] = []  # per image its transforms, None (no detection) or the error
        for det in results:
            try:
                fits.append(None if isinstance(det, Exception) else _transforms(det, spec))
            except Exception as e:  # becomes the image's "alignment failed" row
                fits.append(e)
        with _stage("device-crops"):
            wanted = device and (keep_crops or crop_dir is not None)
            crops = _device_crops(images, fits, spec, crop_format) if wanted else None
        with _stage("rows"):  # alignment and encoding on the host happen here
            for n, (i, image, det) in enumerate(zip(idx, images, results, strict=True)):
                base = {**schema.empty_row(paths[i]), "backend": backend, "provenance": prov}
                h, w = image.shape[:2]
                if isinstance(det, Exception):
                    status = schema.error_status(f"detection failed ({type(det).__name__}: {det})")
                    emit(i, [{**base, "status": status, "image_width": w, "image_height": h}])
                    continue
                try:
                    if isinstance(fits[n], Exception):
                        raise fits[n]  # its fit failed: the "alignment failed" row below
                    emit(
                        i,
                        _face_rows(
                            paths[i],
                            image,
                            det,
                            base,
                            spec,
                            crop_dir,
                            crop_root,
                            keep_crops,
                            storage_options,
                            crop_format,
                            None if crops is None else crops[n],
                            fits[n],
                        ),
                    )
                except OutputError:
                    raise
                except CropWriteError as e:
                    status = schema.error_status(str(e))
                    emit(i, [{**base, "status": status, "image_width": w, "image_height": h}])
                except Exception as e:
                    status = schema.error_status(f"alignment failed ({type(e).__name__}: {e})")
                    emit(i, [{**base, "status": status, "image_width": w, "image_height": h}])
        if predictors:
            in_memory = {paths[i]: _host(im) for i, im in zip(idx, images, strict=True)}
            with _stage("predict"):
                batch = predict_rows(
                    schema.frame(rows[first:]),
                    [(m, p) for m, p, _ in predictors],
                    in_memory,
                    plugins=[pl for _, _, pl in predictors],
                    storage_options=storage_options,
                )
            for c in batch.columns[len(schema.SCHEMA) :]:
                predicted.setdefault(c, []).extend(batch[c].tolist())
        del images
    order = np.argsort(np.asarray(origin, dtype=np.int64), kind="stable")
    rows = [rows[j] for j in order]
    carried = part[carried_cols].iloc[[origin[j] for j in order]] if carried_cols else None
    df = schema.frame(rows, carried)
    for model, params, _ in predictors or []:
        for c, dtype in output_columns(model, **params).items():
            df[c] = pd.Series([predicted[c][j] for j in order], index=df.index, dtype=dtype)
    return df


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

    REGISTRY.check(backend, backend_params)  # unknown names fail here, not on the workers
    crop_extension(crop_format)  # an unknown format fails here
    models = _predictor_list(predict)
    if crop_dir is not None:
        check_writable(crop_dir, storage_options)
    spec = AlignSpec(template, size, padding)
    ddf = (
        paths
        if isinstance(paths, dd.DataFrame) and "path" in paths.columns
        else read_images(paths, storage_options=storage_options)
    )
    carried = schema.check_carried(ddf.columns)
    meta = schema.meta(ddf._meta[carried])
    for model, params, _ in models:
        for c, dtype in output_columns(model, **params).items():
            if c in meta.columns:
                raise ValueError(f"column {c!r} of {model!r} clashes with another column")
            meta[c] = pd.Series([], dtype=dtype)
    out = ddf.map_partitions(
        extract_partition,
        backend,
        dict(backend_params),
        spec,
        batch_size=batch_size,
        crop_dir=None if crop_dir is None else os.fspath(crop_dir),
        crop_root=None if crop_root is None else os.fspath(crop_root),
        keep_crops=keep_crops,
        max_pixels=max_pixels,
        plugin=REGISTRY.plugin(backend),
        storage_options=storage_options,
        settings=config.capture(),
        crop_format=crop_format,
        predictors=models or None,
        meta=meta,
        clear_divisions=True,
    )
    return remember_images(out, images_planned(ddf))


def _predictor_list(predict: Any) -> list[tuple[str, dict[str, Any], Any]]:
    """(model, params, plugin) of each predictor asked for, checked here (not on workers)."""
    if isinstance(predict, str):
        predict = [predict]
    items = predict.items() if isinstance(predict, dict) else predict
    out = []
    for item in items:
        model, params = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
        PREDICTORS.check(model, params)
        out.append((model, params, PREDICTORS.plugin(model)))
    return out


def compute(collection: Any, progress: bool = True, summarize: bool = True) -> Any:
    """Compute a Dask collection (on the active distributed client, else the local scheduler).

    For a face frame, progress counts images (img/s, ETA) and a summary line ends the run:
    images ok / no_face / error, faces, img/s (see :mod:`faceetl.pipeline.progress`).
    """
    return compute_frame(collection, progress=progress, summarize=summarize)


def common_root(paths: Iterable[str]) -> str | None:
    """The deepest folder holding every path (None when there are none, or they are on
    different filesystems)."""
    paths = list(paths)
    protocols = {storage.protocol(p) if storage.is_url(p) else None for p in paths}
    if len(protocols) > 1:
        return None
    proto = next(iter(protocols), None)
    if proto is not None:
        dirs = {posixpath.dirname("/" + storage.strip(p).lstrip("/")) for p in paths}
        root = posixpath.commonpath(sorted(dirs)).lstrip("/")
        return f"{proto}://{root}" if root else None
    dirs = {os.path.dirname(os.path.abspath(storage.local_path(p))) for p in paths}
    if not dirs:
        return None
    try:
        return os.path.commonpath(sorted(dirs))
    except ValueError:  # different drives
        return None
