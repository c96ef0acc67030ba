"""How the CPU backends scale, in one run: a one-core loop, Dask on 1 and on 2 workers, and
Dask's threaded scheduler with a detector per thread against one shared detector behind a lock.

For each backend, on the same images (the shared group and single-face photos, ``--repeat``
times, so that partitions are many and small enough that imbalance does not decide):
- ``loop``: one process, one thread: decode -> detect -> align -> PNG per image;
- ``1 worker`` / ``2 workers``: ``faceetl.compute(extract_faces(...))`` on a LocalCluster of
  single-threaded worker processes (partitions sized by faceetl for the cluster);
- ``threads, per thread`` / ``threads, lock``: Dask's threaded scheduler with 2 threads, each
  thread with its own detector (what faceetl does for backends that are not thread-safe) or one
  detector shared behind a lock.
Everything is timed after a warm-up pass over the photos (models loaded, workers warm); ratios
are against the loop. ``--seconds S`` repeats each backend's photos until its loop takes about S
seconds (measured on the warm-up), so that fixed costs (start-up, the last wave of partitions) do
not decide a fast backend's figures; ``--no-threads`` leaves out the threaded-scheduler rows.

    python benchmarks/scaling.py --repeat 4
    python benchmarks/scaling.py --seconds 20 --no-threads
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS))
    ap.add_argument("--repeat", type=int, default=4, help="times each photo is processed")
    ap.add_argument("--seconds", type=float, help="repeat each backend's photos to ~this loop time")
    ap.add_argument("--no-threads", action="store_true", help="no threaded-scheduler rows")
    args = ap.parse_args()

    photos = sorted((SHARED / "images" / "group").glob("*.jpg"))
    photos += sorted((SHARED / "images" / "single").glob("*.jpg"))
    base = [str(p) for p in photos]
    paths = base * args.repeat
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    spec = AlignSpec()
    rows = []
    clients = {n: faceetl.cluster(concurrency=n, gpu=False, dashboard_address=None, quiet=True)
               for n in (1, 2)}  # fmt: skip
    for name in args.backends:
        params = BACKENDS.get(name, {})
        warm = pd.DataFrame({"path": pd.Series(base, dtype=faceetl.schema.STRING)})
        rate = len(base) / _timed(lambda: extract_partition(warm, name, params, spec))  # noqa: B023
        if args.seconds:  # every photo as often as it takes the loop ~args.seconds
            paths = base * max(1, round(args.seconds * rate / len(base)))
        part = pd.DataFrame({"path": pd.Series(paths, dtype=faceetl.schema.STRING)})
        loop = len(paths) / _timed(lambda: extract_partition(part, name, params, spec))  # noqa: B023
        row = {"backend": name, "images": len(paths), "loop img/s (1 core)": loop}
        for n, client in clients.items():
            with client.as_current():
                client.run(_load, name, params)
                faceetl.compute(  # warm: every worker's model and shapes
                    faceetl.extract_faces(base * n, backend=name, **params), progress=False
                )
                faces = faceetl.extract_faces(paths, backend=name, **params)
                secs = _timed(lambda: faceetl.compute(faces, progress=False))  # noqa: B023
            row[f"{n} worker{'s' if n > 1 else ''} img/s"] = len(paths) / secs
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
