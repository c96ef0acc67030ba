"""Where bytes live: a local path or any fsspec URL (``s3://``, ``gs://``, ``az://``,
``memory://``, ``file://``), with ``storage_options`` as Dask's own readers take them.

Local paths keep the local code path (no fsspec round trip, names that are not UTF-8, FIFOs
refused unopened: see :mod:`faceetl.images`); URLs go through the filesystem fsspec picks for
their protocol, so fsspec's environment configuration (``FSSPEC_S3_ENDPOINT_URL`` and friends)
applies without code here.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

LOCAL_PROTOCOLS = ("file", "local")


def protocol(path: str | os.PathLike) -> str | None:
    """The URL scheme of ``path`` (``"s3"``), or None for a plain local path."""
    s = os.fspath(path)
    head, sep, _ = s.partition("://")
    if not sep or not head or "/" in head or os.sep in head:
        return None
    return head.split("::")[-1].lower()


def is_url(path: str | os.PathLike) -> bool:
    """True for a URL that is not on the local disk (``file://`` counts as local)."""
    p = protocol(path)
    return p is not None and p not in LOCAL_PROTOCOLS


def local_path(path: str | os.PathLike) -> str:
    """A local path for ``path`` (a plain path, or a ``file://`` URL)."""
    s = os.fspath(path)
    if protocol(s) in LOCAL_PROTOCOLS:
        return s.split("://", 1)[1]
    return s


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it (fsspec caches instances)."""
    from fsspec.core import url_to_fs

    return url_to_fs(url, **(storage_options or {}))


def join(base: str, *parts: str) -> str:
    """``base`` joined with relative ``parts`` ('/' for URLs, the OS separator locally)."""
    if is_url(base):
        return posixpath.join(base.rstrip("/"), *[p.replace(os.sep, "/") for p in parts])
    return os.path.join(local_path(base), *parts)


def strip(path: str) -> str:
    """``path`` without its URL scheme, as its filesystem spells it (``s3://b/k`` -> ``b/k``)."""
    proto = protocol(path)
    if proto is None:
        return path
    from fsspec import get_filesystem_class

    return get_filesystem_class(proto)._strip_protocol(path)


def under(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or inside it (same scheme; local paths made absolute)."""
    if is_url(path) != is_url(folder):
        return False
    if is_url(path):
        if protocol(path) != protocol(folder):
            return False
        p, f = strip(path).rstrip("/"), strip(folder).rstrip("/")
        return p == f or p.startswith(f + "/")
    p, f = os.path.abspath(local_path(path)), os.path.abspath(local_path(folder))
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of the file at ``url`` (raises FileNotFoundError / IsADirectoryError / OSError)."""
    if not is_url(url):
        with open(local_path(url), "rb") as f:
            return f.read()
    data = read_many([url], storage_options)[0]
    if isinstance(data, Exception):
        raise data
    return data


def read_many(
    urls: list[str], storage_options: dict[str, Any] | None = None
) -> list[bytes | Exception]:
    """The bytes of each of ``urls``, fetched together: an async filesystem
    (s3fs, gcsfs, adlfs, http) sends the requests at once (``fs.cat_ranges``), so a batch waits
    about one round trip, not one per file. Each failure is in its place: FileNotFoundError,
    IsADirectoryError (a folder, a prefix on an object store: asked only after a miss) or
    what the filesystem raised."""
    out: list[bytes | Exception] = [b""] * len(urls)
    groups: dict[int, tuple[Any, list[int], list[str]]] = {}  # one request per filesystem
    for k, url in enumerate(urls):
        fs, path = filesystem(url, storage_options)  # chained URLs too (``simplecache::s3://``)
        _, members, paths = groups.setdefault(id(fs), (fs, [], []))
        members.append(k)
        paths.append(path)
    for fs, members, paths in groups.values():
        try:
            got = fs.cat_ranges(paths, None, None, on_error="return")
        except Exception as e:  # the filesystem itself failed (credentials, endpoint): each
            got = [e] * len(paths)
        for k, path, data in zip(members, paths, got, strict=True):
            if isinstance(data, FileNotFoundError):
                try:
                    data = IsADirectoryError(urls[k]) if fs.isdir(path) else data
                except Exception as e:  # the folder test failed too: that is the error
                    data = e
            out[k] = data
    return out


def write_atomic(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` to ``url`` so that a reader sees the whole file or none of it.

    Locally: a hidden temporary file beside it, then a rename. On object stores one PUT is
    already all-or-nothing, so the bytes are put directly (a rename there would be a copy).
    """
    if not is_url(url):
        with open_atomic(url) as f:  # the same hidden temporary and rename
            f.write(data)
        return
    fs, path = filesystem(url, storage_options)
    parent = posixpath.dirname(path)
    if parent and getattr(fs, "auto_mkdir", True) is False:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)


@contextlib.contextmanager
def open_atomic(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[BinaryIO]:
    """A file to stream into that appears at ``url`` whole when the block ends, or not at all.

    For files too large to hold as one ``bytes`` (:func:`write_atomic` takes those). Locally: a
    hidden temporary beside it, renamed at the end. On URLs: fsspec's deferred commit
    (``autocommit=False``): on S3 one PUT or a multipart upload completed at the end and
    aborted on an error, so no reader ever sees part of it.
    """
    if not is_url(url):
        path = local_path(url)
        folder, name = os.path.split(path)
        os.makedirs(folder or ".", exist_ok=True)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return
    fs, path = filesystem(url, storage_options)
    parent = posixpath.dirname(path)
    if parent and getattr(fs, "auto_mkdir", True) is False:
        fs.makedirs(parent, exist_ok=True)
    f = fs.open(path, "wb", autocommit=False)
    try:
        yield f
        f.close()
        f.commit()
    except BaseException:
        f.discard()
        raise


def remove(urls: Sequence[str], storage_options: dict[str, Any] | None = None) -> None:
    """Delete files (missing ones are fine)."""
    for url in urls:
        try:
            if not is_url(url):
                os.remove(local_path(url))
            else:
                fs, path = filesystem(url, storage_options)
                fs.rm_file(path)
        except FileNotFoundError:
            pass


def list_files(
    source: str,
    extensions: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """The files a folder (recursively) or a glob names, through the URL's filesystem.

    A name that is neither a folder nor a glob is returned as it is (so that a missing file
    gets its error row). ``extensions`` keeps names ending so (case-insensitive).
    """
    fs, path = filesystem(source, storage_options)
    if fs.isdir(path):
        found = sorted(fs.find(path))
    elif _glob.has_magic(path):
        found = sorted(p for p in fs.glob(path) if not fs.isdir(p))
    else:
        return [source]
    # s3fs and its kin keep every listed object's details (~1.8 KB each) in the filesystem's
    # listings cache, which lives as long as the (cached) filesystem: the names are all we keep
    fs.invalidate_cache(path)
    if extensions is not None:
        exts = tuple(e.lower() for e in extensions)
        found = [p for p in found if p.lower().endswith(exts)]
    return [fs.unstrip_protocol(p) for p in found]
