"""The pipeline's own share of each image's time, per backend at its defaults, on one core.

For each CPU backend, in one process pinned to one core (torch and OpenCV on one thread), on the
same photos (the shared group and single-face photos, repeated until the detector alone takes
about ``--seconds``):
- ``end to end``: ``extract_partition`` (faceetl's partition task: read, decode, detect, align,
  PNG crops, rows), per image;
- ``decode``: ``faceetl.images.decode_image`` of the same bytes alone;
- ``detect``: the backend's ``detect_batch`` alone on the decoded images, in the pipeline's
  batches;
- ``own``: end to end less decode and detect: what faceetl adds (reading, alignment, crops,
  rows, the batching and threads). Goal: under 10% of detect.
Each of the three is the better of two runs. The stage times the pipeline records
(``stage_seconds``, the first end-to-end run) are printed beside them; on one core the I/O
threads' decode overlaps the detector's calls, so the stages add up to more than the wall time.

    FACEETL_HOME=... FACEETL_OFFLINE=1 python benchmarks/overhead.py --seconds 20
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import pandas as pd
import torch
from cpu_backends import SHARED  # the script's folder is on sys.path

import faceetl
from faceetl.align import AlignSpec
from faceetl.images import decode_image, read_image_bytes
from faceetl.pipeline.extract import extract_partition
from faceetl.pipeline.job import Job
from faceetl.pipeline.stages import stage_seconds

BACKENDS = ["opencv", "dlib", "mediapipe", "mtcnn", "retinaface", "ssd"]


def detect_all(det, images: list, batch: int) -> float:
    """Seconds ``det`` takes over ``images`` in the pipeline's batches."""
    t = time.perf_counter()
    for i in range(0, len(images), batch):
        det.detect_batch(images[i : i + batch])
    return time.perf_counter() - t


def decode_and_detect(det, data: list[bytes], batch: int) -> tuple[float, float]:
    """Seconds decoding ``data`` alone and detecting the decoded photos alone, a batch at a
    time (all the photos decoded at once would take gigabytes and slow the decoding)."""
    t_decode = t_detect = 0.0
    for i in range(0, len(data), batch):
        t = time.perf_counter()
        images = [decode_image(d) for d in data[i : i + batch]]
        t_decode += time.perf_counter() - t
        t_detect += detect_all(det, images, batch)
    return t_decode, t_detect


def end_to_end(paths: list[str], name: str, spec: AlignSpec) -> float:
    part = pd.DataFrame({"path": pd.Series(paths, dtype=faceetl.schema.STRING)})
    t = time.perf_counter()
    extract_partition(part, name, {}, spec)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="*", default=BACKENDS)
    ap.add_argument("--seconds", type=float, default=10.0, help="detector time per backend")
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    photos = sorted((SHARED / "images" / "group").glob("*.jpg"))
    photos += sorted((SHARED / "images" / "single").glob("*.jpg"))
    base = [str(p) for p in photos]
    spec = AlignSpec()
    rows = []
    for name in args.backends:
        det = faceetl.get_backend(name)
        batch = Job.make(name, {}, spec=spec).batch_size
        end_to_end(base, name, spec)  # model loaded, every shape seen
        one = detect_all(det, [decode_image(read_image_bytes(p)) for p in base], batch)
        paths = base * max(1, round(args.seconds / one))
        data = [read_image_bytes(p) for p in paths]
        runs = [decode_and_detect(det, data, batch) for _ in range(2)]
        t_decode = min(r[0] for r in runs)  # each figure the better of two runs
        t_detect = min(r[1] for r in runs)
        del data
        stage_seconds(reset=True)
        t_all = end_to_end(paths, name, spec)
        stages = stage_seconds(reset=True)
        t_all = min(t_all, end_to_end(paths, name, spec))
        n = len(paths)
        own = t_all - t_decode - t_detect
        row = {"backend": name, "images": n, "end to end ms": 1e3 * t_all / n,
               "decode ms": 1e3 * t_decode / n, "detect ms": 1e3 * t_detect / n,
               "own ms": 1e3 * own / n, "own / detect %": 100 * own / t_detect}  # fmt: skip
        row.update({f"stage {k} ms": 1e3 * v / n for k, v in sorted(stages.items())})
        rows.append(row)
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    pd.set_option("display.width", 250)
    print("\none core; per image; own = end to end - decode - detect")
    print(pd.DataFrame(rows).set_index("backend").T.round(2).to_string())


if __name__ == "__main__":
    main()
