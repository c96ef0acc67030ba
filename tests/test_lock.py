"""The output's run lock (issue 21, item 3): never two holders, raced by real processes.

The races run two long-lived helper processes (started once per test, faceetl imported once)
that take the lock of a fresh folder at one shared instant, trial after trial. Both keep what
they got until both have answered, so two answers of "held" mean two runs held it at once.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem

import faceetl
from faceetl.pipeline.lock import LOCK, ConcurrentRunError, Lock, UnsafeStoreError
from faceetl.pipeline.manifest import Output
from helpers import IMAGES


def _env() -> dict[str, str]:
    """The helpers' environment: this one (FACEETL_HOME set by the session fixture), importing
    the faceetl this test imported (a checkout other than the installed one too)."""
    here = str(Path(faceetl.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}


LOCKER = r"""
import json, sys, time
from faceetl.pipeline.lock import ConcurrentRunError, Lock
from faceetl.pipeline.manifest import Output

held = None
for line in sys.stdin:
    order = json.loads(line)
    if order["do"] == "take":
        while time.time() < order["at"] - 0.003:  # sleep close to the instant, then spin to it
            time.sleep(0.001)
        while time.time() < order["at"]:
            pass
        lock = Lock(Output(order["url"], order["so"]))
        try:
            held = lock.acquire()
            answer = {"held": lock.run}
        except ConcurrentRunError as e:
            answer = {"refused": str(e)}
        except Exception as e:  # reported to the test, which fails on it
            answer = {"error": repr(e)}
    else:  # "release"
        if held is not None:
            held.release()
            held = None
        answer = {"released": True}
    print(json.dumps(answer), flush=True)
