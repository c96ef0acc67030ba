"""The face-parsing training recipe (face-parsing.PyTorch's ``train.py``): SGD with an
exponential warm-up and the poly schedule, the sum of three OHEM losses; mixed precision, DDP
and checkpoints every epoch come with the shared loop (:mod:`faceetl.train.recipe`)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ...datasets.celebamask import IMAGE_SIZE
from ..common import all_reduce_sum, wrap_ddp
from ..recipe import Recipe, RunConfig, plain_path
from .data import CLASSES, CROP_SIZE, IGNORE_LABEL, _as_dataset
from .loss import OhemCELoss
from .metrics import evaluate
from .model import TrainingHeads, build_model, param_groups

log = logging.getLogger(__name__)


def learning_rate(
    it: int,
    lr: float,
    max_iter: int,
    warmup_steps: int,
    warmup_start_lr: float = 1e-5,
    power: float = 0.9,
) -> float:
    """The base learning rate of iteration ``it`` (0-based): exponential warm-up, then poly.

    ``warmup_start_lr * (lr / warmup_start_lr) ** (it / warmup_steps)`` up to ``warmup_steps``,
    then ``lr * (1 - (it - warmup_steps) / (max_iter - warmup_steps)) ** power``.
    """
    if warmup_steps > 0 and it <= warmup_steps:
        return warmup_start_lr * (lr / warmup_start_lr) ** (it / warmup_steps)
    span = max(max_iter - warmup_steps, 1)
    return lr * max(0.0, 1.0 - (it - warmup_steps) / span) ** power


def train(
    root: str | os.PathLike | Dataset,
    epochs: int = 40,
    batch_size: int = 16,
    lr: float = 1e-2,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = True,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    init: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
    *,
    val: str | os.PathLike | Dataset | None = None,
    image_size: int = IMAGE_SIZE,
    crop_size: int = CROP_SIZE,
    num_workers: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_steps: int | None = None,
    warmup_start_lr: float = 1e-5,
    power: float = 0.9,
    ohem_thresh: float = 0.7,
    aux_weight: float = 1.0,
    keep_epochs: bool = True,
    keep_checkpoints: int | None = None,
    seed: int = 0,
    world_size: int = 1,
    dist_backend: str | None = None,
) -> tuple[nn.Module, pd.DataFrame]:
    """Train BiSeNet on a CelebAMask-HQ folder (or a dataset); returns ``(model, metrics)``.

    ``root`` is read with :class:`CelebAMaskHQ` (augmented, ``image_size``/``crop_size``);
    ``val`` (a folder or dataset) is evaluated with :func:`evaluate` after every epoch. The
    recipe is face-parsing.PyTorch's (see the module docstring); the schedule spans
    ``epochs * ceil(len(train) / batch_size)`` iterations with ``warmup_steps`` of exponential
    warm-up (default ``min(1000, max_iter // 10)``; the published run: 1000 of 80,000).
    ``init``: see :func:`build_model`. Mixed precision (float16 autocast + GradScaler) is on by
    default on CUDA; ``amp=True`` on CPU uses bfloat16 autocast. ``world_size > 1`` spawns that
    many processes (one GPU each on CUDA, else CPU with gloo) training with DDP; ``batch_size``
    is then the total over them and the schedule counts each process's iterations. Run under
    ``torchrun`` (or with a process group already initialised) each process trains its share.

    With ``checkpoint_dir`` a checkpoint is written after every epoch (``epoch_001.pt`` ... when
    ``keep_epochs``, at most the last ``keep_checkpoints`` of them, and ``last.pt``) holding the model under ``"state_dict"`` — so the file
    loads as ``ParsingPredictor(weights=...)`` and with
    :func:`faceetl.nets.bisenet.load_bisenet` — plus the optimiser, scaler, epoch,
    iteration, metrics and config; :func:`export_weights` writes the bare state dict. With
    ``resume`` a run finding ``last.pt`` continues from it up to ``epochs`` (total; a path resumes
    from that checkpoint file or folder instead); each epoch's
    shuffling and augmentation are seeded from ``seed`` and the epoch number, so a resumed run
    repeats an uninterrupted one. ``metrics``: one row per epoch with ``epoch, iterations,
    train_loss`` (the three OHEM terms summed), ``train_loss_main``, ``images`` (trained on, over
    all processes), ``lr`` (base, at the end),
    ``val_miou, val_pixel_accuracy`` (with ``val``) and ``seconds``.
    """
    train_ds = _as_dataset(root, augment=True, image_size=image_size, crop_size=crop_size)
    if len(train_ds) == 0:
        raise ValueError("the training set is empty")
    val_ds = None
    if val is not None:
        val_ds = _as_dataset(val, augment=False, image_size=image_size)
    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    cfg = _Config(
        train=train_ds, val=val_ds, epochs=epochs, batch_size=batch_size, lr=lr,
        checkpoint_dir=checkpoint_dir, resume=resume, device=device, amp=amp,
        init=plain_path(init), progress=progress, image_size=int(image_size),
        crop_size=int(crop_size), num_workers=num_workers, momentum=float(momentum),
        weight_decay=float(weight_decay), warmup_steps=warmup_steps,
        warmup_start_lr=float(warmup_start_lr), power=float(power),
        ohem_thresh=float(ohem_thresh), aux_weight=float(aux_weight),
        keep=0 if not keep_epochs else keep_checkpoints, seed=seed, dist_backend=dist_backend,
    )  # fmt: skip
    return _Parsing.run(cfg, world_size)


@dataclass(frozen=True, kw_only=True, eq=False)
class _Config(RunConfig):
    """A parsing run: the image sizes, initial weights, SGD, schedule and loss settings."""

    init: str | Mapping[str, torch.Tensor] | None
    image_size: int
    crop_size: int
    momentum: float
    weight_decay: float
    warmup_steps: int | None
    warmup_start_lr: float
    power: float
    ohem_thresh: float
    aux_weight: float


class _Parsing(Recipe[_Config]):
    """One process of a parsing run: SGD on the three OHEM losses, the lr set every step."""

    log = log
    sums: torch.Tensor  # the epoch's loss, main-head loss and images
    base_lr: float

    def build(self) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
        cfg = self.cfg
        self.max_iter = max(1, cfg.epochs * self.steps)
        warmup = min(1000, self.max_iter // 10) if cfg.warmup_steps is None else cfg.warmup_steps
        self.warmup = int(warmup)
        self.it = 0  # iterations done (each process)
        model = build_model(cfg.init).to(self.dev)
        net = wrap_ddp(TrainingHeads(model), self.dev, self.world_size)
        opt = torch.optim.SGD(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
        self.criterion = OhemCELoss(cfg.ohem_thresh, None, IGNORE_LABEL)
        return model, net, opt

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "arch": "BiSeNet (face-parsing.PyTorch)",
            "classes": list(CLASSES),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "warmup_steps": self.warmup,
            "warmup_start_lr": cfg.warmup_start_lr,
            "power": cfg.power,
            "max_iter": self.max_iter,
            "ohem_thresh": cfg.ohem_thresh,
            "aux_weight": cfg.aux_weight,
            "image_size": getattr(cfg.train, "image_size", cfg.image_size),
            "crop_size": getattr(cfg.train, "crop_size", cfg.crop_size),
            "amp": self.amp.enabled,
            "seed": cfg.seed,
            "train_size": len(cfg.train),
            "world_size": self.world_size,
            "init": cfg.init if isinstance(cfg.init, str) else (cfg.init is not None),
        }

    def resumed(self, ck: Mapping[str, Any]) -> None:
        planned = ck.get("config", {}).get("max_iter")
        if self.main and planned not in (None, self.max_iter):
            self.log.warning(
                "%s was planned for %s iterations, this run for %d (epochs or batch size "
                "changed): the learning-rate schedule follows this run",
                self.ckpts.source(), planned, self.max_iter,
            )  # fmt: skip
        self.it = int(ck["iteration"])

    def _lr(self) -> float:
        cfg = self.cfg
        return learning_rate(
            self.it, cfg.lr, self.max_iter, self.warmup, cfg.warmup_start_lr, cfg.power
        )

    def begin_epoch(self, epoch: int) -> None:
        # the augmentation draws from torch's generator in the main process (workers: seeded
        # by the loader); each rank draws its own
        torch.manual_seed(self.cfg.seed * 100_003 + epoch + 1_000_003 * self.rank)
        self.sums = torch.zeros(3, dtype=torch.float64)
        self.base_lr = self._lr()

    def step(self, batch: tuple[torch.Tensor, torch.Tensor], epoch: int) -> None:
        self.base_lr = self._lr()
        self.set_lr(self.base_lr)
        x = batch[0].to(self.dev, non_blocking=True)
        y = batch[1].to(self.dev, non_blocking=True)
        with self.amp.autocast():
            out, out16, out32 = self.net(x)
        crit = self.criterion
        lp = crit(out, y)
        loss = lp + self.cfg.aux_weight * (crit(out16, y) + crit(out32, y))
        self.optimise(loss, f"at iteration {self.it}")
        self.it += 1
        b = x.shape[0]
        self.sums += torch.tensor([float(loss.detach()) * b, float(lp.detach()) * b, b])

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{float(self.sums[0] / self.sums[2]):.4f}", "lr": f"{self.base_lr:.2e}"}

    def end_epoch(self, epoch: int, t0: float) -> dict[str, Any]:
        cfg = self.cfg
        sums = all_reduce_sum(self.sums, self.dev)
        n = float(sums[2])
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "iterations": self.it,
            "train_loss": float(sums[0]) / n if n else math.nan,
            "train_loss_main": float(sums[1]) / n if n else math.nan,
            "images": int(n),
            "lr": self.base_lr,
        }
        if self.validating:
            ev = evaluate(self.model, cfg.val, self.per_rank, self.dev, self.amp.enabled,
                          cfg.num_workers)  # fmt: skip
            row["val_miou"] = ev["miou"]
            row["val_pixel_accuracy"] = ev["pixel_accuracy"]
        row["seconds"] = time.perf_counter() - t0
        return row

    def checkpoint_fields(self, epoch: int) -> dict[str, Any]:
        return {"iteration": self.it, "classes": list(CLASSES)}


__all__ = ["learning_rate", "train"]
