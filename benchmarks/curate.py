"""Identity clustering at scale: planted identities at 10^4..10^6 faces on a 2-worker LocalCluster.

The planted embeddings copy the real ones: dlib descriptors of ``../shared/images/identities``
(5 people x 11) give the same-person and other-person distances of unit vectors (mean and spread);
planted identity centres and spreads are fitted so the planted distances match them (both printed).
Each size runs ``faceetl.identities`` on a fresh 2-worker cluster (one thread each) over a persisted
frame of planted vectors made by the workers: wall time, peak RSS of the driver and of each worker,
pairwise and BCubed F against the planted labels.

    python benchmarks/curate.py --sizes 10000 100000 1000000
    python benchmarks/curate.py --ann          # the index libraries side by side (10^5, 1 thread)
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(os.environ.get("FACEETL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DIM = 128
PER_IDENTITY = 10  # faces per planted identity, on average
VEC = pd.ArrowDtype(pa.list_(pa.float32()))


def real_descriptors() -> tuple[np.ndarray, np.ndarray]:
    """dlib's raw descriptors of the shared identities' chips, and their folder labels."""
    import cv2
    import dlib

    from faceetl.predictors.embedding import dlib_model_path

    files = sorted(glob.glob(str(SHARED / "images/identities/*/*.jpg")))
    labels = np.array([Path(f).parent.name for f in files])
    model = dlib.face_recognition_model_v1(str(dlib_model_path()))
    chips = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]
    v = np.array([np.asarray(d) for d in model.compute_face_descriptor(chips, 0)], np.float32)
    return v, labels


def against_dlib(v: np.ndarray, labels: np.ndarray) -> None:
    """faceetl.identities and dlib.chinese_whispers_clustering on the same real descriptors."""
    import dlib

    from faceetl.curate.graph import pair_scores
    from faceetl.curate.identities import identities

    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    faces_ = pd.DataFrame({"path": [f"{i}.jpg" for i in range(len(v))], "face": 0,
                           "embedding_vector_normalized": pd.Series(list(unit), dtype=VEC)})  # fmt: skip
    rows = {"faceetl.identities (unit, 0.4)": identities(faces_)["identity"].to_numpy(np.int64)}
    raw = [dlib.vector(np.asarray(x, float)) for x in v]
    for t in (0.5, 0.6):
        rows[f"dlib.chinese_whispers (raw, {t})"] = np.asarray(
            dlib.chinese_whispers_clustering(raw, t)
        )
    print(f"\n{'shared/images/identities, 55 faces':36s} {'pair P':>7s} {'pair R':>7s} "
          f"{'pair F':>7s} {'BCubed F':>8s}")  # fmt: skip
    for name, pred in rows.items():
        sc = pair_scores(labels, pred)
        print(f"{name:36s} {sc['pairwise_precision']:7.3f} {sc['pairwise_recall']:7.3f} "
              f"{sc['pairwise_f']:7.3f} {sc['bcubed_f']:8.3f}")  # fmt: skip


def _stats(u: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    d = np.sqrt(np.clip(2 - 2 * u @ u.T, 0, None))
    iu = np.triu_indices(len(u), 1)
    same = (labels[:, None] == labels[None])[iu]
    s, o = d[iu][same], d[iu][~same]
    return {"same_mean": s.mean(), "same_sd": s.std(), "other_mean": o.mean(),
            "other_sd": o.std(), "other_min": o.min(), "same_max": s.max()}  # fmt: skip


def centres(k: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` identity centres around one direction (embeddings fill a cone, not the sphere)
    and each identity's own spread."""
    rng = np.random.default_rng(seed)
    a = rng.lognormal(np.log(spread), 0.1, k).astype(np.float32)
    c = rng.standard_normal((k, DIM), dtype=np.float32) / np.sqrt(DIM) * a[:, None]
    c[:, 0] += 1.0
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    s = rng.lognormal(np.log(0.155), 0.15, k).astype(np.float32)
    return c, s


