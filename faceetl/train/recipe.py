"""The one shape of a training recipe: a frozen run config and a per-process training loop.

A recipe's public ``train(...)`` checks its inputs, builds its config (a frozen
:class:`RunConfig` subclass, picklable for spawned processes) and calls
:meth:`Recipe.run`, which launches one process per rank (:func:`~.common.launch`). Each
process makes a :class:`Recipe` subclass that supplies only what is its own: the model and
optimiser (:meth:`Recipe.build`), one optimisation step (:meth:`Recipe.step`), the epoch's
metrics row (:meth:`Recipe.end_epoch`), the config and extra fields its checkpoints record.
The base sets up the device, mixed precision and seed, resumes from a checkpoint, draws
each epoch's seeded loader, shows progress, logs, writes a checkpoint every epoch and
returns ``(model, metrics)``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .common import (
    Checkpoints,
    amp_setup,
    barrier,
    device_for,
    launch,
    make_loader,
    plain,
    progress,
    shard,
)


def plain_path(value: Any) -> Any:
    """``value`` as a string when it is a path (``os.PathLike``), else as it is."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


@dataclass(frozen=True, kw_only=True, eq=False)
class RunConfig:
    """What every recipe's run takes; a recipe's config adds its own fields.

    Paths and devices are normalised to plain strings here, once, so a config pickles to
    spawned processes and records cleanly in checkpoints.
    """

    train: Dataset
    val: Dataset | None
    epochs: int
    batch_size: int
    lr: float
    checkpoint_dir: str | os.PathLike | None  # paths and devices: stored as strings
    resume: bool | str | os.PathLike
    device: str | torch.device | None
    amp: bool | None
    num_workers: int
    progress: bool
    seed: int
    #: ``epoch_NNN.pt`` files kept (None: all; see :class:`~.common.Checkpoints`)
    keep: int | None
    dist_backend: str | None

    def __post_init__(self) -> None:
        # a frozen dataclass sets its own fields through object.__setattr__
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("checkpoint_dir", plain_path(self.checkpoint_dir))
        put("resume", plain_path(self.resume))
        put("device", None if self.device is None else str(self.device))
        put("epochs", int(self.epochs))
        put("batch_size", int(self.batch_size))
        put("lr", float(self.lr))
        put("num_workers", int(self.num_workers))
        put("progress", bool(self.progress))
        put("seed", int(self.seed))


C = TypeVar("C", bound=RunConfig)


def _process(recipe: type[Recipe], cfg: RunConfig, rank: int, world_size: int) -> Any:
    """One process's run (module-level, so spawned processes can unpickle it)."""
    return recipe(cfg, rank, world_size).fit()


