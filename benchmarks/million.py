"""Scale by simulation: 10^4 to 10^6 inputs through ``Pife(...).extract``, locally and on S3.

For each of ``--sizes`` (and ``--s3 N`` inputs on moto's S3 server, output to the bucket), in a
temporary folder (removed at the end unless ``--keep``):
- inputs: ``n`` tiny JPEGs (``--side`` px, a few distinct ones made with ``cv2.imencode`` from the
  shared single-face photos) as hard links (``--symlinks``: symbolic links), ``--per-folder`` per
  folder; on S3, objects with the same bytes;
- one run of ``Pife(backend, workers).extract(folder, out)`` in a fresh process (the child), with
  the ``null`` backend (registered here with ``faceetl.register_backend``: no face, or
  ``--faces 1`` fixed box, so the cost is decode and commit) or any built-in one (``mediapipe``);
- measured in the child: listing (``Pife``'s listing of the folder into a frame), the resume
  scan (clean-up of a stopped run and the done paths), time to the first task (from the call to
  the first task starting on a worker), extract wall time and img/s, the driver's peak RSS
  (VmHWM: the driver and the in-process scheduler; the workers are other processes) against
  its peak after import and cluster start, scheduler overhead per partition (worker time
  between the first task's start and the last one's end that no task used, per partition),
  and the seconds per image of each pipeline stage (``stage_seconds`` on the workers; read and
  decode run in the I/O threads, beside the others) and of the whole task;
- ``--kill``: the largest run of each kind again into a new output, its driver and workers
  killed together at half, then a resume in a fresh process, timed against the inputs left;
- ``--dry``: no extraction (the tasks are submitted, never run): listing, the resume scan over an
  output whose first half is committed (parts written here), building and submitting the graph;
  driver memory of these steps. Every output of a real run is checked: each input once, no
  temporary file, in-flight note or lock left.

Driver memory per input is the slope between sizes (MiB per 1,000 inputs): a fixed cost (Dask,
pandas, the cluster) does not depend on the inputs. ``--trace``: tracemalloc in the driver (the
Python memory after each step, and the places holding most of it; slow). The inputs, the S3
server, the outputs' checks and the kill are in ``simulated.py``.

    FACEETL_HOME=... FACEETL_OFFLINE=1 .venv/bin/python benchmarks/million.py \\
        --sizes 10000 100000 1000000 --kill --s3 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import storage as bench  # benchmarks/storage.py: the shared photos, the process-group helpers
from simulated import (
    Output,
    half_done,
    kill_at_half,
    local_inputs,
    moto_server,
    s3_inputs,
    seeds,
    start_child,
)

from faceetl.backends.base import BaseDetector, Detections, register_backend

PART_GLOB = "part-*.parquet"
STAGES = ("read", "decode", "detect", "align", "encode", "rows")


@register_backend("null", workers=2)
class NullDetector(BaseDetector):
    """No model: no face (``faces=0``) or one fixed box in the middle of every image
    (``faces=1``: its crop is aligned, encoded and written), so a run costs decode and commit."""

    thread_safe = True

    def __init__(self, faces: int = 0) -> None:
        self.faces, self._weights = int(faces), {}

    def _detect_one(self, image: np.ndarray) -> Detections:
        if not self.faces:
            return Detections.empty()
        h, w = image.shape[:2]
        return Detections(np.array([[w * 0.2, h * 0.2, w * 0.8, h * 0.8]]), np.ones(1), None)

    def _parameters(self) -> dict[str, Any]:
        return {"faces": self.faces}


def _status(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB (VmHWM: the peak RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the child: one Pife run, as a user's script would do it ---------------------------------------


def _timed(timers: dict[str, float], name: str, fn: Any) -> Any:
    def wrapper(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            timers[name] = timers.get(name, 0.0) + time.perf_counter() - start
            timers[f"peak after {name} MiB"] = _status("VmHWM")
            if tracemalloc.is_tracing():  # Python's allocations: held after the step, its peak
                now, peak = tracemalloc.get_traced_memory()
                timers[f"traced after {name} MiB"] = now / 2**20
                timers[f"traced peak in {name} MiB"] = peak / 2**20
                tracemalloc.reset_peak()

    return wrapper


def _timing_plugin() -> Any:
    """A worker plugin noting when the run's tasks (``commit_partition``) run: the first start,
    the last end, busy seconds."""
    from distributed import WorkerPlugin

    class Timing(WorkerPlugin):
        name = "million-timing"

        def __init__(self) -> None:
            self.first: float | None = None
            self.last: float | None = None
            self.busy, self.tasks, self.began = 0.0, 0, {}

        def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
            name = key[0] if isinstance(key, tuple) else key
            if not str(name).startswith("commit_partition"):  # the run's tasks only
                return
            now = time.time()
            if finish == "executing":
                self.began[key] = now
                self.first = now if self.first is None else min(self.first, now)
            elif start == "executing" and key in self.began:
                self.busy += now - self.began.pop(key)
                self.tasks += 1
                self.last = now if self.last is None else max(self.last, now)

    return Timing()


def top_allocations(snapshot: Any, n: int = 12) -> list[str]:
    """The ``n`` places holding most of the traced memory: each allocation by its innermost
    frame in faceetl, Dask, distributed, pandas or pyarrow (imports as one entry)."""
    libs = ("faceetl", "dask", "distributed", "pandas", "pyarrow", "tornado", "msgpack")
    sizes: dict[str, list[int]] = {}
    for trace in snapshot.traces:
        frames = list(trace.traceback)
        if any("importlib" in f.filename for f in frames):
            where = "imports"
        else:
            f = next((f for f in reversed(frames) if any(f"/{m}/" in f.filename for m in libs)),
                     frames[-1])  # fmt: skip
            where = f"{f.filename.split('site-packages/')[-1].split('wt-million/')[-1]}:{f.lineno}"
        entry = sizes.setdefault(where, [0, 0])
        entry[0] += trace.size
        entry[1] += 1
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1][0])[:n]
    return [f"{b / 2**20:8.2f} MiB {k:8d} blocks  {w}" for w, (b, k) in ranked]


def _submit_only(timers: dict[str, float]) -> tuple[Any, Any]:
    """What ``--dry`` runs instead of the computation: Pife's tasks made and submitted as Pife
    submits them (the whole graph, or its first batches), asking for a resource no worker has,
    so nothing runs; the driver's peak noted once the scheduler holds them; the tasks
    cancelled. Two stand-ins: for ``compute`` (a whole graph: faceetl before batches) and for
    ``compute_batches``."""
    import pandas as pd
    from distributed import default_client

    from faceetl.pipeline.progress import COUNTS

    never = {"no-such-resource": 1}

    def held(client: Any, futures: list[Any], start: float) -> Any:
        deadline = time.monotonic() + 600
        while True:  # the graph goes by its own stream: wait until the scheduler holds it
            n = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
            if n >= len(futures) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        timers["graph and submit"] = time.perf_counter() - start
        timers["tasks on the scheduler"] = n
        timers["peak at submit MiB"] = _status("VmHWM")
        if tracemalloc.is_tracing():
            timers["traced at submit MiB"] = tracemalloc.get_traced_memory()[0] / 2**20
            timers["traced peak in submit MiB"] = tracemalloc.get_traced_memory()[1] / 2**20
            timers["top"] = top_allocations(tracemalloc.take_snapshot())
        client.cancel(futures)
        return pd.DataFrame([[0] * len(COUNTS)], columns=COUNTS)

    def compute(counts: Any, progress: bool = True, summarize: bool = True) -> Any:
        start = time.perf_counter()
        client = default_client()
        return held(client, client.compute(counts.to_delayed(), resources=never), start)

    def compute_batches(client: Any, submit: Any, n_tasks: int, batch: int, **kw: Any) -> Any:
        start = time.perf_counter()
        real_map = client.map
        client.map = lambda *a, **k: real_map(*a, resources=never, **k)
        try:  # the two batches a run starts with
            futures = submit(range(min(n_tasks, batch)))
            futures += submit(range(len(futures), min(n_tasks, len(futures) + batch)))
        finally:
            del client.map
        return held(client, futures, start)

    return compute, compute_batches


def child(args: argparse.Namespace) -> None:
    """Start the cluster, note the driver's peak, extract, note it again, gather the timings."""
    import dask.dataframe  # noqa: F401 (loaded before the baseline: it does not grow with inputs)
    from distributed import Client, LocalCluster

    import faceetl
    from faceetl import pife as pife_module
    from faceetl.pipeline.stages import stage_seconds

    if args.dry:  # one worker, which the run's tasks never reach (see _submit_only)
        client = Client(LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     dashboard_address=":0"))  # fmt: skip
    else:
        client = faceetl.cluster(args.backend, args.workers, quiet=True)  # Pife's own call
        client.register_plugin(_timing_plugin())
    timers: dict[str, float] = {}
    pife_module._inputs = _timed(timers, "listing", pife_module._inputs)
    pife_module.recover = _timed(timers, "recover", pife_module.recover)
    pife_module.committed_paths = _timed(timers, "done paths", pife_module.committed_paths)
    if args.dry:
        pife_module.compute, batches = _submit_only(timers)
        if hasattr(pife_module, "compute_batches"):
            pife_module.compute_batches = batches
    baseline = _status("VmHWM")
    if args.trace:
        tracemalloc.start(30)
    params = {"faces": args.faces} if args.backend == "null" else {}
    pife = faceetl.Pife(args.backend, args.workers, partition_size=args.partition_size,
                        progress=False, **params)  # fmt: skip
    options = json.loads(args.storage_options) if args.storage_options else None
    began, start = time.time(), time.perf_counter()
    pife.extract(args.source, args.out, storage_options=options)
    seconds = time.perf_counter() - start
    if tracemalloc.is_tracing() and not args.dry:
        timers["traced peak in the run MiB"] = tracemalloc.get_traced_memory()[1] / 2**20
        timers["traced at the end MiB"] = tracemalloc.get_traced_memory()[0] / 2**20
        timers["top"] = top_allocations(tracemalloc.take_snapshot())
    result: dict[str, Any] = {
        "baseline_mib": baseline, "peak_mib": _status("VmHWM"), "now_mib": _status("VmRSS"),
        "seconds": seconds, "timers": timers, "slots": 0,
    }  # fmt: skip
    if not args.dry:
        timing = client.run(lambda dask_worker: vars(dask_worker.plugins["million-timing"]))
        firsts = [t["first"] for t in timing.values() if t["first"] is not None]
        lasts = [t["last"] for t in timing.values() if t["last"] is not None]
        stages: dict[str, float] = {}
        for got in client.run(stage_seconds).values():
            for k, v in got.items():
                stages[k] = stages.get(k, 0.0) + v
        result.update(
            first_task=min(firsts) - began if firsts else None,
            span=max(lasts) - min(firsts) if firsts else 0.0,
            busy=sum(t["busy"] for t in timing.values()),
            tasks=sum(t["tasks"] for t in timing.values()),
            slots=sum(client.nthreads().values()), stages=stages,
        )  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)
    client.close()


