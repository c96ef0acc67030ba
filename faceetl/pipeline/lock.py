"""The output's run lock: one run writes to an output at a time; a killed run's lock is taken over.

Why two runs can never both hold it (what the code below relies on):

1. The lock file comes into being only through an exclusive create that fails when the file
   exists: locally a hard link to a fully written hidden temporary (``os.link``), on object
   stores a conditional PUT (``If-None-Match: *``). The file appears whole, so no reader sees a
   half-written lock (the race of issue 21: an empty lock read as dead and replaced), and of
   runs racing to create it exactly one succeeds.
2. A lock file is removed only by its own run (``release``) or by a run taking over a dead one.
   A takeover first creates, by the same exclusive create, a marker named after the dead run
   (``lock.json.takeover-<run>``); holding it, it re-reads the lock and removes it only if it
   still has the very bytes that were judged dead. So one run at a time is between that re-read
   and the removal, and a run that saw the dead lock earlier finds a live lock in its place and
   leaves it. After the removal the taker competes for the lock by rule 1 like any other run.
   A taker killed while holding the marker leaves a marker that is itself judged dead and
   removed by the same procedure, one level up.
3. The heartbeat never replaces a lock that is not ours: locally it only touches the file's
   modification time; on S3 it rewrites with ``If-Match`` on the ETag of our own last write.

A store that cannot create a file exclusively cannot give rule 1: it is refused unless the
caller passes ``force=True`` (nobody else writes there), and then the lock is written and read
back, which two runs started together can both pass.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import storage

if TYPE_CHECKING:
    from .manifest import Output

log = logging.getLogger(__name__)

LOCK = ".faceetl/lock.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 6 * HEARTBEAT_S  # a lock from another host not refreshed for this long is dead
# An unreadable lock counts as dead only if it still reads the same after this long: an older
# faceetl created the file first and wrote it after, so a racer could catch it empty.
TORN_GRACE_S = 0.5

# memory:// lives in this process, and its create is a check then a store: serialising our
# creates with this makes them atomic for every run that can see that store.
_MEMORY_CREATE = threading.Lock()
# (filesystem class, instance token) -> whether a second conditional create there is refused
_PROBED: dict[tuple[type, Any], bool] = {}
_SAFE_KEY = re.compile(r"[0-9A-Za-z_-]{1,64}")


class ConcurrentRunError(RuntimeError):
    """Another run is writing to the same output."""


class UnsafeStoreError(ConcurrentRunError):
    """The output's store cannot create a file exclusively, so the lock cannot be atomic."""


@dataclass(frozen=True)
class _Seen:
    """A lock (or takeover marker) file as read: its bytes, their JSON, its mtime if local."""

    raw: bytes
    info: dict[str, Any] | None  # None: not a lock's JSON (torn or garbage)
    mtime: float | None = None

    @property
    def key(self) -> str:
        """The name its takeover marker carries: the run's id, or a digest of odd contents."""
        run = str((self.info or {}).get("run", ""))
        return run if _SAFE_KEY.fullmatch(run) else hashlib.sha1(self.raw).hexdigest()[:12]