class Recipe(ABC, Generic[C]):
    """The training loop of one process (``rank`` of ``world_size``) of a run of ``cfg``.

    Subclasses set :attr:`log` and fill the abstract hooks; the others have defaults.
    """

    #: the recipe's logger (resume, epoch and skipped-step messages go there)
    log: ClassVar[logging.Logger]
    #: the checkpoint key of the model's weights
    weights_key: ClassVar[str] = "state_dict"
    #: the loader's collate function (a staticmethod: a plain function would bind to self)
    collate_fn: ClassVar[Callable[[list[Any]], Any] | None] = None
    #: drop a last batch of one sample (BatchNorm cannot train on it)
    drop_single: ClassVar[bool] = True
    #: the fewest ``epoch_NNN.pt`` files kept when ``cfg.keep`` is set
    min_keep: ClassVar[int] = 0
    #: let cuDNN pick the fastest kernels (fixed input sizes)
    cudnn_benchmark: ClassVar[bool] = False

    @classmethod
    def run(cls, cfg: C, world_size: int = 1) -> tuple[nn.Module, pd.DataFrame]:
        """Train ``cfg`` in ``world_size`` processes (see :func:`~.common.launch`); returns
        rank 0's ``(model, metrics)``."""
        fn = functools.partial(_process, cls, cfg)
        return launch(fn, int(world_size), device=cfg.device, backend=cfg.dist_backend)

    def __init__(self, cfg: C, rank: int, world_size: int) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.main = rank == 0
        self.dev = device_for(cfg.device, rank)
        if self.dev.type == "cuda":
            torch.cuda.set_device(self.dev)
            if self.cudnn_benchmark:
                torch.backends.cudnn.benchmark = True
        self.amp = amp_setup(self.dev, cfg.amp)
        samples, per_rank = shard(len(cfg.train), cfg.batch_size, world_size)
        single = samples % per_rank == 1 and samples > per_rank
        self.per_rank, self.drop_last = per_rank, self.drop_single and single
        #: optimisation steps per epoch, in each process
        self.steps = samples // per_rank if self.drop_last else math.ceil(samples / per_rank)
        torch.manual_seed(cfg.seed)
        self.model, self.net, self.opt = self.build()
        self.config = plain(self.describe())
        keep = None if cfg.keep is None else max(cfg.keep, self.min_keep)
        self.ckpts = Checkpoints(cfg.checkpoint_dir, cfg.resume, keep=keep, main=self.main,
                                 logger=self.log)  # fmt: skip
        self.start = 0
        self.rows: list[dict[str, Any]] = []

    # --- the recipe's own parts ------------------------------------------------------------------

    @abstractmethod
    def build(self) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
        """``(model, net, optimiser)``, the global torch seed just set: ``net`` is what steps
        call (``model`` under DDP, see :func:`~.common.wrap_ddp`). Whatever else a process
        needs (loss, schedule) is set up here too."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The run's settings, recorded in every checkpoint under ``"config"``."""

    @abstractmethod
    def begin_epoch(self, epoch: int) -> None:
        """Reset the epoch's tallies (``epoch`` is 0-based); before the loader is drawn."""

    @abstractmethod
    def step(self, batch: Any, epoch: int) -> None:
        """One optimisation step on ``batch`` (see :meth:`optimise`), tallied."""

    @abstractmethod
    def postfix(self) -> dict[str, str]:
        """The progress bar's figures so far in the epoch."""

    @abstractmethod
    def end_epoch(self, epoch: int, t0: float) -> dict[str, Any]:
        """The epoch's metrics row (``epoch`` 1-based first): tallies summed over processes,
        validation on the main process, ``seconds`` since ``t0``."""

    def checkpoint_fields(self, epoch: int) -> dict[str, Any]:
        """What a checkpoint holds besides weights, optimiser, scaler, epoch, metrics, config."""
        return {}

    def check(self, ck: Mapping[str, Any], path: Path) -> None:
        """Raise when the checkpoint ``ck`` at ``path`` cannot be resumed by this run."""

    def resumed(self, ck: Mapping[str, Any]) -> None:
        """Take the recipe's own state from the checkpoint being resumed."""

    def finish(self) -> None:
        """After the last epoch, before the model is put in eval mode."""

    # --- shared ----------------------------------------------------------------------------------

    @property
    def validating(self) -> bool:
        """Whether this process evaluates the validation set (the main one, a non-empty set)."""
        return self.main and self.cfg.val is not None and len(self.cfg.val) > 0

    def optimise(self, loss: torch.Tensor, where: str) -> bool:
        """Backward and an optimiser step; False, with a warning naming ``where``, when a
        non-finite loss skipped it."""
        stepped = self.amp.step(loss, self.opt)
        if not stepped:
            self.log.warning("non-finite loss %s: step skipped", where)
        return stepped

    def set_lr(self, lr: float) -> None:
        """The base learning rate, times each parameter group's ``lr_mul`` (1 if none)."""
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_mul", 1.0)

    def fit(self) -> tuple[nn.Module, pd.DataFrame]:
        """Resume, train the remaining epochs (a checkpoint after each), return
        ``(model in eval mode, metrics)``."""
        self._resume()
        for epoch in range(self.start, self.cfg.epochs):
            row = self._epoch(epoch)
            self.rows.append(plain(row))
            if self.main:
                self.log.info("epoch %d/%d: %s", epoch + 1, self.cfg.epochs, row)
            self.ckpts.save(self._state(epoch + 1), epoch + 1)
            barrier()
        self.finish()
        self.model.eval()
        return self.model, pd.DataFrame(self.rows)

    def _resume(self) -> None:
        ck = self.ckpts.load(self.dev, self.cfg.epochs, self.check)
        if ck is None:
            return
        self.resumed(ck)
        self.model.load_state_dict(ck[self.weights_key])
        self.opt.load_state_dict(ck["optimizer"])
        self.amp.load_state_dict(ck.get("scaler"))
        self.start = int(ck["epoch"])
        self.rows = [dict(r) for r in ck.get("metrics", [])]

    def _epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.begin_epoch(epoch)
        self.model.train()
        loader = make_loader(
            cfg.train, self.per_rank, shuffle=True, seed=cfg.seed, epoch=epoch, rank=self.rank,
            world_size=self.world_size, num_workers=cfg.num_workers, collate_fn=self.collate_fn,
            drop_last=self.drop_last, pin_memory=self.dev.type == "cuda",
        )  # fmt: skip
        shown = cfg.progress and self.main
        bar = progress(loader, shown, f"epoch {epoch + 1}/{cfg.epochs}")
        for batch in bar:
            self.step(batch, epoch)
            if shown:
                bar.set_postfix(**self.postfix())
        return self.end_epoch(epoch, t0)

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            self.weights_key: self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.amp.state_dict(),
            "epoch": epoch,
            **self.checkpoint_fields(epoch),
            "metrics": self.rows,
            "config": self.config,
        }


__all__ = ["Recipe", "RunConfig", "plain_path"]