# -- the parent ----------------------------------------------------------------------------------


def _command(args: argparse.Namespace, source: str, out: str, options: Any, dry: bool) -> list[str]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--source", source, "--out", out,
        "--backend", args.backend, "--workers", str(args.workers), "--faces", str(args.faces),
    ]  # fmt: skip
    if args.partition_size:
        cmd += ["--partition-size", str(args.partition_size)]
    if options:
        cmd += ["--storage-options", json.dumps(options)]
    return cmd + (["--dry"] if dry else []) + (["--trace"] if args.trace else [])


def figures(label: str, n: int, r: dict[str, Any], done_before: int = 0) -> dict[str, Any]:
    """One column of the table from a child's result; ``done_before``: inputs committed already."""
    todo = n - done_before
    t = r["timers"]
    row = {
        "run": label, "inputs": n, "inputs to do": todo,
        "listing s": t.get("listing"), "listing us/input": 1e6 * t.get("listing", 0) / n,
        "resume scan s": t.get("recover", 0) + t.get("done paths", 0),
        "extract s": r["seconds"],
        "driver peak, import+cluster MiB": r["baseline_mib"], "driver peak MiB": r["peak_mib"],
        "driver growth MiB": r["peak_mib"] - r["baseline_mib"],
        "driver RSS at the end MiB": r["now_mib"],
        "driver MiB / 1,000 inputs": (r["peak_mib"] - r["baseline_mib"]) / n * 1000,
    }  # fmt: skip
    for step in ("listing", "done paths"):
        row[f"driver peak after {step} MiB"] = t.get(f"peak after {step} MiB")
    row.update({k: v for k, v in t.items() if k.startswith("traced")})
    if "graph and submit" in t:  # --dry
        row.update({"graph and submit s": t["graph and submit"],
                    "tasks on the scheduler": t["tasks on the scheduler"],
                    "driver peak at submit MiB": t["peak at submit MiB"]})  # fmt: skip
        return row
    parts = max(1, r["tasks"])
    row.update({
        "partitions": r["tasks"], "time to first task s": r["first_task"],
        "img/s": todo / r["seconds"], "extract us/input": 1e6 * r["seconds"] / max(1, todo),
        "tasks span s": r["span"],
        "scheduler overhead ms/partition": 1e3 * (r["slots"] * r["span"] - r["busy"]) / parts,
        "task ms/image": 1e3 * r["busy"] / max(1, todo),
    })  # fmt: skip
    for s in STAGES:
        row[f"{s} ms/image"] = 1e3 * r["stages"].get(s, 0.0) / max(1, todo)
    return row


