"""Writing what a run keeps: the output folder checked once, crop files written atomically, and
which failures are one image's (an ``error:`` row) and which the run's (it stops)."""

from __future__ import annotations

import os
from typing import Any

from .. import storage


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


def write_crop(crop_path: str, png: bytes, out_dir: str,
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
