"""What every trainer shares: devices, mixed precision, seeded loaders, checkpoints and DDP.

- :func:`device_for` and :func:`amp_setup` (autocast + ``GradScaler``; :meth:`Amp.step` runs
  backward and an optimiser step, skipping non-finite losses).
- :func:`make_loader`: a DataLoader whose order and worker seeds (torch, numpy, ``random``) are
  drawn from ``(seed, epoch)`` (a ``DistributedSampler`` per rank under DDP); :func:`inference`
  runs a model over a dataset in eval mode (the evaluators' and ``predict``'s loop).
- :class:`Checkpoints`: ``epoch_NNN.pt`` + ``last.pt`` written atomically, the last ``keep``
  epochs kept, resumed from the folder or from a given file or folder, versions checked.
- :func:`launch`: runs the per-process training function once, under ``torchrun`` or an
  initialised process group, or in ``world_size`` spawned processes (gloo on CPU, nccl on
  CUDA) and hands back rank 0's result.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

LAST = "last.pt"
#: the checkpoint layout this faceetl writes and the newest it reads
CHECKPOINT_VERSION = 1

R = TypeVar("R")


# --- values and progress ------------------------------------------------------------------------


def plain(v: Any) -> Any:
    """Checkpoint-safe (``weights_only``) Python values: numpy scalars, paths, containers."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def progress(it: Any, enabled: bool, desc: str, unit: str = "batch") -> Any:
    """``it`` wrapped in a tqdm bar (notebook-aware) when ``enabled`` on a terminal or in a
    notebook; in a log file (no terminal) a plain line every ``LOG_EVERY`` seconds and one at
    the end, never a bare carriage return."""
    if not enabled:
        return it
    from ..pipeline.progress import _in_kernel, tqdm

    if _in_kernel() or sys.stderr.isatty():
        return tqdm(it, desc=desc, unit=unit, leave=True)
    return _LogLines(it, desc, unit)


class _LogLines:
    """``it``, with a progress line on stderr now and then (see :func:`progress`); takes
    tqdm's ``set_postfix`` (its values end the next line)."""

    def __init__(self, it: Any, desc: str, unit: str) -> None:
        self.it, self.desc, self.unit = it, desc, unit
        self.total = len(it) if hasattr(it, "__len__") else None
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )

    def _line(self, text: str) -> None:
        tail = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {text}{tail}", file=sys.stderr, flush=True)

    def __iter__(self) -> Any:
        import time

        from ..pipeline.progress import LOG_EVERY

        start = last = time.perf_counter()
        n = 0
        of = f"/{self.total}" if self.total is not None else ""
        for item in self.it:
            yield item
            n += 1
            now = time.perf_counter()
            if now - last >= LOG_EVERY:
                last = now
                self._line(f"{self.unit} {n}{of}, {n / (now - start):.2f}/s")
        self._line(f"{n}{of} {self.unit} done in {time.perf_counter() - start:.1f} s")


# --- devices and mixed precision ----------------------------------------------------------------


def distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def device_for(device: str | torch.device | None, rank: int = 0) -> torch.device:
    """``device``, else CUDA where available, else the CPU; under DDP the rank's own GPU."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None and distributed():
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        return dev
    if torch.cuda.is_available():
        if distributed():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(device: torch.device, amp: bool):
    """Mixed precision when ``amp``: float16 on CUDA, bfloat16 elsewhere."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp)


@dataclass
class Amp:
    """Mixed precision of one run: autocast and, for float16 on CUDA, a gradient scaler."""

    device: torch.device
    enabled: bool
    scaler: torch.amp.GradScaler

    def autocast(self):
        return autocast(self.device, self.enabled)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> bool:
        """Backward of ``loss`` and an optimiser step; False (step skipped) for a non-finite
        loss (on any rank under DDP; the scaler skips such steps itself)."""
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if distributed() and not self.scaler.is_enabled():
            finite = finite.to(self.device)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        stepped = self.scaler.is_enabled() or bool(finite)
        if stepped:
            self.scaler.step(opt)
        self.scaler.update()
        return stepped

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(dict(state))


