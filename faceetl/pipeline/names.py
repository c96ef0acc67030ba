"""Where an input's crops go: names that always fit and never collide, whatever the input names.

A crop of image ``photos/a/b.jpg`` (below the crops' root ``photos``) is
``a/b.jpg.<hash>.face<k>.<ext>``: the input's folders and file name, mirrored, then ``<hash>``,
the first 12 hex digits of the sha256 of the whole input path (as the frame holds it), so two
inputs never share a crop, even when their names differ only by ``..``, ``.``, ``//``, escapes or
one name being another's prefix, and the same input gets the same name in every run.

Names are cut to fit, never refused: a folder or file name longer than the filesystem allows
(255 bytes, less the room for the atomic write's temporary, see
:func:`faceetl.storage.write_atomic`) keeps its start and end around a ``…``; where the whole path
would pass the local path limit (4096 bytes) or an object store's key limit (1,024 bytes on S3,
GCS and Azure), the outermost mirrored folders are left out. Pure functions of the input path,
the root and the output location, so a recovering run can tell a crop name a note may name.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import re
from pathlib import Path

from .. import storage
from ..images import CROP_FORMATS

HASH_HEX = 12
NAME_MAX = 255  # bytes in one file or folder name (ext4, XFS, APFS, NTFS: 255)
PATH_MAX = 4096  # bytes in a local path (Linux)
KEY_MAX = 1024  # bytes in an object's key (S3, GCS; Azure blob names: 1,024 characters)
TEMP_ROOM = len(".") + len(".tmp-") + 8  # write_atomic's hidden temporary beside the file
FACE_ROOM = 6 + len(".") + 4  # the face number (up to 6 digits), '.', the extension
ELLIPSIS = "…"
#: the crop name prefix: anything, the path's hash, "face" (the face number and extension follow)
PREFIX_RE = re.compile(rf"(?s).+\.[0-9a-f]{{{HASH_HEX}}}\.face")


def path_hash(path: str) -> str:
    """The short hash of an input path that makes its crop names unique."""
    return hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]


def fit(name: str, limit: int) -> str:
    """``name`` if it takes at most ``limit`` UTF-8 bytes, else its start and end around '…'."""
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return name
    keep = max(2, limit - len(ELLIPSIS.encode()))
    head, tail = raw[: keep * 2 // 3], raw[len(raw) - (keep - keep * 2 // 3) :]
    # cut at character boundaries: a split character is dropped, so the result stays <= limit
    return (
        head.decode("utf-8", "ignore") + ELLIPSIS + tail.decode("utf-8", "ignore")
    )


def _nbytes(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def mirrored_parts(path: str, root: str | None) -> list[str]:
    """The folders and file name of ``path`` relative to ``root`` (or its whole path outside
    it), without '', '.' or '..' parts."""
    if storage.is_url(path):
        key = storage.strip(path).lstrip("/")
        rel = None
        if root and storage.protocol(root) == storage.protocol(path):
            r = storage.strip(root).strip("/")
            if key.startswith(r + "/"):
                rel = key[len(r) + 1 :]
        return [p for p in (rel or key).split("/") if p not in ("", ".", "..")]
    ap = os.path.abspath(path)
    rel = None
    if root:
        r = os.path.relpath(ap, os.path.abspath(root))
        if not r.startswith(os.pardir + os.sep) and r != os.pardir and not os.path.isabs(r):
            rel = r
    if rel is None:
        drive, tail = os.path.splitdrive(ap)
        rel = os.path.join(drive.replace(":", ""), tail.lstrip(os.sep))
    return [p for p in Path(rel).parts if p not in ("", os.curdir, os.pardir, os.sep)]


@functools.lru_cache(maxsize=64)
def limits(out_dir: str) -> tuple[int, int]:
    """(bytes per name, bytes for a crop's path relative to ``out_dir``, face number and
    extension excluded) where crops are written under ``out_dir``."""
    if storage.is_url(out_dir):
        key = storage.strip(out_dir).strip("/").partition("/")[2]  # the bucket is not in the key
        return NAME_MAX, KEY_MAX - _nbytes(key) - 1 - FACE_ROOM
    folder = os.path.abspath(storage.local_path(out_dir))
    name_max, path_max = NAME_MAX, PATH_MAX
    probe = folder
    while probe and not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    for key, default in (("PC_NAME_MAX", NAME_MAX), ("PC_PATH_MAX", PATH_MAX)):
        try:
            value = os.pathconf(probe or "/", key)
        except (OSError, ValueError, AttributeError):  # not on this OS or filesystem
            value = default
        if key == "PC_NAME_MAX":
            name_max = min(NAME_MAX, value or default)
        else:
            path_max = min(PATH_MAX, value or default)
    return name_max, path_max - 1 - _nbytes(folder) - 1 - TEMP_ROOM - FACE_ROOM


def crop_stem(path: str, root: str | None, out_dir: str | None = None) -> str:
    """The crops of ``path`` relative to the output, without face number and extension:
    ``<folders>/<name>.<hash>.face`` (crop ``k`` is this + ``f"{k}.{ext}"``), cut to fit the
    limits of ``out_dir`` (the default ones without it)."""
    name_max, budget = limits(out_dir) if out_dir is not None else (NAME_MAX, KEY_MAX - FACE_ROOM)
    parts = mirrored_parts(path, root)
    suffix = f".{path_hash(path)}.face"
    base = parts[-1] if parts else ""
    room = name_max - TEMP_ROOM - FACE_ROOM - len(suffix)
    name = fit(base, room) + suffix if base else suffix.lstrip(".")
    folders = [
        p if _nbytes(p) <= name_max else f"{fit(p, name_max - HASH_HEX - 1)}.{path_hash(p)}"
        for p in parts[:-1]
    ]
    sep = "/" if out_dir is not None and storage.is_url(out_dir) else os.sep
    while folders and _nbytes(sep.join([*folders, name])) > budget:
        folders.pop(0)  # the outermost folders go first: the name alone is unique
    if _nbytes(name) > budget and base:  # an output folder so deep that only a short name fits
        name = fit(base, max(1, budget - len(suffix))) + suffix
    return sep.join([*folders, name])


def crop_relpath(path: str, root: str | None, face: int, ext: str = "png",
                 out_dir: str | None = None) -> str:  # fmt: skip
    """Where crop ``face`` of ``path`` goes, relative to the output folder (see the module)."""
    return f"{crop_stem(path, root, out_dir)}{face}.{ext}"


def safe_join(out_dir: str, rel: str) -> str:
    """``rel`` (from :func:`crop_stem`: no '..' parts) below ``out_dir``."""
    if storage.is_url(out_dir):
        return storage.join(out_dir, rel.replace(os.sep, "/"))
    out = os.path.abspath(storage.local_path(out_dir))
    full = os.path.abspath(os.path.join(out, rel))
    if os.path.commonpath([out, full]) != out:  # cannot happen after crop_stem: kept as a guard
        raise ValueError(f"crop path {rel!r} leaves the output {out}")
    return full


def is_crop_stem(rel: str) -> bool:
    """True when ``rel`` has the form :func:`crop_stem` gives: relative, no '', '.' or '..'
    part, the last one ending in ``.<hash>.face``."""
    parts = rel.replace(os.sep, "/").split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        return False
    return PREFIX_RE.fullmatch(parts[-1]) is not None or re.fullmatch(
        rf"[0-9a-f]{{{HASH_HEX}}}\.face", parts[-1]
    ) is not None


def crop_file_re(stem_name: str) -> re.Pattern[str]:
    """The crops (``<stem>7.png``) and their write temporaries (``.<stem>7.png.tmp-1a2b3c4d``)
    of one input in its folder, ``stem_name`` being the last part of its :func:`crop_stem`."""
    s = re.escape(stem_name)
    ext = r"\d+\.(?:" + "|".join(re.escape(e) for e, _, _ in CROP_FORMATS.values()) + ")"
    return re.compile(rf"{s}{ext}|\.{s}{ext}\.tmp-[0-9a-f]{{8}}")


def split_stem(stem_url: str) -> tuple[str, str]:
    """(folder, last part) of a crop stem joined to its output."""
    if storage.is_url(stem_url):
        folder, name = posixpath.split(stem_url)
        return folder, name
    return os.path.split(stem_url)
