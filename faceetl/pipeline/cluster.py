"""Start the Dask cluster that runs extraction: dask-cuda on GPU machines, a CPU LocalCluster else."""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ..backends.base import backend_spec

log = logging.getLogger(__name__)


_MODEL_THREADS_LOCK = threading.Lock()
_model_tasks = 0
_threads_before: int | None = None


@contextlib.contextmanager
def one_model_thread() -> Iterator[None]:
    """Run a partition's models with one torch thread, whatever the scheduler.

    torch's results depend on its intra-op thread count (landmarks moved by up to 1e-4 px and
    crops by a few grey levels between 1 and 2 threads). faceetl's worker processes have one
    thread each (Dask's ``OMP_NUM_THREADS=1``), so every task does the same: the same rows, bit
    for bit, under the sync and threaded schedulers and on any cluster. Under Dask's default
    threaded scheduler one thread per task is also the fastest (no oversubscription); the sync
    scheduler loses torch's own parallelism (measured on 2 cores: retinaface 1.06x, mtcnn 1.6x,
    ssd 1.9x slower a photo there). The count in force before is restored when the last
    partition running in this process ends (torch's MKL setting is process-wide, so it is not
    restored while another partition runs).
    """
    import torch

    global _model_tasks, _threads_before
    with _MODEL_THREADS_LOCK:
        if _model_tasks == 0:
            _threads_before = torch.get_num_threads()
        _model_tasks += 1
        torch.set_num_threads(1)  # this thread's OpenMP team, and MKL's
    try:
        yield
    finally:
        with _MODEL_THREADS_LOCK:
            _model_tasks -= 1
            if _model_tasks == 0 and _threads_before is not None:
                torch.set_num_threads(_threads_before)


def cuda_device_count() -> int:
    """Number of visible CUDA GPUs (0 without torch or CUDA)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def in_worker_process() -> bool:
    """True inside a process spawned by multiprocessing (e.g. a Dask worker), not the user's."""
    return multiprocessing.parent_process() is not None and "__mp_main__" in sys.modules


@contextlib.contextmanager
def _script_not_reimported() -> Iterator[None]:
    """While worker processes start, hide the main script from multiprocessing's spawn.

    Spawned workers re-import ``__main__`` by its file; a script written without an
    ``if __name__ == "__main__":`` guard would then run again in every worker. Workers do not need
    the script (Dask sends functions by value), so its path is hidden while they start.
    """
    main = sys.modules.get("__main__")
    saved = getattr(main, "__file__", None) if main is not None else None
    if saved is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = saved


@functools.cache
def script_safe_nanny() -> type:
    """distributed's Nanny, (re)starting its worker process with the script hidden.

    A nanny restarts a worker that died (killed, out of memory, crashed) long after the cluster
    started; spawned then with the script visible, the new process would run a guard-less
    script's body again. Every (re)start goes through ``instantiate``, so it is wrapped.
    """
    from distributed import Nanny

    class ScriptSafeNanny(Nanny):
        async def instantiate(self) -> Any:
            with _script_not_reimported():
                return await super().instantiate()

    return ScriptSafeNanny


#: threads each process gives to decoding the next batch and encoding crops (see
#: :func:`faceetl.pipeline.extract.io_pool`); cluster() sets it in its workers' environment
ENV_IO_THREADS = "FACEETL_IO_THREADS"


#: the thread-count variables of the OpenMP, MKL and OpenBLAS pools a worker's libraries start
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _worker_environ(io_threads: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Dask's environment for new workers, without ``MALLOC_TRIM_THRESHOLD_``; with
    ``threads``, the OpenMP/MKL/OpenBLAS pools sized to the worker's share of the cores (Dask's
    default is 1 each).

    Setting that variable turns off glibc's adaptive mmap threshold, so every large tensor or
    image buffer is a fresh mmap with page faults: measured here, a RetinaFace worker ran at
    3.9 img/s with it and 6.0 without (6.2 in a plain process). Thread caps stay (one thread
    per worker process). Also takes Dask's value of it out of this process's own environment,
    where an earlier Dask cluster's Nanny left it (see below).
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    dask_value = env.pop("MALLOC_TRIM_THRESHOLD_", None)
    # distributed's Nanny writes its pre-spawn environment into this process's os.environ
    # before spawning (nanny.py, WorkerProcess.start), so a cluster started here earlier with
    # Dask's defaults leaves the variable behind for every later worker to inherit. Dask's own
    # value is taken for that leftover; any other value is the user's and stays.
    if dask_value is not None and os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(dask_value):
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    if io_threads is not None:
        env[ENV_IO_THREADS] = str(io_threads)
    if threads is not None:
        # the Nanny takes this process's variables over its config, and writes its own into
        # them: a value an earlier faceetl cluster left here is taken away, the user's stays
        for k in THREAD_VARIABLES:
            if k in _LEFT and os.environ.get(k) == _LEFT[k]:
                del os.environ[k]
        env.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
        _LEFT.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    return env


