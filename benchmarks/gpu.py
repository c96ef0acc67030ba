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
Every figure comes from this run; ratios compare figures of this run. ``--json`` writes the
table too. On a CPU, ``--device cpu --n 32`` runs the same code in about a minute (CI runs it).

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=3000, help="number of JPEGs")
    ap.add_argument("--batch", type=int, default=64, help="decode / network batch")
    ap.add_argument("--json", type=Path, default=None)
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
                {"device": device_name, "n": args.n, "img_s": rows, "ratios": ratios}, indent=1
            )
        )


if __name__ == "__main__":
    main()
