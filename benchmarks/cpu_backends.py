"""CPU throughput of every backend: a one-core loop against the Dask pipeline, in one run.

For each backend, on the same images (the shared group and single-face photos, repeated):
- ``loop``: one process, one thread, decode -> detect -> align -> PNG per image (the work of the
  pipeline without Dask);
- ``dask``: ``extract_faces(...).compute()`` on a LocalCluster of ``--workers`` single-threaded
  processes.
Both are timed on their second pass over the images (models loaded, per-shape kernels warm).
It prints faces found per group photo, images/s of both and their ratio, and the eye-centre
agreement between backends (faceetl.eval.agreement.eye_agreement, dlib 68-point eyes as reference).

    python benchmarks/cpu_backends.py --repeat 3 --workers 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import pandas as pd
import torch

import faceetl
from faceetl.align import AlignSpec
from faceetl.eval.agreement import eye_agreement
from faceetl.pipeline.extract import extract_partition

SHARED = Path(os.environ.get("FACEETL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BACKENDS = {
    "opencv": {},
    "dlib": {},
    "mediapipe": {"model": "full"},
    "mtcnn": {},
    "retinaface": {},
    "ssd": {},
}


def _load(name: str, params: dict) -> None:
    faceetl.get_backend(name, **params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS))
    ap.add_argument("--repeat", type=int, default=2, help="times each photo is processed")
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    args = ap.parse_args()

    group = sorted((SHARED / "images" / "group").glob("*.jpg"))
    photos = group + sorted((SHARED / "images" / "single").glob("*.jpg"))
    paths = [str(p) for p in photos] * args.repeat
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    spec = AlignSpec()

    client = faceetl.cluster(
        concurrency=args.workers, gpu=False, dashboard_address=None, quiet=True
    )
    rows, tables = [], {}
    for name in args.backends:
        params = BACKENDS.get(name, {})
        part = pd.DataFrame({"path": pd.Series(paths, dtype=faceetl.schema.STRING)})
        extract_partition(part, name, params, spec, batch_size=8)  # warm: model, every shape
        t = time.perf_counter()
        df = extract_partition(part, name, params, spec, batch_size=8)
        loop_ips = len(paths) / (time.perf_counter() - t)
        first = df[df["path"].isin([str(p) for p in photos])].drop_duplicates(["path", "face"])
        tables[name] = first.reset_index(drop=True)

        client.run(_load, name, params)  # every worker loads the model before timing
        faces = faceetl.extract_faces(
            faceetl.read_images(paths, npartitions=args.workers * 4),
            backend=name,
            batch_size=8,
            **params,
        )
        warm = faceetl.extract_faces(  # other partitions: other keys, nothing reused from it
            faceetl.read_images(paths, npartitions=args.workers * 4 + 1), backend=name, **params
        )
        warm.compute()  # warm, as the loop: the workers have seen the images once
        t = time.perf_counter()
        out = faces.compute()
        dask_ips = len(paths) / (time.perf_counter() - t)
        assert set(out["path"]) == set(paths)
        counts = {
            p.stem[:18]: int(((first["path"] == str(p)) & (first["status"] == "ok")).sum())
            for p in group
        }
        rows.append({"backend": name, **counts, "loop img/s (1 core)": round(loop_ips, 2),
                     f"dask img/s ({args.workers} workers)": round(dask_ips, 2),
                     "ratio": round(dask_ips / loop_ips, 2)})  # fmt: skip
        print(rows[-1], flush=True)
    client.close()

    pd.set_option("display.width", 250)
    print("\nfaces found per group photo, and throughput (same images, same run)")
    print(pd.DataFrame(rows).set_index("backend").T.to_string())
    if "dlib" in tables:
        print(
            "\neye-centre agreement between backends (fraction of a 112 px crop; dlib 68-pt eyes as reference)"
        )
        agree = []
        names = list(tables)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                d = eye_agreement(tables[a], tables[b], tables["dlib"], spec.size)["dist"]
                if len(d):
                    agree.append({"pair": f"{a}-{b}", "faces": len(d), "median": d.median(),
                                  "p90": d.quantile(0.9), "within 3%": (d <= 0.03).mean()})  # fmt: skip
        print(pd.DataFrame(agree).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
