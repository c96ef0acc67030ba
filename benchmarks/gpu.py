"""The GPU data path in one run: decode, network, faceetl end to end, peers; img/s and ratios.

Builds ``--n`` JPEGs (the shared photos, plus 1024x768 re-encodings of them), then times on
``--device``:
- ``decode``: JPEG decode alone (nvjpeg batches via torchvision on CUDA; cv2 on a CPU);
- ``network``: the RetinaFace mobilenet0.25 network alone on the benchmark canvas (fp16 on CUDA);
- ``retinaface`` / ``mtcnn``: faceetl end to end, paths -> parquet dataset with crops
  (``Pife.extract``; on CUDA a LocalCUDACluster when dask-cuda is installed);
- ``facenet-pytorch MTCNN`` on the same images (when it is installed);
- ``reference loop``: a per-image loop in the style of the reference RetinaFace script
  (read, detect one image, next).
Every figure comes from this run; ratios compare figures of this run. ``--profile N`` ends
with a torch profile of faceetl's retinaface pipeline on N of the images (in process, threaded
scheduler): the time of each pipeline stage (``faceetl.read``, ``faceetl.decode``,
``faceetl.detect``, ``faceetl.align``, ``faceetl.encode``, ``faceetl.rows``) and the costliest
operators. ``--json`` writes the
table (and the profile's top items) too. On a CPU, ``--device cpu --n 32`` runs the same code in about a minute (CI runs it).

    python benchmarks/gpu.py --device cuda --n 3000 --json gpu.json
    python benchmarks/gpu.py --device cpu --n 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(os.environ.get("FACEETL_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def build_images(folder: Path, n: int) -> list[str]:
    """``n`` JPEG files: the shared photos as they are, and 1024x768 re-encodings of them."""
    photos = sorted((SHARED / "images" / "group").glob("*.jpg")) + sorted(
        (SHARED / "images" / "single").glob("*.jpg")
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        src = photos[k % len(photos)]
        out = folder / f"{k:05d}_{src.name}"
        if k % 2 == 0:
            shutil.copy(src, out)
        else:
            img = cv2.imread(str(src))
            img = cv2.resize(img, (1024, 768), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 90 - k % 7])
        paths.append(str(out))
    return paths


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_decode(paths: list[str], device: str, batch: int = 64) -> float:
    datas = [Path(p).read_bytes() for p in paths]
    if device.startswith("cuda"):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        decode_jpeg(tensors[:batch], mode=ImageReadMode.RGB, device=device)  # warm
        _sync(device)
        start = time.perf_counter()
        for s in range(0, len(tensors), batch):
            decode_jpeg(tensors[s : s + batch], mode=ImageReadMode.RGB, device=device)
        _sync(device)
        return len(datas) / (time.perf_counter() - start)
    start = time.perf_counter()
    for d in datas:
        cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR)
    return len(datas) / (time.perf_counter() - start)


def time_network(device: str, n: int, batch: int, size: tuple[int, int] = (768, 1024)) -> float:
    import torch

    import faceetl

    det = faceetl.get_backend("retinaface", device=device)
    model = det.model
    x = torch.randn(batch, 3, *size, device=device)
    half = device.startswith("cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
        model(x)
        _sync(device)
        reps = max(1, n // batch)
        start = time.perf_counter()
        for _ in range(reps):
            model(x)
        _sync(device)
    return reps * batch / (time.perf_counter() - start)


def time_faceetl(paths: list[str], backend: str, device: str, out: Path, **params) -> float:
    import dask

    import faceetl

    pife = faceetl.Pife(backend, 1, progress=False, device=device, **params)
    if device == "cpu":
        with dask.config.set(scheduler="threads", num_workers=os.cpu_count() or 1):
            pife.extract(paths[:4], out / f"warm-{backend}")
            start = time.perf_counter()
            faces = pife.extract(paths, out / backend)
    else:
        with pife:
            pife.extract(paths[:4], out / f"warm-{backend}")
            start = time.perf_counter()
            faces = pife.extract(paths, out / backend)
    seconds = time.perf_counter() - start
    assert faces["path"].nunique().compute() == len(set(paths))
    return len(paths) / seconds


def time_facenet_mtcnn(paths: list[str], device: str, batch: int = 32) -> float | None:
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        return None
    mtcnn = MTCNN(keep_all=True, device=device)
    imgs = [cv2.resize(cv2.imread(p)[:, :, ::-1], (1024, 768)) for p in paths]
    mtcnn.detect(imgs[:2])
    start = time.perf_counter()
    for s in range(0, len(imgs), batch):
        mtcnn.detect(imgs[s : s + batch])
    return len(imgs) / (time.perf_counter() - start)


def time_reference_loop(paths: list[str], device: str) -> float:
    """Per image: read, run the detector on it alone (the reference scripts' loop)."""
    import faceetl

    det = faceetl.get_backend("retinaface", device=device)
    det.detect_batch([cv2.imread(paths[0])[:, :, ::-1].copy()])
    start = time.perf_counter()
    for p in paths:
        det.detect_batch([cv2.imread(p)[:, :, ::-1].copy()])
    return len(paths) / (time.perf_counter() - start)


def profile_pipeline(paths: list[str], device: str, top: int = 15) -> list[dict]:
    """Where an image's time goes in an in-process retinaface run: seconds per pipeline stage
    (summed over threads) and torch's profile of the costliest operators."""
    import dask
    import torch
    from torch.profiler import ProfilerActivity, profile

    import faceetl
    from faceetl.pipeline.extract import stage_seconds

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    run = faceetl.extract_faces(paths, backend="retinaface", device=device)
    n = len(paths)
    # the sync scheduler runs the partitions in this thread, which the profiler records
    with dask.config.set(scheduler="sync"):
        faceetl.extract_faces(paths[:4], backend="retinaface", device=device).compute()  # warm
        stage_seconds(reset=True)
        with profile(activities=acts) as prof:
            run.compute()
        if device != "cpu":
            torch.cuda.synchronize()
    stages = [
        {"name": f"stage {k}", "cpu_ms_per_img": 1000 * v / n, "device_ms_per_img": None}
        for k, v in sorted(stage_seconds().items(), key=lambda kv: -kv[1])
    ]

    def item(e) -> dict:
        dev_us = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0))
        return {
            "name": e.key,
            "cpu_ms_per_img": e.self_cpu_time_total / 1000 / n,
            "device_ms_per_img": dev_us / 1000 / n,
            "calls": e.count,
        }

    ops = sorted(
        (item(e) for e in prof.key_averages() if not e.key.startswith("faceetl.")),
        key=lambda r: -max(r["device_ms_per_img"], r["cpu_ms_per_img"]),
    )[:top]
    print(f"profile: retinaface pipeline, {n} images, ms per image")
    print("  stages (wall time summed over threads):")
    for r in stages:
        print(f"    {r['name']:<40}{r['cpu_ms_per_img']:>9.2f}")
    print("  operators (self CPU, device):")
    for r in ops:
        print(
            f"    {r['name'][:56]:<56}{r['cpu_ms_per_img']:>9.2f}"
            f"{r['device_ms_per_img']:>9.2f}{r['calls']:>8}"
        )
    return stages + ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=3000, help="number of JPEGs")
    ap.add_argument("--batch", type=int, default=64, help="decode / network batch")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--profile", type=int, default=0, help="profile the pipeline on N images")
    args = ap.parse_args()
    if args.device == "cpu":
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    rows: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="faceetl-gpu-bench-") as tmp:
        tmp = Path(tmp)
        paths = build_images(tmp / "images", args.n)
        rows["decode"] = time_decode(paths, args.device, args.batch)
        net_batch = args.batch if args.device != "cpu" else 2
        rows["network"] = time_network(args.device, len(paths), net_batch)
        rows["retinaface"] = time_faceetl(paths, "retinaface", args.device, tmp / "out")
        rows["mtcnn"] = time_faceetl(paths, "mtcnn", args.device, tmp / "out")
        rows["facenet-pytorch MTCNN"] = time_facenet_mtcnn(paths, args.device)
        rows["reference loop"] = time_reference_loop(paths[: max(8, len(paths) // 8)], args.device)
        profile = profile_pipeline(paths[: args.profile], args.device) if args.profile else None
    slower = min(rows["decode"], rows["network"])
    ratios = {
        "retinaface / min(decode, network)": rows["retinaface"] / slower,
        "retinaface / reference loop": rows["retinaface"] / rows["reference loop"],
        "mtcnn / facenet-pytorch": None
        if rows["facenet-pytorch MTCNN"] is None
        else rows["mtcnn"] / rows["facenet-pytorch MTCNN"],
    }
    device_name = args.device
    if args.device.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name()
    print(f"device: {device_name}; {args.n} JPEGs (shared photos + 1024x768 re-encodings)")
    print(f"{'what':<36}{'img/s':>10}")
    for k, v in rows.items():
        print(f"{k:<36}{'not installed' if v is None else f'{v:.1f}':>10}")
    for k, v in ratios.items():
        print(f"{k:<36}{'-' if v is None else f'{v:.2f}x':>10}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device_name,
                    "n": args.n,
                    "img_s": rows,
                    "ratios": ratios,
                    "profile": profile,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