class Lock:
    """The output's run lock: one run writes at a time; a killed run's lock is taken over.

    A lock is dead when its process is gone (same host) or its heartbeat is older than
    ``STALE_AFTER_S`` (another host). See the module's docstring for why two runs never both
    hold it. ``force=True`` lets a run write to a store without exclusive creates (the lock is
    then written and read back, not atomic): only for outputs no other run writes to.
    """

    def __init__(self, out: Output, *, force: bool = False) -> None:
        self.out = out
        self.force = force
        self.run = uuid.uuid4().hex[:12]
        self.info = {"run": self.run, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exclusive: bool | None = None  # whether the store creates exclusively; see _store
        self._etag: str | None = None  # S3: the ETag of our last write of the lock

    def _payload(self) -> bytes:
        return json.dumps({**self.info, "heartbeat": time.time()}).encode()

    @property
    def _local(self) -> bool:
        return not storage.is_url(self.out.url)

    # -- taking and leaving it ------------------------------------------------------------------

    def acquire(self) -> Lock:
        """Take the lock, or raise ConcurrentRunError naming the run that holds it."""
        for _ in range(3):  # one more try after a takeover, one after a release seen mid-way
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="faceetl-lock", daemon=True)
                self._thread.start()
                return self
            seen = self._settled(LOCK)
            if seen is None:  # its run released it between our create and our read
                continue
            if not _dead(seen):
                raise ConcurrentRunError(_busy_message(self.out, seen.info or {}))
            log.warning("taking over the lock of a run that stopped: %s", seen.info or seen.raw)
            self._remove_dead(LOCK, seen)
        raise ConcurrentRunError(_busy_message(self.out, self.holder() or {}))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self.holder()
        if held is not None and held.get("run") == self.run:
            self.out.remove([LOCK])

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holder(self) -> dict[str, Any] | None:
        """The lock's contents; None without a lock, {} for one that is not a lock's JSON."""
        seen = self._read(LOCK)
        return None if seen is None else (seen.info or {})

    def _create(self) -> bool:
        """Create our lock file only if there is none; False if another run's is there."""
        return self._create_file(LOCK, self._payload())

    def _remove_dead(self, rel: str, seen: _Seen, depth: int = 0) -> None:
        """Remove ``rel`` if it still is the dead ``seen``, one taker at a time (rule 2 above).

        Raises ConcurrentRunError when another live run is taking it over right now.
        """
        marker = f"{rel}.takeover-{seen.key}"
        if not self._create_file(marker, self._payload()):
            other = self._settled(marker)
            if other is not None and not _dead(other):
                raise ConcurrentRunError(_busy_message(self.out, other.info or {}))
            if other is not None:  # its taker was killed mid-takeover: the same, one level up
                if depth >= 4:
                    raise ConcurrentRunError(f"cannot clear {self.out.path(marker)}: remove it")
                self._remove_dead(marker, other, depth + 1)
            if not self._create_file(marker, self._payload()):
                again = self._settled(marker)
                raise ConcurrentRunError(_busy_message(self.out, (again and again.info) or {}))
        try:
            now = self._read(rel)
            # the same bytes (and, locally, the same mtime the heartbeat would have moved): the
            # very lock judged dead, not one created since by a run that saw the file gone
            if now is not None and (now.raw, now.mtime) == (seen.raw, seen.mtime):
                self.out.remove([rel])
        finally:
            self.out.remove([marker])

    # -- the heartbeat --------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self._refresh():
                    log.error("%s is no longer this run's lock: stopped refreshing it",
                              self.out.path(LOCK))  # fmt: skip
                    return
            except OSError as e:  # a store that did not answer: the next beat tries again
                log.warning("could not refresh the lock of %s: %s", self.out.url, e)

    def _refresh(self) -> bool:
        """Refresh our lock's heartbeat; False (and nothing written) if the lock is not ours."""
        seen = self._read(LOCK)
        if seen is None or (seen.info or {}).get("run") != self.run:
            return False
        if self._local:
            # only the mtime moves: should another run's lock have replaced ours since the read
            # above, touching it makes it look alive a little longer and never replaces it
            os.utime(storage.local_path(self.out.path(LOCK)))
            return True
        fs, path = storage.filesystem(self.out.path(LOCK), self.out.storage_options)
        if self._etag is not None:  # S3: a write that only lands over our own last write
            try:
                self._remember(fs.pipe_file(path, self._payload(), IfMatch=self._etag))
            except OSError:  # s3fs raises a failed If-Match as EINVAL: was it that?
                seen = self._read(LOCK)
                if seen is None or (seen.info or {}).get("run") != self.run:
                    return False
                raise
            return True
        # memory:// (serialised in this process), or a store run with force=True: the check
        # above and this write are two steps there
        with _MEMORY_CREATE if _memory(fs) else contextlib.nullcontext():
            seen = self._read(LOCK)
            if seen is None or (seen.info or {}).get("run") != self.run:
                return False
            fs.pipe_file(path, self._payload())
        return True

    def _remember(self, reply: Any) -> None:
        etag = reply.get("ETag") if isinstance(reply, dict) else None
        self._etag = etag if isinstance(etag, str) else None

    # -- files ----------------------------------------------------------------------------------

    def _create_file(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` whole only if it does not exist; False if it does (rule 1 above)."""
        if self._local:
            return _create_local(storage.local_path(self.out.path(rel)), data)
        fs, path = storage.filesystem(self.out.path(rel), self.out.storage_options)
        if not self._store(fs, path):  # force=True on a store without exclusive creates
            if self.out.read(rel) is not None:
                return False
            self.out.write(rel, data)
            time.sleep(0.2)  # let a racing writer land, then see whose file stands
            return self.out.read(rel) == data
        parent = posixpath.dirname(path)
        if parent and getattr(fs, "auto_mkdir", True) is False:
            fs.makedirs(parent, exist_ok=True)
        try:
            with _MEMORY_CREATE if _memory(fs) else contextlib.nullcontext():
                reply = fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        if rel == LOCK:
            self._remember(reply)
        return True

    def _store(self, fs: Any, path: str) -> bool:
        """Whether the output's store creates files exclusively (asked once, beside ``path``);
        refuses one that does not, unless ``force``."""
        if self._exclusive is None:
            probe = posixpath.join(posixpath.dirname(path), f".lock-probe-{self.run}")
            self._exclusive = _exclusive_creates(fs, probe)
            if not self._exclusive and not self.force:
                raise UnsafeStoreError(
                    f"the output {self.out.url} is on a store ({type(fs).__name__}) that cannot "
                    "create a file only if it does not exist, so faceetl cannot lock it against a "
                    "second run writing at the same time: pass force=True if no other run "
                    "writes here."
                )
            if not self._exclusive:
                log.warning("%s cannot create files exclusively: its lock is written and read "
                            "back (force=True), which two runs started together can both pass",
                            self.out.url)  # fmt: skip
        return self._exclusive

    def _read(self, rel: str) -> _Seen | None:
        mtime = None
        if self._local:
            try:
                with open(storage.local_path(self.out.path(rel)), "rb") as f:
                    raw, mtime = f.read(), os.fstat(f.fileno()).st_mtime
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        else:
            data = self.out.read(rel)
            if data is None:
                return None
            raw = bytes(data)
        try:
            info = json.loads(raw)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            return _Seen(raw, None, mtime)
        if mtime is not None:  # the local heartbeat moves the mtime only (see _refresh)
            info["heartbeat"] = max(_number(info.get("heartbeat")), mtime)
        return _Seen(raw, info, mtime)

    def _settled(self, rel: str) -> _Seen | None:
        """``rel`` as read, re-read while it is not a lock's JSON and changes (an older faceetl
        writing it after creating it): unreadable contents count only once they stay so."""
        seen = self._read(rel)
        for _ in range(4):
            if seen is None or seen.info is not None:
                return seen
            time.sleep(TORN_GRACE_S)
            again = self._read(rel)
            if again is not None and again.raw == seen.raw:
                return again
            seen = again
        return seen


def _create_local(path: str, data: bytes) -> bool:
    """Make ``path`` appear with ``data`` whole, only if it does not exist: a hard link to a
    hidden temporary written first (``link`` fails if the name exists)."""
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    with open(tmp, "xb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        # NFS may answer a retried link that did succeed with EEXIST: the temporary's link
        # count says whether the name is ours (nobody else knows the temporary's name)
        return os.stat(tmp).st_nlink > 1
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # a file system without hard links: an exclusive create, then the write; a racer that
        # catches it empty waits TORN_GRACE_S before judging it (Lock._settled)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _memory(fs: Any) -> bool:
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    while isinstance(fs, DirFileSystem):
        fs = fs.fs
    return isinstance(fs, MemoryFileSystem) and type(fs).pipe_file is MemoryFileSystem.pipe_file


def _exclusive_creates(fs: Any, probe: str) -> bool:
    """Whether ``fs.pipe_file(..., mode="create")`` is an atomic create-if-absent there.

    Only stores known to do it: S3, GCS and Azure (a conditional PUT) and memory:// (atomic
    under ``_MEMORY_CREATE``). Many fsspec stores take ``mode="create"`` and check, then write
    (two steps two runs can interleave), or ignore it. An object-store endpoint is also probed
    once: some S3-compatible servers ignore ``If-None-Match`` and overwrite.
    """
    from fsspec.implementations.dirfs import DirFileSystem

    if _memory(fs):
        return True
    inner = fs
    while isinstance(inner, DirFileSystem):
        inner = inner.fs
    # s3fs: If-None-Match; gcsfs: ifGenerationMatch=0; adlfs: overwrite=False (If-None-Match);
    # each raises FileExistsError when the object exists
    if type(inner).__module__.split(".")[0] not in ("s3fs", "gcsfs", "adlfs"):
        return False
    key = (type(inner), getattr(inner, "_fs_token", id(inner)))
    if key not in _PROBED:
        try:
            fs.pipe_file(probe, b"", mode="create")
            try:
                fs.pipe_file(probe, b"", mode="create")
                _PROBED[key] = False  # the second create landed: the precondition was ignored
            except FileExistsError:
                _PROBED[key] = True
        except (TypeError, NotImplementedError, ValueError):  # no conditional writes at all
            _PROBED[key] = False
        finally:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(probe)
    return _PROBED[key]


def _dead(seen: _Seen) -> bool:
    info = seen.info
    if info is None:  # not a lock's JSON, and it stayed so (see Lock._settled)
        return True
    if info.get("host") == socket.gethostname():
        try:
            pid = int(info["pid"])
            if pid > 0:
                os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError, OverflowError):
            pass
        return False
    return time.time() - _number(info.get("heartbeat")) > STALE_AFTER_S


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _busy_message(out: Output, held: dict[str, Any]) -> str:
    since = held.get("heartbeat")
    ok = isinstance(since, (int, float)) and 0 < since < 1e11
    when = time.strftime("%H:%M:%S", time.localtime(since)) if ok else "?"
    return (
        f"another faceetl run is writing to {out.url} (process {held.get('pid', '?')} on "
        f"{held.get('host', '?')}, alive at {when}). Wait for it to finish, or write to another "
        "output folder."
    )
