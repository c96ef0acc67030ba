"""Computing a face frame with progress counted in images (img/s, ETA) and a one-line summary.

Dask's own bars count tasks (one per partition of up to 64 images) and say nothing at the end.
Here each finished partition adds its images: a tqdm bar on a terminal or in a notebook (tqdm's
widget where ipywidgets imports, else its plain bar); in a log file (no terminal) a plain line
every ``LOG_EVERY`` seconds, never a bare carriage return.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from typing import Any

import dask
import numpy as np
import pandas as pd

from .. import schema

LOG_EVERY = 10.0  # seconds between the plain progress lines written to a non-terminal


def remember_images(frame: Any, n_images: int | None) -> Any:
    """Record on ``frame`` (a Dask collection) how many images it will process, the progress
    total (:func:`images_planned` reads it back)."""
    if n_images is not None:
        frame._faceetl_images = int(n_images)
    return frame


def images_planned(frame: Any) -> int | None:
    """The number of images :func:`remember_images` recorded on ``frame``, else None."""
    return getattr(frame, "_faceetl_images", None)


def images_of(frame: pd.DataFrame) -> int:
    """Distinct input images in a piece of a face frame (rows with a ``path``), or the
    ``n_images`` of a frame of counts (what a run writing its own output returns)."""
    if is_counts(frame):
        return int(frame["n_images"].sum())
    return int(frame["path"].nunique()) if "path" in frame.columns else len(frame)


class ImageProgress:
    """Counts images as partitions finish: a bar on terminals and notebooks, lines in logs."""

    def __init__(self, total: int | None, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = self._last_line = time.perf_counter()
        self._bar = None
        if not enabled:
            return
        if _in_kernel() or sys.stderr.isatty():
            self._bar = tqdm(total=total, unit="img", desc="faceetl", smoothing=0.1)

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last_line >= LOG_EVERY:
            self._last_line = now
            print(f"faceetl: {self._status(now)}", file=sys.stderr, flush=True)

    def _status(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            return f"{self.done}/{self.total} images, {rate:.1f} img/s, ETA {_duration(eta)}"
        return f"{self.done} images, {rate:.1f} img/s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (a notebook), without importing IPython."""
    if "IPython" not in sys.modules:
        return False
    try:
        shell = sys.modules["IPython"].get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _in_notebook() -> bool:
    """Whether tqdm's notebook widget can show: a Jupyter kernel where ipywidgets imports."""
    if not _in_kernel():
        return False
    try:
        import ipywidgets  # noqa: F401 (tqdm's widget needs it; without it, no widget)
    except ImportError:
        return False
    return True


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar (tqdm's arguments): the notebook widget where :func:`_in_notebook`, else the
    plain text bar. Not ``tqdm.auto``, which in a notebook without ipywidgets warns "IProgress
    not found" before it falls back to the plain bar."""
    if _in_notebook():
        from tqdm.notebook import tqdm as bar
    else:
        from tqdm import tqdm as bar
    return bar(*args, **kwargs)


#: the columns of a frame of counts (:func:`counts`)
COUNTS = ["n_images", "n_ok", "n_no_face", "n_error", "n_faces"]


def is_counts(frame: pd.DataFrame) -> bool:
    """True for a frame of counts rather than face rows."""
    return "n_images" in frame.columns and "path" not in frame.columns


def counts(frame: pd.DataFrame) -> pd.DataFrame:
    """One row: images, ok, no_face and error images, faces of a piece of a face frame (an
    image counts as ok with one face, else as error with an error row, else as no_face)."""
    status = frame["status"].astype(str)
    g = frame.assign(_ok=status == schema.STATUS_OK, _err=status.str.startswith("error"))
    g = g.groupby("path")
    ok, err = g["_ok"].any(), g["_err"].any() & ~g["_ok"].any()
    n = int(g.ngroups)
    row = [n, int(ok.sum()), n - int(ok.sum()) - int(err.sum()), int(err.sum())]
    return pd.DataFrame([[*row, int((status == schema.STATUS_OK).sum())]], columns=COUNTS)


def summary(frame: pd.DataFrame, seconds: float) -> str:
    """``N images: a ok, b no_face, c error; F faces; R img/s`` of a computed face frame (or
    of a frame of :func:`counts`)."""
    if not is_counts(frame):
        if not {"path", "status"} <= set(frame.columns):
            return f"{len(frame)} rows in {seconds:.1f} s"
        frame = counts(frame)
    n = frame.sum(numeric_only=True)
    return (
        f"{int(n['n_images'])} images: {int(n['n_ok'])} ok, {int(n['n_no_face'])} no_face, "
        f"{int(n['n_error'])} error; {int(n['n_faces'])} faces; "
        f"{n['n_images'] / max(seconds, 1e-9):.1f} img/s"
    )


def compute_frame(
    collection: Any, progress: bool = True, summarize: bool = True, **compute_kwargs: Any
) -> Any:
    """Compute ``collection``; for a face frame count images as partitions finish, then print
    the summary line (both only when ``progress``; ``summarize=False``: the caller prints it)."""
    import dask.dataframe as dd

    if not isinstance(collection, dd.DataFrame):
        return dask.compute(collection, **compute_kwargs)[0]
    bar = ImageProgress(images_planned(collection), enabled=progress)
    parts = collection.to_delayed()
    try:
        client = distributed_client(collection)
        if client is not None:
            from distributed import as_completed, span

            with span("faceetl", _run_name(collection)):  # one span a run, on the dashboard
                futures = client.compute(parts)
            del parts  # the graph: the scheduler has it
            index = {f.key: i for i, f in enumerate(futures)}
            results: list[Any] = [None] * len(futures)
            pending = as_completed(futures)
            del futures  # a finished task is released as soon as its result is here
            for fut in pending:
                _take(fut, index, results, bar)
                del fut
        else:
            results = _compute_local(parts, bar, compute_kwargs)
    finally:
        bar.close()
    frame = _concat(results) if results else collection._meta
    if progress and summarize:
        print(f"faceetl: {summary(frame, bar.elapsed)}", flush=True)
    return frame


def _take(fut: Any, index: dict[Any, int], results: list[Any], bar: ImageProgress) -> None:
    """A finished task's result into its place in ``results`` (``index``: key -> place, the
    key dropped), kept compact, its images counted on ``bar``."""
    part = fut.result()
    results[index.pop(fut.key)] = _compact(part)
    bar.update(images_of(part))


def _compact(part: Any) -> Any:
    """A partition's result as it waits for the others: a frame of counts (one per partition
    of a run that writes its own output: thousands of them) as its numbers only."""
    if isinstance(part, pd.DataFrame) and list(part.columns) == COUNTS:
        return part.to_numpy(dtype="int64")
    return part


def _concat(results: list[Any]) -> pd.DataFrame:
    """The partitions' results as one frame (counts as the frame of :data:`COUNTS` that
    concatenating their frames gives: each partition's row numbers kept)."""
    if not results:
        return pd.DataFrame({c: pd.Series([], dtype="int64") for c in COUNTS})
    if all(isinstance(r, np.ndarray) for r in results):
        index = np.concatenate([np.arange(len(r), dtype="int64") for r in results])
        return pd.DataFrame(np.concatenate(results), columns=COUNTS, index=index)
    return pd.concat(
        pd.DataFrame(r, columns=COUNTS, index=np.arange(len(r), dtype="int64"))
        if isinstance(r, np.ndarray) else r
        for r in results
    )  # fmt: skip


def compute_batches(
    client: Any,
    submit: Callable[[range], list[Any]],
    n_tasks: int,
    batch: int,
    images: int | None = None,
    progress: bool = True,
    name: str = "faceetl",
) -> pd.DataFrame:
    """The results of ``n_tasks`` tasks that ``submit(range(k0, k1))`` sends to ``client``
    (their futures, in order), ``batch`` at a time, as one frame in task order.

    A batch goes when fewer than ``batch`` tasks are left in the scheduler, so it never holds
    more than two batches: the driver's memory (the graph, the scheduler's task states, which
    live in this process with a local cluster) does not grow with the number of tasks, and the
    first tasks start before the last ones are made. A finished task is released at once.
    Progress counts images, as :func:`compute_frame` does; one span ``name`` on the dashboard.
    On a cluster faceetl made (:func:`faceetl.cluster`), distributed's logs of the messages
    sent are emptied after each batch (:func:`_forget_sent`); a user's own client is left as it
    is (its ``distributed.admin.low-level-log-length`` caps them).
    """
    from distributed import as_completed, span

    tidy = getattr(client, "made_by_faceetl", False)

    bar = ImageProgress(images, enabled=progress)
    results: list[Any] = [None] * n_tasks
    index: dict[Any, int] = {}  # key -> task number, of the tasks in the scheduler
    pending = as_completed()
    sent = 0
    try:
        with span("faceetl", name):
            while sent < n_tasks or index:
                while sent < n_tasks and len(index) < batch:
                    if tidy:
                        _forget_sent(client)
                    tasks = range(sent, min(n_tasks, sent + batch))
                    futures = submit(tasks)
                    index.update({f.key: k for f, k in zip(futures, tasks, strict=True)})
                    pending.update(futures)
                    sent = tasks.stop
                    del futures
                _take(next(pending), index, results, bar)
    finally:
        bar.close()
        if tidy:
            _forget_sent(client)
    return _concat(results)


def _forget_sent(client: Any) -> None:
    """Empty distributed's logs of the messages that carried a run's tasks.

    distributed keeps, for developers, the last 1,000 batches of messages each of its streams
    sent (Dask's ``distributed.admin.low-level-log-length``): the client's to the scheduler
    (each batch of tasks under 1 MB, with its inputs; a whole graph of a run, over 1 MB, is
    not kept) and the scheduler's to each worker (every task sent, with its inputs: ~1,500
    tasks a worker, ~10 KB each). On a local cluster the scheduler lives in this process, so
    both would hold tasks long done. Only for clusters faceetl made: the logs are a debugging
    aid of the user's own clients, theirs to keep."""
    log = getattr(getattr(client, "scheduler_comm", None), "recent_message_log", None)
    if isinstance(log, collections.deque):
        log.clear()
    try:
        client.run_on_scheduler(_forget_sent_to_workers)
    except Exception:  # a scheduler that cannot run it (another version, closed): kept
        pass


def _forget_sent_to_workers(dask_scheduler: Any) -> None:
    """On the scheduler: empty the logs of what its streams to the workers sent."""
    for stream in getattr(dask_scheduler, "stream_comms", {}).values():
        log = getattr(stream, "recent_message_log", None)
        if isinstance(log, collections.deque):
            log.clear()


def _run_name(collection: Any) -> str:
    """The span of a run: what computes it (``extract_partition``, ``commit_partition``, ...)
    and its images."""
    name = str(getattr(collection, "_name", "faceetl")).rsplit("-", 1)[0]
    n = images_planned(collection)
    return f"{name} ({n} images)" if n is not None else name


def distributed_client(collection: Any = None) -> Any:
    """The distributed client Dask itself would compute ``collection`` on (any collection
    computed by default, without one), else None (a ``scheduler=`` set in Dask's config wins
    over a default client, as in ``dask.compute``)."""
    from dask.base import get_scheduler

    found = get_scheduler(collections=None if collection is None else [collection])
    client = getattr(found, "__self__", None)
    try:
        from distributed import Client
    except ImportError:
        return None
    return client if isinstance(client, Client) else None


def _compute_local(parts: list[Any], bar: ImageProgress, kwargs: dict[str, Any]) -> list[Any]:
    """Compute the partitions with the local scheduler, counting each as it finishes."""
    from dask.callbacks import Callback

    keys = {p.key for p in parts}

    class Count(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001 (Dask's hook)
            if key in keys and isinstance(result, pd.DataFrame):
                bar.update(images_of(result))

    with Count():
        return list(dask.compute(*parts, **kwargs))