def faces(part: int, rows: int, c: np.ndarray, s: np.ndarray, seed: int) -> pd.DataFrame:
    """One partition of planted faces: unit vectors around their identity's centre."""
    rng = np.random.default_rng([seed, part])
    who = rng.integers(0, len(c), rows)
    x = c[who] + rng.standard_normal((rows, DIM), dtype=np.float32) / np.sqrt(DIM) * s[who, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    offsets = np.arange(rows + 1, dtype=np.int32) * DIM
    vec = pa.ListArray.from_arrays(pa.array(offsets), pa.array(x.reshape(-1)))
    return pd.DataFrame({
        "path": pd.Series([f"p{part}/{i}.jpg" for i in range(rows)], dtype="string[pyarrow]"),
        "face": np.zeros(rows, np.int64),
        "embedding_vector_normalized": pd.Series(pd.arrays.ArrowExtensionArray(vec)),
        "planted": who,
    })  # fmt: skip


def fit_spread(real: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The centre spread whose planted distances match the real other-person mean."""
    best = None
    for spread in np.arange(0.30, 0.80, 0.02):
        c, s = centres(300, float(spread), 1)
        f = faces(0, 3000, c, s, 1)
        u = np.stack(f["embedding_vector_normalized"].to_numpy())[:1500]
        st = _stats(u, f["planted"].to_numpy()[:1500])
        err = abs(st["other_mean"] - real["other_mean"])
        if best is None or err < best[0]:
            best = (err, float(spread), st)
    return best[1], best[2]


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across
    the exec that starts a worker)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n: int, spread: float, seed: int, rows_per_part: int) -> dict[str, float]:
    import dask.dataframe as dd
    from dask import delayed
    from distributed import Client, LocalCluster, wait

    from faceetl.curate.graph import pair_scores
    from faceetl.curate.identities import identities

    parts = max(2, -(-n // rows_per_part))
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="6GiB",
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        t0 = time.perf_counter()
        cs = delayed(centres, pure=True)(max(1, n // PER_IDENTITY), spread, seed)
        sizes = [n // parts + (i < n % parts) for i in range(parts)]
        made = [delayed(faces)(i, r, cs[0], cs[1], seed) for i, r in enumerate(sizes)]
        frame = dd.from_delayed(made, meta=faces(0, 0, *centres(1, spread, 0), 0))
        frame = client.persist(frame)
        wait(frame)
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = identities(frame)[["identity", "planted"]].compute()
        wall = time.perf_counter() - t0
        workers = client.run(peak_mib)
    scores = pair_scores(got["planted"].to_numpy(), got["identity"].to_numpy(np.int64))
    return {"faces": n, "partitions": parts, "make_s": t_make, "identities_s": wall,
            "driver_peak_mib": peak_mib(), "worker_peak_mib": max(workers.values()),
            "identities_found": int(got["identity"].nunique()),
            "identities_planted": int(got["planted"].nunique()), **scores}  # fmt: skip


def ann() -> None:
    """faiss IVF and HNSW, hnswlib and usearch on 10^5 planted vectors, one thread."""
    import faiss
    import hnswlib
    from usearch.index import Index

    faiss.omp_set_num_threads(1)
    c, s = centres(10_000, 0.44, 0)
    x = np.stack(faces(0, 100_000, c, s, 0)["embedding_vector_normalized"].to_numpy())
    x = np.ascontiguousarray(x, np.float32)
    ex = faiss.IndexFlatIP(DIM)
    ex.add(x)
    gt = ex.search(x[:2000], 10)[1]

    def recall(ids: np.ndarray) -> float:
        return float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids[:2000], gt, strict=True)])
        )

    def timed(build, query) -> tuple[float, float, float]:
        t = time.perf_counter()
        idx = build()
        b = time.perf_counter() - t
        t = time.perf_counter()
        ids = query(idx)
        return b, time.perf_counter() - t, recall(ids)

    def ivf():
        q = faiss.IndexFlatIP(DIM)
        i = faiss.IndexIVFFlat(q, DIM, 1024, faiss.METRIC_INNER_PRODUCT)
        i.train(x[:50_000])
        i.add(x)
        i.nprobe = 8
        q.this.disown()  # the index keeps its quantizer
        i.own_fields = True
        return i

    def fhnsw():
        i = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
        i.hnsw.efConstruction = 64
        i.add(x)
        i.hnsw.efSearch = 48
        return i

    def hnsw():
        i = hnswlib.Index(space="ip", dim=DIM)
        i.init_index(max_elements=len(x), ef_construction=64, M=16)
        i.set_num_threads(1)
        i.add_items(x, np.arange(len(x)))
        i.set_ef(48)
        return i

    def us(dtype):
        def b():
            i = Index(ndim=DIM, metric="ip", dtype=dtype, connectivity=16, expansion_add=64,
                      expansion_search=48)  # fmt: skip
            i.add(np.arange(len(x)), x, threads=1)
            return i

        return b

    rows = {
        "faiss IVF-Flat 1024 lists, nprobe 8": timed(ivf, lambda i: i.search(x, 10)[1]),
        "faiss HNSW M16 ef64/48": timed(fhnsw, lambda i: i.search(x, 10)[1]),
        "hnswlib M16 ef64/48": timed(hnsw, lambda i: i.knn_query(x, 10)[0]),
        "usearch f32 M16 ef64/48": timed(us("f32"), lambda i: i.search(x, 10, threads=1).keys),
        "usearch f16 M16 ef64/48": timed(us("f16"), lambda i: i.search(x, 10, threads=1).keys),
    }
    print(
        f"{'library (10^5 vectors, 1 thread)':40s} {'build s':>8s} {'query s':>8s} {'recall@10':>9s}"
    )
    for name, (b, q, r) in rows.items():
        print(f"{name:40s} {b:8.1f} {q:8.1f} {r:9.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--rows-per-partition", type=int, default=25_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ann", action="store_true", help="compare the index libraries instead")
    args = ap.parse_args()
    if args.ann:
        ann()
        return
    v, labels = real_descriptors()
    against_dlib(v, labels)
    real = _stats(v / np.linalg.norm(v, axis=1, keepdims=True), labels)
    spread, planted = fit_spread(real)
    print("unit-vector distances   same mean/sd/max        other mean/sd/min")
    for name, st in (
        ("real (shared/identities)", real),
        (f"planted (spread {spread:.2f})", planted),
    ):
        print(f"{name:26s} {st['same_mean']:.3f} {st['same_sd']:.3f} {st['same_max']:.3f}"
              f"      {st['other_mean']:.3f} {st['other_sd']:.3f} {st['other_min']:.3f}")  # fmt: skip
    print(f"\n{'faces':>9s} {'parts':>5s} {'wall s':>7s} {'driver MiB':>10s} {'worker MiB':>10s} "
          f"{'found/planted':>15s} {'pair P':>7s} {'pair R':>7s} {'pair F':>7s} {'BCubed F':>8s}")  # fmt: skip
    for n in args.sizes:
        r = run(n, spread, args.seed, args.rows_per_partition)
        print(f"{r['faces']:9d} {r['partitions']:5d} {r['identities_s']:7.1f} "
              f"{r['driver_peak_mib']:10.0f} {r['worker_peak_mib']:10.0f} "
              f"{r['identities_found']:7d}/{r['identities_planted']:<7d} "
              f"{r['pairwise_precision']:7.4f} {r['pairwise_recall']:7.4f} "
              f"{r['pairwise_f']:7.4f} {r['bcubed_f']:8.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