def amp_setup(device: torch.device, amp: bool | None) -> Amp:
    """``amp`` (default: on CUDA only) for ``device``: float16 + GradScaler on CUDA, bfloat16
    autocast without a scaler elsewhere."""
    enabled = device.type == "cuda" if amp is None else bool(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")
    return Amp(device, enabled, scaler)


# --- data loading -------------------------------------------------------------------------------


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order (``shuffle``) and worker seeds are drawn from ``(seed, epoch)``.

    The loader's generator seeds each worker's torch, ``random`` and numpy (torch does this for
    every worker since 1.9, from the generator's draw), so augmentations drawn in workers repeat
    for a ``(seed, epoch)``. With ``world_size > 1`` each rank reads its share through a
    ``DistributedSampler`` (seeded with ``seed``, at ``epoch``).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    sampler = None
    if world_size > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory,
        drop_last=drop_last, generator=g,
    )  # fmt: skip


def model_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device``, else the device ``model``'s parameters are on."""
    return torch.device(device) if device is not None else next(model.parameters()).device


@torch.no_grad()
def inference(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    amp: bool | None = None,
    num_workers: int = 0,
    *,
    collate_fn: Callable | None = None,
    bar: bool = False,
    desc: str = "evaluate",
) -> Iterator[tuple[Any, Any]]:
    """``(model(x), rest)`` for every batch ``(x, rest)`` of ``dataset``, in order.

    ``model`` runs on ``device`` in eval mode without gradients (its training mode is restored
    after), under autocast when ``amp`` (default: on CUDA); ``bar`` shows progress.
    """
    model.to(device)
    amp = device.type == "cuda" if amp is None else bool(amp)
    loader = make_loader(dataset, batch_size, num_workers=num_workers, collate_fn=collate_fn,
                         pin_memory=device.type == "cuda")  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        for x, rest in progress(loader, bar, desc):
            with autocast(device, amp):
                out = model(x.to(device, non_blocking=True))
            yield out, rest
    finally:
        model.train(was_training)


def shard(n: int, batch_size: int, world_size: int) -> tuple[int, int]:
    """``(samples, batch)`` of one rank: its share of ``n`` samples (padded as the
    ``DistributedSampler`` does) and its part of the total ``batch_size``."""
    samples = n if world_size <= 1 else -(-n // world_size)
    return samples, max(1, batch_size // world_size)


# --- checkpoints --------------------------------------------------------------------------------


def save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, so a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def link(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s content atomically: a hard link where possible, else a copy."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint file: ``checkpoint`` itself, or ``last.pt`` inside a folder."""
    p = Path(checkpoint)
    return p / LAST if p.is_dir() else p


def _epoch_of(path: Path) -> int:
    return int(path.stem.removeprefix("epoch_"))


class Checkpoints:
    """The checkpoints of one run in ``directory`` (None: none written, none resumed).

    Every epoch writes ``epoch_NNN.pt`` and ``last.pt`` (the same file, hard-linked where the
    file system allows), each through a temporary file; ``keep`` bounds the ``epoch_NNN.pt``
    files kept (None: all; 0: only ``last.pt``). ``resume``: True resumes from ``last.pt`` in
    ``directory`` when there is one, a path resumes from that checkpoint file (or folder's
    ``last.pt``), False starts over. Only the ``main`` process (rank 0) writes. Messages go
    to ``logger`` (the trainer's).
    """

    def __init__(
        self,
        directory: str | os.PathLike | None,
        resume: bool | str | os.PathLike = True,
        *,
        keep: int | None = None,
        main: bool = True,
        logger: logging.Logger = log,
    ) -> None:
        self.dir = None if directory is None else Path(directory)
        self.resume = resume
        self.keep = None if keep is None else max(int(keep), 0)
        self.main = bool(main)
        self.log = logger
        if self.dir is not None and self.main:
            self.dir.mkdir(parents=True, exist_ok=True)

    def source(self) -> Path | None:
        """The checkpoint a run resumes from, if any."""
        if isinstance(self.resume, (str, os.PathLike)):
            path = checkpoint_file(self.resume)
            if not path.is_file():
                raise FileNotFoundError(f"no checkpoint to resume from at {path}")
            return path
        if self.resume and self.dir is not None and (self.dir / LAST).is_file():
            return self.dir / LAST
        return None

    def load(
        self,
        map_location: Any,
        epochs: int,
        check: Callable[[Mapping[str, Any], Path], None] | None = None,
    ) -> dict[str, Any] | None:
        """The checkpoint to resume from (``check(ck, path)`` raises when it does not fit this
        run), or None: a fresh run (warned about when it will overwrite checkpoints)."""
        path = self.source()
        if path is None:
            if self.main and self.dir is not None and (self.dir / LAST).is_file():
                self.log.warning("resume=False: checkpoints in %s will be overwritten", self.dir)
            return None
        ck = torch.load(path, map_location=map_location, weights_only=True)
        version = int(ck.get("version", 1))
        if version > CHECKPOINT_VERSION:
            raise ValueError(
                f"{path} is a version {version} checkpoint; this faceetl reads versions up to "
                f"{CHECKPOINT_VERSION}"
            )
        if check is not None:
            check(ck, path)
        if self.main:
            self.log.info("resuming from %s at epoch %d of %d", path, int(ck["epoch"]) + 1, epochs)
        return ck

    def save(self, state: Mapping[str, Any], epoch: int) -> None:
        """Write epoch ``epoch``'s checkpoint (the ``version`` added) and prune old epochs."""
        if self.dir is None or not self.main:
            return
        ck = {"version": CHECKPOINT_VERSION, **state}
        last = self.dir / LAST
        if self.keep == 0:
            save(ck, last)
            return
        path = self.dir / f"epoch_{epoch:03d}.pt"
        save(ck, path)
        link(path, last)
        if self.keep is not None:
            done = sorted(self.dir.glob("epoch_*.pt"), key=_epoch_of)
            for p in done[: -self.keep]:
                p.unlink(missing_ok=True)

    def write(self, name: str, obj: Any) -> None:
        """Another file of the run (e.g. the final bare weights), written by the main process."""
        if self.dir is not None and self.main:
            save(obj, self.dir / name)


# --- distributed data parallel ------------------------------------------------------------------


def backend_for(device: str | torch.device | None, backend: str | None = None) -> str:
    """``backend``, else nccl for CUDA runs and gloo otherwise."""
    if backend:
        return backend
    on_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    return "nccl" if on_cuda else "gloo"


def wrap_ddp(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when ``world_size > 1``."""
    if world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` summed over the processes (itself outside DDP), on the CPU."""
    if not distributed() or dist.get_world_size() == 1:
        return t
    t = t.to(device)
    dist.all_reduce(t)
    return t.cpu()


def barrier() -> None:
    """Wait for every process (nothing outside DDP)."""
    if distributed():
        dist.barrier()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    fn: Callable[[int, int], R],
    world_size: int = 1,
    *,
    device: str | torch.device | None = None,
    backend: str | None = None,
) -> R:
    """Run ``fn(rank, world_size)`` (picklable: a module-level function or a partial of one).

    Under an initialised process group or ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each
    process runs it once; otherwise ``world_size > 1`` spawns that many processes (one GPU each
    with nccl, CPU processes with gloo; the backend from :func:`backend_for`) joined by a free
    local port, and returns rank 0's result; ``world_size == 1`` calls it.
    """
    if distributed():
        return fn(dist.get_rank(), dist.get_world_size())
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and env_world > 1 and "RANK" in os.environ:
        dist.init_process_group(backend_for(device, backend), init_method="env://")
        try:
            return fn(int(os.environ["RANK"]), env_world)
        finally:
            dist.destroy_process_group()
    if world_size <= 1:
        return fn(0, 1)
    import torch.multiprocessing as mp

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    name = backend_for(device, backend)
    if name == "nccl" and torch.cuda.device_count() < world_size:
        raise RuntimeError(
            f"world_size={world_size} needs as many GPUs, {torch.cuda.device_count()} found"
        )
    with tempfile.TemporaryDirectory(prefix="faceetl_ddp_") as tmp:
        result = Path(tmp) / "result.pt"
        mp.spawn(
            _spawned,
            args=(fn, world_size, _free_port(), name, os.fspath(result)),
            nprocs=world_size,
            join=True,
        )
        # our own file, written by rank 0 of this call: whole objects, not only tensors, on
        # the devices rank 0 had
        return torch.load(result, weights_only=False)


def _spawned(
    rank: int, fn: Callable[[int, int], Any], world_size: int, port: int, backend: str, result: str
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if backend == "gloo":  # share the cores rather than oversubscribe them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        out = fn(rank, world_size)
        if rank == 0:
            save(out, Path(result))
    finally:
        dist.destroy_process_group()


__all__ = [
    "CHECKPOINT_VERSION",
    "LAST",
    "Amp",
    "Checkpoints",
    "all_reduce_sum",
    "amp_setup",
    "autocast",
    "backend_for",
    "barrier",
    "checkpoint_file",
    "device_for",
    "distributed",
    "inference",
    "launch",
    "link",
    "make_loader",
    "model_device",
    "plain",
    "progress",
    "save",
    "shard",
    "wrap_ddp",
]
