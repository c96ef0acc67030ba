"""Crash-safe, incremental output on 10,000 inputs: driver memory, throughput, re-run after a kill.

One run, in a temporary folder (removed at the end unless ``--keep``):
- inputs: ``--n`` symlinks with distinct names, 40 per folder, to the 5 small single-face photos
  of ``../shared/images/single`` (17-37 KB JPEGs, 320x240 to 560x415);
- ``loop``: one process, one thread (torch and OpenCV set to 1 thread), ``commit_partition`` (what
  a worker does with one partition: decode, detect, align, write the PNG crops, then the part
  file) over partitions of the first ``--loop`` inputs, model loaded before timing;
- ``Pife 1,000`` / ``Pife N``: ``Pife(backend, 2, progress=False).extract(paths, out)`` in a fresh
  process each (separate outputs): the driver's peak RSS (``ru_maxrss``; the workers are other
  processes) after ``import faceetl`` and starting the cluster (the baseline) and after
  ``extract``, with its current RSS (VmRSS) at both points, since a peak reached while starting
  hides any smaller growth; the time of ``extract`` (cluster started, models not loaded) and
  img/s, also as a multiple of the loop's;
- kill: the N-input run again into a new output, its driver and workers killed together
  (SIGKILL to the process group) once about half of the inputs are committed, then a re-run to
  completion in a fresh process, timed against the full run. Both outputs are checked: every
  input path present, each (path, face) once, one crop file per face, no temporary file, no
  in-flight note, no lock left.

The default backend is MediaPipe: on these photos one core runs OpenCV's cascades at about 3.4
img/s and SSD at 5.5, so the ~21,000 images of a run would take 35-60 minutes on 2 cores.
The weights come from ``../shared/weights`` (flat copy into a temporary ``FACEETL_HOME``).

    .venv/bin/python benchmarks/storage.py --n 10000 --backend mediapipe
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(os.environ.get("FACEETL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PER_FOLDER = 40
PART_GLOB = "part-*.parquet"


def _rss_mib() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mib() -> float:
    """This process's resident memory now (VmRSS; the peak may have been reached earlier)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _home(folder: Path) -> None:
    """FACEETL_HOME: a flat copy of every file of the shared weights (the Makefile's ``weights``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted((SHARED / "weights").rglob("*")):
        if f.is_file() and not (folder / f.name).exists():
            shutil.copy(f, folder / f.name)
    os.environ["FACEETL_HOME"] = str(folder)


def _inputs(folder: Path, n: int) -> list[str]:
    """``n`` symlinks to the small shared photos, distinct names, PER_FOLDER per folder."""
    photos = sorted((SHARED / "images" / "single").glob("*.jpg"))
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)].resolve()
        link = folder / f"d{i // PER_FOLDER:04d}" / f"{i:06d}_{photo.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(photo)
        paths.append(str(link))
    return paths


# -- the child: one Pife run, as a user's script would do it -------------------------------------


def child(args: argparse.Namespace) -> None:
    """Start the cluster Pife would start, note the driver's RSS, extract, note it again."""
    import faceetl

    client = faceetl.cluster(args.backend, args.workers)  # Pife's own call; it uses this client
    baseline, baseline_now = _rss_mib(), _rss_now_mib()
    paths = Path(args.paths_file).read_text().splitlines()
    pife = faceetl.Pife(
        args.backend, args.workers, partition_size=args.partition_size, progress=False
    )
    start = time.perf_counter()
    pife.extract(paths, args.out)
    seconds = time.perf_counter() - start
    result = {
        "baseline_mib": baseline,
        "baseline_now_mib": baseline_now,
        "peak_mib": _rss_mib(),
        "now_mib": _rss_now_mib(),
        "seconds": seconds,
    }
    print("RESULT " + json.dumps(result), flush=True)
    client.close()


def _command(args: argparse.Namespace, paths_file: Path, out: Path) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--child", "--paths-file", str(paths_file),
        "--out", str(out), "--backend", args.backend, "--workers", str(args.workers),
        "--partition-size", str(args.partition_size),
    ]  # fmt: skip