def series(args: argparse.Namespace, tmp: Path, kind: str, sizes: list[int], data: list[bytes],
           options: Any = None) -> tuple[list[dict], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Every size of one kind (local or s3): columns of the table, the kill, the checks."""
    from faceetl.pipeline.inputs import auto_partition_size

    table: list[dict] = []
    checks: dict[str, Any] = {}
    killed: dict[str, Any] = {}
    if kind == "s3":
        from fsspec.core import url_to_fs

        fs, _ = url_to_fs("s3://x", **options)
        fs.mkdir("million")
        root = "s3://million"
    else:
        root = str(tmp)
    for n in sizes:
        start = time.perf_counter()
        source = (s3_inputs(fs, "million", n, args.per_folder, data) if kind == "s3"
                  else local_inputs(tmp, n, args, data))  # fmt: skip
        print(f"{kind} {n:,}: inputs made in {time.perf_counter() - start:.1f} s", flush=True)
        runs = [("", False)] if not args.dry else [("dry", True)]
        if args.kill and n == max(sizes) and not args.dry:
            runs.append(("kill", False))
        for tag, dry in runs:
            out_url = f"{root}/out-{n}{'-' + tag if tag else ''}"
            out = Output(out_url, options)
            cmd = _command(args, source, out_url, options, dry)
            log = tmp / f"log-{kind}-{n}-{tag or 'run'}.txt"
            label = f"{kind} {n:,}{' ' + tag if tag else ''}"
            before = half_done(args, source, out_url, options, n) if dry else 0
            if tag == "kill":
                size = args.partition_size or auto_partition_size(n, args.workers)
                killed = kill_at_half(cmd, out, n, size, log)
                print(f"{label}: {killed}", flush=True)
                before, label, log = killed["inputs committed"], f"{kind} {n:,} resume", tmp / f"log-{kind}-{n}-resume.txt"  # fmt: skip
            result = bench._result(start_child(cmd, log), log)
            table.append(figures(label, n, result, before))
            if "top" in result["timers"]:
                print(f"{label}: where the driver's Python memory is (at submit / at the end)\n  "
                      + "\n  ".join(result["timers"]["top"]), flush=True)  # fmt: skip
            print(f"{label}: {json.dumps(table[-1], default=str)}", flush=True)
            if not dry:
                checks[label] = out.check(n, source)
            if tag == "kill":
                full = next(c for c in table if c["run"] == f"{kind} {n:,}")
                killed.update({
                    "inputs left": n - before, "resume s": result["seconds"],
                    "full run s": full["extract s"],
                    "full run s x inputs left / inputs": full["extract s"] * (n - before) / n,
                    "resume / (full x left share)": result["seconds"] / (full["extract s"] * (n - before) / n),
                })  # fmt: skip
            if not args.keep:
                out.fs.rm(out.root, recursive=True)
    return table, killed, checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--s3", type=int, default=0, help="inputs of a run on moto's S3 server")
    ap.add_argument("--backend", default="null", help="null, mediapipe or any backend")
    ap.add_argument("--faces", type=int, default=0, choices=(0, 1), help="null: faces per image")
    ap.add_argument("--workers", type=int, default=2, help="Pife's concurrency")
    ap.add_argument("--partition-size", type=int, default=None, help="default: Pife's")
    ap.add_argument("--per-folder", type=int, default=500, help="inputs per folder")
    ap.add_argument("--side", type=int, default=64, help="the inputs' longer side, px")
    ap.add_argument("--symlinks", action="store_true", help="symbolic links, not hard links")
    ap.add_argument("--kill", action="store_true", help="kill at half and resume, largest size")
    ap.add_argument("--dry", action="store_true", help="listing, resume scan and graph only")
    ap.add_argument("--trace", action="store_true",
                    help="tracemalloc in the driver: Python memory by step, top places (slow)")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--storage-options", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import pandas as pd

    tmp = Path(tempfile.mkdtemp(prefix="faceetl-million-"))
    print(f"working in {tmp}", flush=True)
    if "FACEETL_HOME" not in os.environ and args.backend != "null":
        bench._home(tmp / "home")
    os.environ.setdefault("FACEETL_OFFLINE", "1")
    data = seeds(args.side)
    table, kills, checks = [], {}, {}
    try:
        if args.sizes:
            t, k, c = series(args, tmp, "local", sorted(args.sizes), data)
            table, checks = table + t, {**checks, **c}
            kills["local"] = k
        if args.s3:
            with moto_server() as options:
                t, k, c = series(args, tmp, "s3", [args.s3], data, options)
            table, checks = table + t, {**checks, **c}
            kills["s3"] = k
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    pd.set_option("display.width", 250)
    cmd = " ".join(["python", "benchmarks/million.py", *sys.argv[1:]])
    what = f"null ({args.faces} face)" if args.backend == "null" else args.backend
    print(f"\n{cmd}\n{what}, {args.workers} workers, {os.cpu_count()} cores, "
          f"{args.side} px JPEGs, {args.per_folder} per folder")  # fmt: skip
    print(pd.DataFrame(table).set_index("run").T.to_string(na_rep="", float_format=_fmt))
    local = [c for c in table if c["run"].startswith("local") and "resume" not in c["run"]]
    if len(local) > 1:
        print("\nslope between sizes (what grows with the inputs)")
        for a, b in zip(local, local[1:], strict=False):
            dn = (b["inputs"] - a["inputs"]) / 1000
            print(f"  {a['inputs']:>9,} -> {b['inputs']:>9,}: driver peak "
                  f"{(b['driver peak MiB'] - a['driver peak MiB']) / dn:.3f} MiB / 1,000 inputs; "
                  f"listing x{b['listing s'] / a['listing s']:.1f}, extract "
                  f"x{b['extract s'] / a['extract s']:.1f} for x{b['inputs'] / a['inputs']:.0f} inputs")  # fmt: skip
    for kind, k in kills.items():
        if k:
            print(f"\n{kind}: killed at half, then resumed")
            print(pd.Series(k).to_string(float_format=_fmt))
    if checks:
        print("\nthe outputs")
        print(pd.DataFrame(checks).to_string())


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


if __name__ == "__main__":
    main()