"""


class Lockers:
    """Two helper processes that take a lock at the same instant on command."""

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self.so = storage_options
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", LOCKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=_env(),
            )  # fmt: skip
            for _ in range(2)
        ]

    def _ask(self, proc: subprocess.Popen, order: dict[str, Any]) -> None:
        proc.stdin.write(json.dumps(order) + "\n")
        proc.stdin.flush()

    def _answer(self, proc: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        assert ready, "a helper did not answer"
        line = proc.stdout.readline()
        assert line, f"a helper stopped (rc {proc.poll()})"
        return json.loads(line)

    def race(self, url: str, lock_file: Any, skew_s: float = 0.0, lead_s: float = 0.03) -> int:
        """Both take ``url``'s lock at one instant (the second ``skew_s`` later); how many held
        it (checked against the lock file, read by ``lock_file()``, while they still hold it),
        then both release."""
        at = time.time() + lead_s
        for p, offset in zip(self.procs, (0.0, skew_s), strict=True):
            self._ask(p, {"do": "take", "url": url, "so": self.so, "at": at + offset})
        answers = [self._answer(p) for p in self.procs]
        holders = _judge(answers, lock_file)
        for p in self.procs:
            self._ask(p, {"do": "release"})
        for p in self.procs:
            self._answer(p)
        return holders

    def warm_up(self, url: str) -> None:
        """Each takes and leaves a lock alone once (imports, a store's first requests)."""
        for k in range(2):
            at = time.time()
            self._ask(self.procs[k], {"do": "take", "url": f"{url}-{k}", "so": self.so, "at": at})
            assert "held" in self._answer(self.procs[k])
            self._ask(self.procs[k], {"do": "release"})
            self._answer(self.procs[k])

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
            p.wait(30)


@pytest.fixture()
def lockers():
    made: list[Lockers] = []

    def make(storage_options: dict[str, Any] | None = None) -> Lockers:
        made.append(Lockers(storage_options))
        return made[-1]

    yield make
    for one in made:
        one.close()


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _plant(folder: Path, info: dict[str, Any] | bytes) -> Path:
    state = folder / ".faceetl"
    state.mkdir(parents=True, exist_ok=True)
    path = state / "lock.json"
    path.write_bytes(info if isinstance(info, bytes) else json.dumps(info).encode())
    return path


def _skew(trial: int) -> float:
    """The second helper's start, swept over -100..+100 us across trials: the interleavings of
    the two acquires are covered by design, not left to scheduling noise."""
    return ((trial % 21) - 10) * 10e-6


def _judge(answers: list[dict[str, Any]], lock_file: Any) -> int:
    """How many helpers held the lock; fails on a helper's error."""
    for a in answers:
        assert "held" in a or "refused" in a, a
    holders = [a["held"] for a in answers if "held" in a]
    if len(holders) == 1:  # the file names the one holder
        assert json.loads(lock_file())["run"] == holders[0]
    return len(holders)


# -- races between processes ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_racing_for_a_lock_never_both_hold_it(tmp_path, lockers):
    """100 trials: exactly one holds it each time (the other reads a whole, live lock: it never
    sees a half-written one and takes it for dead)."""
    helpers = lockers()
    helpers.warm_up(str(tmp_path / "warm"))
    counts = []
    for i in range(100):
        out = tmp_path / f"t{i:03d}"
        counts.append(helpers.race(str(out), (out / LOCK).read_bytes, _skew(i)))
    assert counts.count(2) == 0, f"two holders in {counts.count(2)} of 100 trials"
    assert counts == [1] * 100  # one's create always succeeds and it keeps the lock
    assert not list(tmp_path.rglob(".lock.json.tmp-*"))  # no temporaries left beside the locks


@pytest.mark.slow
def test_two_processes_racing_to_take_over_a_dead_lock_never_both_hold_it(tmp_path, lockers):
    """100 trials on a lock whose process has exited: one takes it over, the other is refused
    (both saw it dead; the takeover marker lets one remove it, and only while it is the dead
    one)."""
    helpers = lockers()
    helpers.warm_up(str(tmp_path / "warm"))
    dead = {"run": "deadrun0000", "host": socket.gethostname(), "pid": _dead_pid(),
            "heartbeat": time.time()}  # fmt: skip
    counts = []
    for i in range(100):
        out = tmp_path / f"t{i:03d}"
        _plant(out, dead)
        counts.append(helpers.race(str(out), (out / LOCK).read_bytes, _skew(i)))
        assert not list((out / ".faceetl").glob("lock.json.takeover-*"))  # markers removed
    assert counts.count(2) == 0, f"two holders in {counts.count(2)} of 100 trials"
    assert counts == [1] * 100


@pytest.mark.slow
def test_two_processes_racing_on_s3_never_both_hold_it(s3, lockers):
    """20 trials on moto's S3 server: the conditional PUT (If-None-Match) lets one create the
    lock; 10 more on a dead lock from another host (a heartbeat older than STALE_AFTER_S)."""
    fs, so = s3["fs"], s3["storage_options"]
    helpers = lockers(so)
    helpers.warm_up(f"{s3['bucket']}/warm")
    counts = []
    for i in range(20):
        url = f"{s3['bucket']}/t{i:02d}"
        counts.append(helpers.race(url, lambda u=url: fs.cat_file(f"{u}/{LOCK}")))
    stale = {"run": "deadrun0000", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}
    for i in range(10):
        url = f"{s3['bucket']}/d{i:02d}"
        fs.pipe_file(f"{url}/{LOCK}", json.dumps(stale).encode())
        counts.append(helpers.race(url, lambda u=url: fs.cat_file(f"{u}/{LOCK}")))
    assert counts == [1] * 30, counts


# -- the torn lock, dead markers, stores ----------------------------------------------------------


def test_an_empty_lock_whose_run_lives_is_not_taken_over(tmp_path):
    """The lock an older faceetl created and then wrote: caught empty, it is not judged dead
    (before issue 21 it was removed and replaced, and both runs went on)."""
    out = tmp_path / "out"
    path = _plant(out, b"")
    live = {"run": "liverun0000", "host": socket.gethostname(), "pid": os.getpid(),
            "heartbeat": time.time()}  # fmt: skip
    writer = threading.Timer(0.1, lambda: path.write_bytes(json.dumps(live).encode()))
    writer.start()
    try:
        with pytest.raises(ConcurrentRunError, match="another faceetl run"):
            Lock(Output(str(out))).acquire()
    finally:
        writer.join()
    assert json.loads(path.read_bytes())["run"] == "liverun0000"


def test_a_lock_that_stays_garbage_is_taken_over(tmp_path):
    out = tmp_path / "out"
    path = _plant(out, b'{"run": "torn')
    with Lock(Output(str(out))) as lock:
        assert json.loads(path.read_bytes())["run"] == lock.run
    assert not path.exists()


def test_a_takeover_marker_of_a_killed_taker_is_cleared(tmp_path):
    """A run killed while taking over leaves its marker: the next one clears it, then the lock."""
    out = tmp_path / "out"
    dead = _dead_pid()
    path = _plant(out, {"run": "deadrun0000", "host": socket.gethostname(), "pid": dead})
    marker = path.with_name("lock.json.takeover-deadrun0000")
    marker.write_text(json.dumps({"run": "takerrun000", "host": socket.gethostname(), "pid": dead}))
    with Lock(Output(str(out))) as lock:
        assert json.loads(path.read_bytes())["run"] == lock.run
        assert sorted(p.name for p in path.parent.iterdir()) == ["lock.json"]


def test_a_live_takeover_refuses_a_second_taker(tmp_path):
    out = tmp_path / "out"
    path = _plant(out, {"run": "deadrun0000", "host": socket.gethostname(), "pid": _dead_pid()})
    marker = path.with_name("lock.json.takeover-deadrun0000")
    marker.write_text(json.dumps({"run": "takerrun000", "host": socket.gethostname(),
                                  "pid": os.getpid(), "heartbeat": time.time()}))  # fmt: skip
    with pytest.raises(ConcurrentRunError, match="another faceetl run"):
        Lock(Output(str(out))).acquire()
    assert json.loads(path.read_bytes())["run"] == "deadrun0000" and marker.exists()


def test_the_heartbeat_refreshes_only_its_own_lock(tmp_path, s3):
    """Locally it moves the lock's mtime; on S3 it rewrites with If-Match. Once another run's
    lock stands in its place, it writes nothing."""
    out = tmp_path / "out"
    with Lock(Output(str(out))) as lock:
        path = out / LOCK
        os.utime(path, (1, 1))
        assert lock._refresh() and path.stat().st_mtime > 1e9
        other = {"run": "otherrun000", "host": socket.gethostname(), "pid": os.getpid()}
        path.write_text(json.dumps(other))
        os.utime(path, (1, 1))
        assert not lock._refresh() and path.stat().st_mtime == 1
    fs, url = s3["fs"], f"{s3['bucket']}/out"
    with Lock(Output(url, s3["storage_options"])) as lock:
        etag = lock._etag
        assert etag and lock._refresh() and lock._etag not in (None, etag)
        fs.pipe_file(f"{url}/{LOCK}", json.dumps(other).encode())  # the lock taken from us
        assert not lock._refresh()
        assert json.loads(fs.cat_file(f"{url}/{LOCK}"))["run"] == "otherrun000"
        assert lock.holder()["run"] == "otherrun000"  # and release leaves it


def test_memory_outputs_lock_without_force():
    """memory:// creates exclusively (``mode="create"``): nothing to force there."""
    out = Output(f"memory://faceetl-lock-{uuid.uuid4().hex[:10]}/out")
    with Lock(out) as lock, pytest.raises(ConcurrentRunError, match="another faceetl run"):
        assert lock.holder()["run"] == lock.run
        Lock(Output(out.url)).acquire()
    assert Lock(out).holder() is None


class PlainStore(MemoryFileSystem):
    """A store whose ``mode="create"`` is fsspec's generic check-then-write (as on many stores):
    not atomic."""

    protocol = "faceetlplain"
    store: dict[str, Any] = {}  # noqa: RUF012 - the class's own store, as MemoryFileSystem's
    pseudo_dirs = [""]  # noqa: RUF012
    pipe_file = AbstractFileSystem.pipe_file

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix(f"{cls.protocol}://"))