def _start(args: argparse.Namespace, paths_file: Path, out: Path, log: Path) -> subprocess.Popen:
    """A child in its own session: its process group is the driver and every worker."""
    with open(log, "w") as f:
        return subprocess.Popen(
            _command(args, paths_file, out), stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _result(proc: subprocess.Popen, log: Path) -> dict[str, Any]:
    rc = proc.wait()
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if rc != 0 or not lines:
        raise RuntimeError(f"child failed (exit {rc}); its output:\n{text[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _group_alive(pgid: int) -> int:
    """Processes of group ``pgid`` still running (zombies not counted)."""
    alive = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive += 1
    return alive


# -- the one-core loop ---------------------------------------------------------------------------


def loop(args: argparse.Namespace, paths: list[str], out: Path) -> float:
    """img/s of ``commit_partition`` over partitions of ``paths``, one process, one thread."""
    import cv2
    import pandas as pd
    import torch

    import faceetl
    from faceetl.align import AlignSpec
    from faceetl.pipeline.extract import Job, common_root, extract_partition
    from faceetl.pipeline.manifest import Commit, Output, commit_partition, target_schema

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    pife = faceetl.Pife(args.backend, 1, partition_size=args.partition_size, progress=False)
    spec = AlignSpec(pife.template, pife.size, pife.padding)
    output = Output(str(out))
    job = Job.make(  # what Pife hands every partition
        pife.backend, pife.backend_params, spec=spec, batch_size=pife.batch_size,
        crop_root=common_root(paths), keep_crops=False, crop_dir=output.url,
    )  # fmt: skip
    frame = pd.DataFrame({"path": pd.Series(paths, dtype=faceetl.schema.STRING)})
    extract_partition(frame[:10], pife.backend, pife.backend_params, spec)  # warm: model loaded
    commit = Commit(output, "loop", target_schema(frame[[]]))
    size = args.partition_size
    start = time.perf_counter()
    for k, i in enumerate(range(0, len(frame), size)):
        part = frame[i : i + size].reset_index(drop=True)
        commit_partition(part, job, commit, partition_info={"number": k})
    return len(paths) / (time.perf_counter() - start)


# -- checks --------------------------------------------------------------------------------------


def _files(out: Path) -> dict[str, int]:
    """Crop files, temporary files, in-flight notes and the lock under an output folder."""
    crops = tmp = 0
    for _, _, files in os.walk(out):
        crops += sum(1 for f in files if f.endswith(".png") and not f.startswith("."))
        tmp += sum(1 for f in files if ".tmp-" in f)
    inflight = out / ".faceetl" / "inflight"
    notes = len(list(inflight.glob("*.json"))) if inflight.is_dir() else 0
    return {"crops": crops, "tmp": tmp, "notes": notes, "lock": int((out / ".faceetl/lock.json").exists())}  # fmt: skip


def _rows(out: Path) -> Any:
    import pyarrow.dataset as pads

    ds = pads.dataset(out / "faces.parquet", format="parquet")  # skips _faceetl.json, .tmp-*
    return ds.to_table(columns=["path", "face", "status"]).to_pandas()


def check(out: Path, paths: list[str]) -> dict[str, Any]:
    """What a finished output holds, against the inputs."""
    rows = _rows(out)
    files = _files(out)
    done = set(rows["path"].astype(str))
    ok = int((rows["status"].astype(str) == "ok").sum())
    return {
        "parts": len(list((out / "faces.parquet").glob(PART_GLOB))),
        "rows": len(rows),
        "input paths missing": len(set(paths) - done),
        "paths not in the inputs": len(done - set(paths)),
        "duplicate (path, face)": int(rows.duplicated(["path", "face"]).sum()),
        "error rows": int(rows["status"].astype(str).str.startswith("error").sum()),
        "ok faces": ok,
        "crop files": files["crops"],
        "crops without a row": files["crops"] - ok,
        ".tmp- files": files["tmp"],
        "in-flight notes": files["notes"],
        "lock left": files["lock"],
    }


def kill_at_half(args: argparse.Namespace, paths_file: Path, out: Path, log: Path) -> dict:
    """Start the full run, SIGKILL its process group once half of the inputs are committed."""
    target = args.n // 2
    parts = out / "faces.parquet"
    start = time.perf_counter()
    proc = _start(args, paths_file, out, log)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before the kill:\n{log.read_text()[-4000:]}")
        if parts.is_dir() and len(list(parts.glob(PART_GLOB))) * args.partition_size >= target:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    killed_after = time.perf_counter() - start
    proc.wait()
    deadline = time.time() + 10
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    rows = _rows(out)
    files = _files(out)
    ok = int((rows["status"].astype(str) == "ok").sum())
    return {
        "killed after s": killed_after,
        "processes left in its group": _group_alive(proc.pid),
        "inputs committed": rows["path"].nunique(),
        "parts": len(list(parts.glob(PART_GLOB))),
        "in-flight notes": files["notes"],
        ".tmp- files": files["tmp"],
        "crops without a row": files["crops"] - ok,
    }


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="inputs of the large run")
    ap.add_argument("--small", type=int, default=1_000, help="inputs of the small run")
    ap.add_argument("--loop", type=int, default=1_000, help="inputs of the one-core loop")
    ap.add_argument("--backend", default="mediapipe")
    ap.add_argument("--workers", type=int, default=2, help="Pife's concurrency")
    ap.add_argument("--partition-size", type=int, default=64)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--paths-file", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import pandas as pd

    tmp = Path(tempfile.mkdtemp(prefix="faceetl-storage-"))
    print(f"working in {tmp}", flush=True)
    try:
        _home(tmp / "home")
        os.environ.setdefault("FACEETL_OFFLINE", "1")
        paths = _inputs(tmp / "inputs", args.n)
        files = {}
        for n in sorted({args.small, args.n}):
            files[n] = tmp / f"paths-{n}.txt"
            files[n].write_text("\n".join(paths[:n]) + "\n")

        loop_ips = loop(args, paths[: args.loop], tmp / "out-loop")
        print(f"loop: {loop_ips:.2f} img/s", flush=True)
        runs = {}
        for n in sorted({args.small, args.n}):
            out, log = tmp / f"out-{n}", tmp / f"log-{n}.txt"
            runs[n] = _result(_start(args, files[n], out, log), log)
            print(f"Pife {n}: {runs[n]}", flush=True)
        killed = kill_at_half(args, files[args.n], tmp / "out-kill", tmp / "log-kill.txt")
        print(f"kill: {killed}", flush=True)
        log = tmp / "log-rerun.txt"
        rerun = _result(_start(args, files[args.n], tmp / "out-kill", log), log)
        print(f"re-run: {rerun}", flush=True)
        checks = {
            f"Pife {args.n:,}": check(tmp / f"out-{args.n}", paths),
            "killed + re-run": check(tmp / "out-kill", paths),
        }
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    remaining = args.n - killed["inputs committed"]
    table = [{"run": "loop (1 process, 1 thread)", "inputs": args.loop,
              "img/s": loop_ips, "x loop": 1.0}]  # fmt: skip
    for label, n, r in [*((f"Pife {n:,}", n, runs[n]) for n in runs), ("re-run after kill", remaining, rerun)]:  # fmt: skip
        table.append({
            "run": label, "inputs": n, "extract s": r["seconds"], "img/s": n / r["seconds"],
            "x loop": n / r["seconds"] / loop_ips,
            "driver peak RSS, import+cluster MiB": r["baseline_mib"],
            "driver peak RSS, end MiB": r["peak_mib"],
            "peak growth MiB": r["peak_mib"] - r["baseline_mib"],
            "RSS now, import+cluster MiB": r["baseline_now_mib"],
            "RSS now, end MiB": r["now_mib"],
        })  # fmt: skip
    full = runs[args.n]["seconds"]
    kill = {
        **killed,
        "re-run s": rerun["seconds"],
        "full run s": full,
        "re-run / full run": rerun["seconds"] / full,
        "inputs left / inputs": remaining / args.n,
    }
    pd.set_option("display.width", 250)
    cmd = " ".join(["python", "benchmarks/storage.py", *sys.argv[1:]])
    print(f"\n{cmd}\n{args.backend}, {args.workers} workers, partitions of {args.partition_size}, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(pd.DataFrame(table).set_index("run").T.round(2).to_string(na_rep=""))
    print(f"\nkilled at half ({args.n:,} inputs), then re-run")
    print(pd.Series(kill).round(2).to_string())
    print("\nthe outputs")
    print(pd.DataFrame(checks).to_string())


if __name__ == "__main__":
    main()
