"""The output's run lock: one run writes to an output at a time; a killed run's lock is taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from .. import storage

if TYPE_CHECKING:
    from .manifest import Output

log = logging.getLogger(__name__)

LOCK = ".faceetl/lock.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 6 * HEARTBEAT_S  # a lock from another host not refreshed for this long is dead


class ConcurrentRunError(RuntimeError):
    """Another run is writing to the same output."""


class Lock:
    """The output's run lock: one run writes at a time; a killed run's lock is taken over.

    The lock file is created exclusively (locally, and on object stores with a conditional PUT;
    a store without one writes and reads back). A lock is dead when its process is gone (same
    host) or its heartbeat is older than ``STALE_AFTER_S`` (another host).
    """

    def __init__(self, out: Output) -> None:
        self.out = out
        self.run = uuid.uuid4().hex[:12]
        self.info = {"run": self.run, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps({**self.info, "heartbeat": time.time()}).encode()

    def acquire(self) -> Lock:
        held = self.holder()
        if held is not None and not _dead(held):
            raise ConcurrentRunError(_busy_message(self.out, held))
        if held is not None:
            log.warning("taking over the lock of a run that stopped: %s", held)
            self.out.remove([LOCK])
        if not self._create():
            raise ConcurrentRunError(_busy_message(self.out, self.holder() or {}))
        self._thread = threading.Thread(target=self._beat, name="faceetl-lock", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> bool:
        """Write the lock file only if there is none; False if another run's is there.

        Local: an exclusive create. Object stores: a conditional PUT (``If-None-Match: *``,
        fsspec's ``mode="create"``); where the store cannot do that, the lock is written and
        read back after a moment, and the run whose lock stands wins.
        """
        if not storage.is_url(self.out.url):
            path = storage.local_path(self.out.path(LOCK))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._payload())
            return True
        fs, path = storage.filesystem(self.out.path(LOCK), self.out.storage_options)
        try:
            fs.pipe_file(path, self._payload(), mode="create")
            return True
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError, ValueError):  # no conditional writes here
            pass
        self.out.write(LOCK, self._payload())
        time.sleep(0.2)  # let a racing writer land, then see whose lock stands
        held = self.holder()
        return held is not None and held.get("run") == self.run

    def holder(self) -> dict[str, Any] | None:
        data = self.out.read(LOCK)
        try:
            return None if data is None else json.loads(data)
        except ValueError:  # a torn write of a killed run (local temp files cannot tear)
            return {}

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            held = self.holder()
            if held is None or held.get("run") != self.run:
                return
            self.out.write(LOCK, self._payload())

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


def _dead(held: dict[str, Any]) -> bool:
    if not held:
        return True
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError):
            pass
        return False
    return time.time() - float(held.get("heartbeat", 0)) > STALE_AFTER_S


def _busy_message(out: Output, held: dict[str, Any]) -> str:
    since = held.get("heartbeat")
    when = time.strftime("%H:%M:%S", time.localtime(since)) if since else "?"
    return (
        f"another faceetl run is writing to {out.url} (process {held.get('pid', '?')} on "
        f"{held.get('host', '?')}, alive at {when}). Wait for it to finish, or write to another "
        "output folder."
    )
