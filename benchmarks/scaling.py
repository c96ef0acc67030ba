"""How the CPU backends scale, in one run: a one-core loop, Dask on 1 and on 2 workers, and
Dask's threaded scheduler with a detector per thread against one shared detector behind a lock.

For each backend, on the same images (the shared group and single-face photos, ``--repeat``
times, so that partitions are many and small enough that imbalance does not decide):
- ``loop``: one process pinned to one core (its own, started for it): decode -> detect -> align
  -> PNG per image (``extract_partition``; its I/O thread shares the core). Unpinned, that thread
  decodes on the second core, and the "one-core" loop used ~1.5 cores (mediapipe: 84 img/s
  unpinned against 55 pinned on 2026-12-08);
- ``2 loops side by side``: two such processes at once, one on each core: what the machine gives
  two independent copies of the loop, the ceiling for 2 workers;
- ``1 worker`` / ``2 workers``: ``faceetl.compute(extract_faces(...))`` on a LocalCluster of
  single-threaded worker processes (partitions sized by faceetl for the cluster);
- ``threads, per thread`` / ``threads, lock``: Dask's threaded scheduler with 2 threads, each
  thread with its own detector (what faceetl does for backends that are not thread-safe) or one
  detector shared behind a lock.
Everything is timed after a warm-up pass over the photos (models loaded, workers warm); ratios
are against the loop. ``--seconds S`` repeats each backend's photos until its loop takes about S
seconds (measured on the warm-up), so that fixed costs (start-up, the last wave of partitions) do
not decide a fast backend's figures; ``--no-threads`` leaves out the threaded-scheduler rows;
``--best-of 2`` runs the loop (once before the clusters, once after) and each cluster twice and
keeps the better of each.

    python benchmarks/scaling.py --repeat 4
    python benchmarks/scaling.py --seconds 20 --no-threads --best-of 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from typing import Any

import cv2
import dask
import pandas as pd
import torch

# the same photos and backend settings as the throughput benchmark beside this file
from cpu_backends import BACKENDS, SHARED  # the script's folder is on sys.path

import faceetl
from faceetl.align import AlignSpec
from faceetl.backends.base import REGISTRY
from faceetl.pipeline.extract import extract_partition


@faceetl.register_backend("locked", workers=2)
class Locked:
    """One detector of backend ``inner`` shared by every thread, one call at a time."""

    thread_safe = True  # the registry shares this one instance; the lock serialises the calls

    def __init__(self, inner: str, **params: Any) -> None:
        self.det = REGISTRY.spec(inner).factory(**params)
        self.lock = threading.Lock()

    def detect_batch(self, images):
        with self.lock:
            return self.det.detect_batch(images)

    def provenance(self) -> dict[str, Any]:
        return self.det.provenance()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _load(name: str, params: dict) -> None:
    faceetl.get_backend(name, **params)


def _frame(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": pd.Series(paths, dtype=faceetl.schema.STRING)})


def _loop_child(conn, core: int, name: str, params: dict, base: list[str], seconds: float | None,
                repeat: int, start: Any) -> None:  # fmt: skip
    """In a process of its own pinned to ``core`` (before any thread starts, so its I/O thread
    is pinned too): warm the backend, size the run (``seconds`` of loop work, else ``repeat``
    times the photos), wait for ``start``, time the loop; send (repeat, img/s)."""
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    spec = AlignSpec()
    extract_partition(_frame(base), name, params, spec)  # the model loaded, shapes warm
    if seconds:  # every photo as often as it takes this loop ~seconds
        rate = len(base) / _timed(lambda: extract_partition(_frame(base), name, params, spec))
        repeat = max(1, round(seconds * rate / len(base)))
    part = _frame(base * repeat)
    start.wait()
    conn.send((repeat, len(part) / _timed(lambda: extract_partition(part, name, params, spec))))


def pinned_loops(cores: list[int], name: str, params: dict, base: list[str],
                 seconds: float | None, repeat: int) -> list[tuple[int, float]]:  # fmt: skip
    """The one-core loop in a fresh process per core of ``cores``, all timed at once:
    (repeat, img/s) each."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(cores))
    pipes = [ctx.Pipe(duplex=False) for _ in cores]
    procs = [
        ctx.Process(target=_loop_child, args=(w, c, name, params, base, seconds, repeat, start))
        for (_, w), c in zip(pipes, cores, strict=True)
    ]
    for p in procs:
        p.start()
    try:
        return [r.recv() for r, _ in pipes]
    finally:
        for p in procs:
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS))
    ap.add_argument("--repeat", type=int, default=4, help="times each photo is processed")
    ap.add_argument("--seconds", type=float, help="repeat each backend's photos to ~this loop time")
    ap.add_argument("--no-threads", action="store_true", help="no threaded-scheduler rows")
    ap.add_argument("--best-of", type=int, default=1,
                    help="runs of the loop and of each cluster, the best kept (this VM's speed "
                         "moves by 10-20%% between runs of the same work)")  # fmt: skip
    args = ap.parse_args()

    photos = sorted((SHARED / "images" / "group").glob("*.jpg"))
    photos += sorted((SHARED / "images" / "single").glob("*.jpg"))
    base = [str(p) for p in photos]
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows = []
    clients = {n: faceetl.cluster(concurrency=n, gpu=False, dashboard_address=None, quiet=True)
               for n in (1, 2)}  # fmt: skip
    cores = sorted(os.sched_getaffinity(0))
    for name in args.backends:
        params = BACKENDS.get(name, {})
        [(repeat, loop)] = pinned_loops(cores[:1], name, params, base, args.seconds, args.repeat)
        paths = base * repeat
        row = {"backend": name, "images": len(paths), "loop img/s (1 core)": loop}
        if len(cores) > 1:  # what two independent loops get from this machine at once
            both = pinned_loops(cores[:2], name, params, base, None, repeat)
            row["2 loops side by side img/s"] = sum(rate for _, rate in both)
        for n, client in clients.items():
            with client.as_current():
                client.run(_load, name, params)
                faceetl.compute(  # warm: every worker's model and shapes
                    faceetl.extract_faces(base * n, backend=name, **params), progress=False
                )
                best = 0.0
                for _ in range(args.best_of):
                    faces = faceetl.extract_faces(paths, backend=name, **params)
                    secs = _timed(lambda: faceetl.compute(faces, progress=False))  # noqa: B023
                    best = max(best, len(paths) / secs)
            row[f"{n} worker{'s' if n > 1 else ''} img/s"] = best
        if args.best_of > 1:  # the loop again, after the cluster's runs: the better of the two
            [(_, again)] = pinned_loops(cores[:1], name, params, base, None, repeat)
            row["loop img/s (1 core)"] = loop = max(loop, again)
        threads = () if args.no_threads else (
            ("threads, per thread", name, params),
            ("threads, lock", "locked", {"inner": name, **params}),
        )  # fmt: skip
        for label, backend, kw in threads:
            with dask.config.set(scheduler="threads", num_workers=2):
                faceetl.compute(faceetl.extract_faces(paths, backend=backend, **kw), progress=False)
                faces = faceetl.extract_faces(paths, backend=backend, **kw)
                secs = _timed(lambda: faceetl.compute(faces, progress=False))  # noqa: B023
            row[f"{label} img/s"] = len(paths) / secs
        for k in [k for k in row if k.endswith("img/s") and not k.startswith("loop")]:
            row[k.replace("img/s", "x loop")] = row[k] / loop
        rows.append(row)
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    for client in clients.values():
        client.close()
    pd.set_option("display.width", 250)
    print(f"\nimages per measurement: the row 'images'; {os.cpu_count()} cores")
    print(pd.DataFrame(rows).set_index("backend").T.round(2).to_string())


if __name__ == "__main__":
    main()