@pytest.fixture()
def plain_store():
    fsspec.register_implementation(PlainStore.protocol, PlainStore, clobber=True)
    root = f"{PlainStore.protocol}://faceetl-{uuid.uuid4().hex[:10]}"
    yield root
    PlainStore.store.clear()
    PlainStore.pseudo_dirs[:] = [""]


def test_a_store_without_exclusive_creates_needs_force(plain_store, tmp_path):
    out = Output(f"{plain_store}/out")
    with pytest.raises(UnsafeStoreError, match=r"PlainStore.*pass force=True if no other run"):
        Lock(out).acquire()
    assert Lock(out).holder() is None  # refused before writing anything
    with Lock(out, force=True) as lock:
        assert lock.holder()["run"] == lock.run
        with pytest.raises(ConcurrentRunError, match="another faceetl run"):
            Lock(out, force=True).acquire()
    assert Lock(out).holder() is None
    # Pife.extract passes force on
    import dask

    photo = tmp_path / "a.jpg"
    shutil.copy(sorted((IMAGES / "single").glob("*.jpg"))[0], photo)
    pife = faceetl.Pife("opencv", 1, progress=False)
    with pytest.raises(UnsafeStoreError, match="force=True"):
        pife.extract([str(photo)], f"{plain_store}/run")
    with dask.config.set(scheduler="sync"):
        faces = pife.extract([str(photo)], f"{plain_store}/run", force=True).compute()
    assert list(faces["path"].unique()) == [str(photo)]


