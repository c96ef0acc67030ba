"""The inputs and outputs of ``million.py``: tiny JPEGs as links or S3 objects, moto's S3
server, an output seen through fsspec (its checks), an output half committed for ``--dry``, and
a run killed at half."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import storage as bench  # benchmarks/storage.py: the shared photos, the process-group helpers


def seeds(side: int, count: int = 5) -> list[bytes]:
    """``count`` distinct JPEGs, at most ``side`` px: the shared single-face photos scaled down
    (random pixels where they are missing)."""
    import cv2

    photos = sorted((bench.SHARED / "images" / "single").glob("*.jpg"))
    out = []
    for i in range(count):
        image = cv2.imread(str(photos[i % len(photos)])) if photos else None
        if image is None:
            image = (np.random.default_rng(i).random((side, side, 3)) * 255).astype(np.uint8)
        h, w = image.shape[:2]
        scale = side / max(h, w)
        image = cv2.resize(image, (max(8, round(w * scale)), max(8, round(h * scale))),
                           interpolation=cv2.INTER_AREA)  # fmt: skip
        out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


LINKS_PER_COPY = 50_000


def rel_name(i: int, per_folder: int) -> str:
    return f"d{i // per_folder:05d}/{i:07d}.jpg"


def local_inputs(tmp: Path, n: int, args: argparse.Namespace, data: list[bytes]) -> str:
    """A folder of ``n`` links to the seed JPEGs, ``per_folder`` per folder. A file takes at
    most 65,000 hard links on ext4, so each ``LINKS_PER_COPY`` inputs link to copies of their
    own."""
    src = tmp / f"seeds-{n}"
    folder = tmp / f"in-{n}"
    link = os.symlink if args.symlinks else os.link
    for i in range(n):
        if i % LINKS_PER_COPY == 0:
            copy = src / f"{i // LINKS_PER_COPY:03d}"
            copy.mkdir(parents=True)
            for k, d in enumerate(data):
                (copy / f"s{k}.jpg").write_bytes(d)
        if i % args.per_folder == 0:
            (folder / f"d{i // args.per_folder:05d}").mkdir(parents=True)
        link(copy / f"s{i % len(data)}.jpg", folder / rel_name(i, args.per_folder))
    return str(folder)


def s3_inputs(fs: Any, bucket: str, n: int, per_folder: int, data: list[bytes]) -> str:
    """``n`` objects with the seed JPEGs' bytes under ``s3://<bucket>/in-<n>/``."""
    prefix = f"{bucket}/in-{n}"
    batch: dict[str, bytes] = {}
    for i in range(n):
        batch[f"{prefix}/{rel_name(i, per_folder)}"] = data[i % len(data)]
        if len(batch) == 2000 or i == n - 1:
            fs.pipe(batch)
            batch = {}
    return f"s3://{prefix}"


@contextlib.contextmanager
def moto_server() -> Iterator[dict[str, Any]]:
    """moto's standalone S3 server in its own process (as tests/conftest.py's ``s3_endpoint``)."""
    import socket
    import urllib.request

    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        raise SystemExit("--s3 needs moto[server] (moto_server beside this Python)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {url}") from None
            time.sleep(0.1)
    try:
        yield {"endpoint_url": url, "key": "testing", "secret": "testing"}
    finally:
        proc.terminate()
        proc.wait(10)