#: the thread variables the last faceetl cluster started here set (the Nanny leaves them behind)
_LEFT: dict[str, str] = {}


def thread_share(threads: int, cores: int, workers: int) -> Any:
    """A worker plugin that holds each worker's libraries to its share of the cores: OpenCV's
    own pool (``cv2.setNumThreads``; its parallel loops otherwise take every core, so one
    "single-threaded" worker used two and two workers oversubscribed them) and torch's, beside
    the OpenMP/MKL/OpenBLAS variables set before the process starts; it says so in the worker's
    log (the dashboard's worker logs, ``client.get_worker_logs()``)."""
    from distributed import WorkerPlugin

    class ThreadShare(WorkerPlugin):
        name = "faceetl-thread-share"

        def setup(self, worker: Any) -> None:
            import cv2
            import torch

            cv2.setNumThreads(threads)
            torch.set_num_threads(threads)
            logging.getLogger("distributed.worker").info(
                "faceetl: %d of %d cores for this worker (%d workers): OpenCV, torch, OpenMP, "
                "MKL and OpenBLAS capped at %d thread(s)", threads, cores, workers, threads,
            )  # fmt: skip

    return ThreadShare()


def cpu_cores() -> int:
    """Cores this process may use (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _owning_client(lc: Any) -> Any:
    """A ``distributed.Client`` on ``lc`` whose ``close()`` (or ``with`` block) closes ``lc``."""
    from distributed import Client

    class OwningClient(Client):
        """A Client that owns its local cluster: closing it shuts the workers down."""

        #: faceetl made it: faceetl may tidy what its scheduler keeps (see progress.compute_batches)
        made_by_faceetl = True

        def close(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().close(*args, **kwargs)
            finally:
                lc.close()

    return OwningClient(lc)


def cluster(
    backend: str | None = None,
    concurrency: int | None = None,
    gpu: bool | None = None,
    dashboard_address: str | None = ":8787",
    quiet: bool = False,
    **cluster_kwargs: Any,
):
    """Start a local cluster for ``backend`` and return a ``distributed.Client`` connected to it.

    On a machine with CUDA GPUs and dask-cuda, a ``LocalCUDACluster`` with one worker per GPU
    runs ``concurrency`` partitions at once per GPU (for backends that use a GPU). Otherwise a CPU
    ``LocalCluster`` with ``concurrency`` single-threaded worker processes. ``concurrency``
    defaults to the backend's entry in the worker map, on a CPU cluster at most one worker per
    core (pass ``concurrency`` to ask for more). The dashboard link is printed. Closing the
    returned client (or leaving its ``with`` block) shuts the cluster down.
    """
    from distributed import LocalCluster

    spec = backend_spec(backend) if backend else None
    n = concurrency or (spec.workers if spec else None)
    ngpu = cuda_device_count()
    use_gpu = (ngpu > 0 and (spec is None or spec.gpu)) if gpu is None else gpu
    import dask

    # the cores left to decoding and encoding beside the detectors: on a GPU worker all its
    # share of the cores (decode fallback, PNG encoding); a CPU worker's own core is busy
    # detecting, so one more thread there keeps the next batch decoding without oversubscribing
    io_threads = max(2, cpu_cores() // max(1, ngpu)) if use_gpu else 1
    if not use_gpu and concurrency is None:  # the worker map's default, at most one per core
        n = min(n or cpu_cores(), cpu_cores())
    workers = max(1, ngpu) if use_gpu else max(1, n or cpu_cores())
    share = max(1, cpu_cores() // workers)  # each worker's libraries: its share of the cores
    environ = _worker_environ(io_threads, share)
    with (
        _script_not_reimported(),
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
    ):
        if use_gpu:
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError as e:
                raise ImportError(
                    "a CUDA GPU is present but dask-cuda is not installed: "
                    "pip install 'faceetl[gpu]', or pass gpu=False"
                ) from e
            lc = LocalCUDACluster(
                threads_per_worker=n or 1,
                dashboard_address=dashboard_address,
                worker_class=script_safe_nanny(),
                **cluster_kwargs,
            )
        else:
            lc = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                worker_class=script_safe_nanny(),
                dashboard_address=dashboard_address,
                **cluster_kwargs,
            )
    client = _owning_client(lc)
    client.register_plugin(thread_share(share, cpu_cores(), len(lc.workers)))
    if not quiet:
        kind = "GPU (dask-cuda)" if use_gpu else "CPU"
        print(
            f"faceetl: {kind} cluster with {len(lc.workers)} workers; dashboard: {client.dashboard_link}"
        )
    return client