# -- two real runs started together ---------------------------------------------------------------

RUNNER = r"""
import json, sys, time
import dask, faceetl
from faceetl.pife import ConcurrentRunError

paths = sys.argv[1].split(",")
print("READY", flush=True)
for line in sys.stdin:
    order = json.loads(line)
    while time.time() < order["at"]:
        time.sleep(0.0005)
    with dask.config.set(scheduler="threads", num_workers=1):
        pife = faceetl.Pife("opencv", 1, progress=False, partition_size=1)
        try:
            answer = {"done": len(pife.extract(paths, order["out"]))}
        except ConcurrentRunError as e:
            answer = {"refused": str(e)}
    print(json.dumps(answer), flush=True)
"""


@pytest.mark.slow
def test_two_runs_started_together_never_write_rows_twice(tmp_path):
    """Two Pife runs on one output at one instant, 3 trials: one finishes, the other is refused
    (or runs after it and finds nothing to do); no (path, face) row is ever written twice."""
    src = tmp_path / "in"
    src.mkdir()
    paths = []
    for p in sorted((IMAGES / "single").glob("*.jpg"))[:3]:
        shutil.copy(p, src / p.name)
        paths.append(str(src / p.name))
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, ",".join(paths)], cwd=tmp_path,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "READY"
        for trial in range(3):
            out = tmp_path / f"out{trial}"
            at = time.time() + 0.05
            for p in procs:
                p.stdin.write(json.dumps({"out": str(out), "at": at}) + "\n")
                p.stdin.flush()
            answers = [json.loads(p.stdout.readline()) for p in procs]
            assert any("done" in a for a in answers), answers
            for a in answers:
                assert "done" in a or "another faceetl run" in a.get("refused", ""), a
            final = faceetl.read_faces(out / "faces.parquet")
            assert set(final["path"]) == set(paths)
            assert not final.duplicated(["path", "face"]).any(), answers
            assert not (out / LOCK).exists()
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(60)