class Output:
    """An output folder, local or on the S3 server, seen through fsspec."""

    def __init__(self, url: str, options: dict[str, Any] | None) -> None:
        from fsspec.core import url_to_fs

        self.url, self.options = url, options
        self.fs, self.root = url_to_fs(url, **(options or {}))

    def names(self, rel: str) -> list[str]:
        self.fs.invalidate_cache()
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/{rel}", False)]  # fmt: skip
        except FileNotFoundError:
            return []

    def parts(self) -> int:
        return sum(1 for n in self.names("faces.parquet") if n.startswith("part-"))

    def rows(self) -> Any:
        import pyarrow.dataset as pads

        self.fs.invalidate_cache()
        ds = pads.dataset(f"{self.root}/faces.parquet", filesystem=self.fs, format="parquet")
        return ds.to_table(columns=["path", "face", "status"]).to_pandas()

    def check(self, n: int, prefix: str) -> dict[str, int]:
        """What a finished output holds: every input ``prefix/<rel_name>`` once, nothing left."""
        rows = self.rows()
        self.fs.invalidate_cache()
        files = self.fs.find(self.root)
        paths = rows["path"].astype(str)
        wanted = paths.str.startswith(prefix + "/")
        return {
            "rows": len(rows), "inputs done": paths[wanted].nunique(), "inputs": n,
            "other paths": int((~wanted).sum()),
            "duplicate (path, face)": int(rows.duplicated(["path", "face"]).sum()),
            "error rows": int(rows["status"].astype(str).str.startswith("error").sum()),
            ".tmp- files": sum(".tmp-" in f for f in files),
            "in-flight notes": sum("/.faceetl/inflight/" in f for f in files),
            "lock left": sum(f.endswith("/.faceetl/lock.json") for f in files),
        }  # fmt: skip


def start_child(cmd: list[str], log: Path) -> subprocess.Popen:
    """A child in its own session: its process group is the driver and every worker."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def half_done(args: argparse.Namespace, source: str, out: str, options: Any, n: int) -> int:
    """For ``--dry``: an output whose first half of the inputs is committed (no_face rows, parts of
    the run's partition size) with this run's settings; returns the inputs committed."""
    import pandas as pd
    import pyarrow as pa

    import faceetl
    from faceetl.pife import effective_settings
    from faceetl.pipeline.inputs import auto_partition_size, common_root
    from faceetl.pipeline.manifest import (
        Output as Out,
    )  # fmt: skip
    from faceetl.pipeline.manifest import (
        arrow_table,
        check_settings,
        parquet_bytes,
        target_schema,
    )

    o = Out(out, options)
    paths = [f"{source}/{rel_name(i, args.per_folder)}" for i in range(n // 2)]
    params = {"faces": args.faces} if args.backend == "null" else {}
    settings = faceetl.Pife(args.backend, args.workers, **params).settings()
    check_settings(o, settings, common_root([paths[0], f"{source}/{rel_name(n - 1, args.per_folder)}"]),
                   effective_settings)  # fmt: skip
    target = target_schema(pd.DataFrame(index=range(0)))
    size = args.partition_size or auto_partition_size(n, args.workers)
    for k, i in enumerate(range(0, len(paths), size)):
        chunk = paths[i : i + size]
        table = pa.table({f.name: pa.nulls(len(chunk), f.type) for f in target}, schema=target)
        for name, value in (("path", chunk), ("face", [-1] * len(chunk)),
                            ("status", ["no_face"] * len(chunk)), ("provenance", ["{}"] * len(chunk))):  # fmt: skip
            table = table.set_column(target.get_field_index(name), name,
                                     pa.array(value, target.field(name).type))  # fmt: skip
        frame = table.to_pandas()
        o.write(
            f"faces.parquet/part-00000000-{k:05d}.parquet",
            parquet_bytes(arrow_table(frame, target)),
        )
    return len(paths)


def kill_at_half(cmd: list[str], out: Output, n: int, size: int, log: Path) -> dict[str, Any]:
    """Start the full run, SIGKILL its process group once half of the inputs are committed."""
    start = time.perf_counter()
    proc = start_child(cmd, log)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before the kill:\n{log.read_text()[-4000:]}")
        if out.parts() * size >= n // 2:
            break
        time.sleep(0.2 if n < 10**5 else 1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    killed_after = time.perf_counter() - start
    proc.wait()
    deadline = time.time() + 10
    while bench._group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    return {"killed after s": killed_after, "processes left": bench._group_alive(proc.pid),
            "inputs committed": int(out.rows()["path"].nunique())}  # fmt: skip
