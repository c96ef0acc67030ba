"""The face-parsing training loop (face-parsing.PyTorch's ``train.py``): SGD with an exponential
warm-up and the poly schedule, the sum of three OHEM losses, mixed precision, DDP and
checkpoints every epoch (:mod:`faceetl.train.common`)."""

from __future__ import annotations

import functools
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
from ..common import (
    Checkpoints,
    all_reduce_sum,
    amp_setup,
    barrier,
    device_for,
    launch,
    make_loader,
    plain,
    progress,
    shard,
    wrap_ddp,
)
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
        train=train_ds,
        val=val_ds,
        epochs=int(epochs),
        batch_size=int(batch_size),
        lr=float(lr),
        checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
        resume=resume if isinstance(resume, bool) else os.fspath(resume),
        device=None if device is None else str(device),
        amp=amp,
        init=os.fspath(init) if isinstance(init, os.PathLike) else init,
        progress=bool(progress),
        image_size=int(image_size),
        crop_size=int(crop_size),
        num_workers=int(num_workers),
        momentum=float(momentum),
        weight_decay=float(weight_decay),
        warmup_steps=warmup_steps,
        warmup_start_lr=float(warmup_start_lr),
        power=float(power),
        ohem_thresh=float(ohem_thresh),
        aux_weight=float(aux_weight),
        keep=0 if not keep_epochs else keep_checkpoints,
        seed=int(seed),
    )
    return launch(
        functools.partial(_train_process, cfg), int(world_size), device=cfg.device,
        backend=dist_backend,
    )  # fmt: skip


@dataclass
class _Config:
    """Everything one training process needs (picklable for ``torch.multiprocessing``)."""

    train: Dataset
    val: Dataset | None
    epochs: int
    batch_size: int
    lr: float
    checkpoint_dir: str | None
    resume: bool | str
    device: str | None
    amp: bool | None
    init: str | Mapping[str, torch.Tensor] | None
    progress: bool
    image_size: int
    crop_size: int
    num_workers: int
    momentum: float
    weight_decay: float
    warmup_steps: int | None
    warmup_start_lr: float
    power: float
    ohem_thresh: float
    aux_weight: float
    keep: int | None
    seed: int


def _train_process(cfg: _Config, rank: int, world_size: int) -> tuple[nn.Module, pd.DataFrame]:
    """The training loop of one process (rank) of ``world_size``."""
    dev = device_for(cfg.device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    amp = amp_setup(dev, cfg.amp)
    main = rank == 0
    train_ds = cfg.train
    samples, per_rank = shard(len(train_ds), cfg.batch_size, world_size)
    # BatchNorm cannot train on a batch of one sample
    drop_last = samples % per_rank == 1 and samples > per_rank
    steps = samples // per_rank if drop_last else math.ceil(samples / per_rank)
    max_iter = max(1, cfg.epochs * steps)
    warmup = min(1000, max_iter // 10) if cfg.warmup_steps is None else int(cfg.warmup_steps)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.init).to(dev)
    net = wrap_ddp(TrainingHeads(model), dev, world_size)
    opt = torch.optim.SGD(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip
    criterion = OhemCELoss(cfg.ohem_thresh, None, IGNORE_LABEL)

    config = plain(
        {
            "arch": "BiSeNet (face-parsing.PyTorch)",
            "classes": list(CLASSES),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "warmup_steps": warmup,
            "warmup_start_lr": cfg.warmup_start_lr,
            "power": cfg.power,
            "max_iter": max_iter,
            "ohem_thresh": cfg.ohem_thresh,
            "aux_weight": cfg.aux_weight,
            "image_size": getattr(train_ds, "image_size", cfg.image_size),
            "crop_size": getattr(train_ds, "crop_size", cfg.crop_size),
            "amp": amp.enabled,
            "seed": cfg.seed,
            "train_size": len(train_ds),
            "world_size": world_size,
            "init": cfg.init if isinstance(cfg.init, str) else (cfg.init is not None),
        }
    )
    ckpts = Checkpoints(cfg.checkpoint_dir, cfg.resume, keep=cfg.keep, main=main, logger=log)
    rows: list[dict[str, Any]] = []
    start = 0
    it = 0
    ck = ckpts.load(dev, cfg.epochs)
    if ck is not None:
        planned = ck.get("config", {}).get("max_iter")
        if main and planned not in (None, max_iter):
            log.warning(
                "%s was planned for %s iterations, this run for %d (epochs or batch size "
                "changed): the learning-rate schedule follows this run",
                ckpts.source(), planned, max_iter,
            )  # fmt: skip
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        amp.load_state_dict(ck.get("scaler"))
        start = int(ck["epoch"])
        it = int(ck["iteration"])
        rows = [dict(r) for r in ck.get("metrics", [])]

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        # the augmentation draws from torch's generator in the main process (workers: seeded
        # by the loader); each rank draws its own
        torch.manual_seed(cfg.seed * 100_003 + epoch + 1_000_003 * rank)
        loader = make_loader(
            train_ds, per_rank, shuffle=True, seed=cfg.seed, epoch=epoch, rank=rank,
            world_size=world_size, num_workers=cfg.num_workers, drop_last=drop_last,
            pin_memory=dev.type == "cuda",
        )  # fmt: skip
        sums = torch.zeros(3, dtype=torch.float64)  # loss, main-head loss, images
        bar = progress(loader, cfg.progress and main, f"epoch {epoch + 1}/{cfg.epochs}")
        base_lr = learning_rate(it, cfg.lr, max_iter, warmup, cfg.warmup_start_lr, cfg.power)
        for x, y in bar:
            base_lr = learning_rate(it, cfg.lr, max_iter, warmup, cfg.warmup_start_lr, cfg.power)
            for g in opt.param_groups:
                g["lr"] = base_lr * g.get("lr_mul", 1.0)
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with amp.autocast():
                out, out16, out32 = net(x)
            lp = criterion(out, y)
            loss = lp + cfg.aux_weight * (criterion(out16, y) + criterion(out32, y))
            if not amp.step(loss, opt):
                log.warning("non-finite loss at iteration %d: step skipped", it)
            it += 1
            b = x.shape[0]
            sums += torch.tensor([float(loss.detach()) * b, float(lp.detach()) * b, b])
            if cfg.progress and main:
                bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.4f}", lr=f"{base_lr:.2e}")
        sums = all_reduce_sum(sums, dev)
        n = float(sums[2])
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "iterations": it,
            "train_loss": float(sums[0]) / n if n else math.nan,
            "train_loss_main": float(sums[1]) / n if n else math.nan,
            "images": int(n),
            "lr": base_lr,
        }
        if cfg.val is not None and len(cfg.val) and main:
            ev = evaluate(model, cfg.val, per_rank, dev, amp.enabled, cfg.num_workers)
            row["val_miou"] = ev["miou"]
            row["val_pixel_accuracy"] = ev["pixel_accuracy"]
        row["seconds"] = time.perf_counter() - t0
        rows.append(plain(row))
        if main:
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, row)
        state = {
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": amp.state_dict(),
            "epoch": epoch + 1,
            "iteration": it,
            "classes": list(CLASSES),
            "metrics": rows,
            "config": config,
        }
        ckpts.save(state, epoch + 1)
        barrier()
    model.eval()
    return model, pd.DataFrame(rows)


__all__ = ["learning_rate", "train"]
