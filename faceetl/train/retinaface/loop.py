"""The RetinaFace training loop: SGD with the published schedule, multibox loss, mixed
precision, DDP, checkpoints every epoch (:mod:`faceetl.train.common`), and the loss of a model
on a dataset (:func:`evaluate_loss`)."""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ...datasets.annotation import ImageAnnotation
from ...nets.retinaface import RetinaFace, network_name
from ...nets.retinaface_priors import normalised_priors
from ..common import (
    Checkpoints,
    all_reduce_sum,
    amp_setup,
    autocast,
    barrier,
    device_for,
    launch,
    make_loader,
    plain,
    progress,
    shard,
    wrap_ddp,
)
from .data import RetinaFaceDataset, collate
from .loss import MultiBoxLoss
from .model import load_init, resolve_init
from .schedule import PUBLISHED, default_milestones, learning_rate

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_loss(
    model: RetinaFace,
    dataset: RetinaFaceDataset,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    loc_weight: float = 2.0,
    threshold: float = 0.35,
    neg_pos_ratio: float = 7,
    num_workers: int = 0,
) -> dict[str, float]:
    """Mean losses ``{"loss", "loss_loc", "loss_conf", "loss_landm"}`` of ``model`` (eval mode)
    over ``dataset`` (use ``augment=False`` for a fixed measure)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    amp = dev.type == "cuda" if amp is None else bool(amp)
    was_training = model.training
    model.to(dev).eval()
    crit = MultiBoxLoss(threshold, neg_pos_ratio)
    priors = normalised_priors(dataset.image_size, dev)
    sums = dict.fromkeys(("loss", "loss_loc", "loss_conf", "loss_landm"), 0.0)
    n = 0
    loader = make_loader(dataset, batch_size, num_workers=num_workers, collate_fn=collate)
    for x, targets in loader:
        with autocast(dev, amp):
            out = model(x.to(dev, non_blocking=True))
        lo = crit(out, priors, targets)
        b = len(targets)
        sums["loss"] += float(lo.total(loc_weight)) * b
        sums["loss_loc"] += float(lo.loc) * b
        sums["loss_conf"] += float(lo.conf) * b
        sums["loss_landm"] += float(lo.landm) * b
        n += b
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _as_dataset(
    data: Any, image_root: Any, image_size: int | None, network: str, augment: bool, seed: int
) -> RetinaFaceDataset:
    """The training set of ``data``: a dataset as it is, annotations or an annotation file."""
    if isinstance(data, RetinaFaceDataset):
        if image_size is not None and image_size != data.image_size:
            raise ValueError(
                f"image_size={image_size} differs from the dataset's {data.image_size}"
            )
        return data
    size = image_size or PUBLISHED[network]["image_size"]
    if isinstance(data, (str, os.PathLike)):
        return RetinaFaceDataset.from_file(
            data, image_root, image_size=size, augment=augment, seed=seed
        )
    return RetinaFaceDataset(data, image_root, size, augment=augment, seed=seed)


@dataclass
class _Config:
    """Everything one training process needs (picklable for ``torch.multiprocessing``)."""

    dataset: RetinaFaceDataset
    val: RetinaFaceDataset | None
    network: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    gamma: float
    milestones: tuple[float, ...]
    warmup_epochs: float
    loc_weight: float
    threshold: float
    neg_pos_ratio: float
    init: str | None
    checkpoint_dir: str | None
    resume: bool | str
    device: str | None
    amp: bool | None
    num_workers: int
    progress: bool
    seed: int
    keep_checkpoints: int | None
    dist_backend: str | None


def train(
    data: RetinaFaceDataset | Sequence[ImageAnnotation] | str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    network: str = "mobilenet0.25",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float = 1e-3,
    init: str | os.PathLike | None = "released",
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = True,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
    *,
    image_size: int | None = None,
    val: RetinaFaceDataset | Sequence[ImageAnnotation] | str | os.PathLike | None = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    gamma: float = 0.1,
    milestones: Sequence[float] | None = None,
    warmup_epochs: float = 0.0,
    loc_weight: float = 2.0,
    overlap_threshold: float = 0.35,
    neg_pos_ratio: float = 7,
    augment: bool = True,
    seed: int = 0,
    world_size: int = 1,
    dist_backend: str | None = None,
    keep_checkpoints: int | None = None,
) -> tuple[RetinaFace, pd.DataFrame]:
    """Train RetinaFace; returns ``(model, metrics)`` (the model in eval mode).

    ``data``: a :class:`RetinaFaceDataset`, annotations, or an annotation file (label.txt,
    WIDER bbx_gt, dlib XML) with its ``image_root``. ``network``: ``"mobilenet0.25"`` or
    ``"resnet50"``; ``epochs``, ``batch_size`` and ``image_size`` default to the published
    250 / 32 / 640 (mobilenet) and 100 / 24 / 840 (resnet50). ``init``: ``"released"`` (the
    released weights of ``network``: fine-tuning), a registered file name such as
    ``"mobilenet0.25_Final.pth"``, a path to a RetinaFace state dict, checkpoint or
    backbone-only ImageNet weights, or None (random initialisation).

    SGD with ``momentum`` and ``weight_decay``; the learning rate is ``lr``, times ``gamma`` at
    each of ``milestones`` (epochs; default the published ones scaled to ``epochs``), after a
    linear warm-up from 1e-6 over ``warmup_epochs`` (0: none, as the published run).
    ``amp`` (default on CUDA): float16 autocast with a gradient scaler (bfloat16 on CPU when
    asked). ``world_size > 1`` spawns that many processes (one GPU each on CUDA, else CPU with
    gloo) training with DDP; ``batch_size`` is then the total over them. Run under
    ``torchrun`` (or with a process group already initialised) each process trains its share.

    With ``checkpoint_dir``, every epoch writes ``epoch_NNN.pt`` and ``last.pt`` (the weights
    under ``state_dict`` in the released key layout, so ``RetinaFaceDetector(weights=...)``
    loads them, and the optimiser, scaler, epoch and metrics) and the end ``<network>_Final.pth``
    (the weights alone); ``keep_checkpoints`` bounds the ``epoch_NNN.pt`` kept. With ``resume``
    a run finding ``last.pt`` continues from it up to ``epochs`` (total, not additional; a path
    resumes from that checkpoint file or folder instead); the
    augmentation and shuffling are drawn per (seed, epoch), so a resumed run repeats the
    uninterrupted one. ``metrics``: one row per epoch with ``epoch, loss, loss_loc, loss_conf,
    loss_landm, lr, images, seconds, images_per_s`` (and ``val_*`` losses with ``val``).
    """
    network = network_name(network)
    pub = PUBLISHED[network]
    epochs = int(pub["epochs"] if epochs is None else epochs)
    batch_size = int(pub["batch_size"] if batch_size is None else batch_size)
    dataset = _as_dataset(data, image_root, image_size, network, augment, seed)
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    val_ds = None
    if val is not None:
        if isinstance(val, RetinaFaceDataset):
            val_ds = val
        elif isinstance(val, (str, os.PathLike)):
            val_ds = RetinaFaceDataset.from_file(val, image_size=dataset.image_size, augment=False)
        else:
            val_ds = RetinaFaceDataset(val, image_root, dataset.image_size, augment=False)
    init_path = resolve_init(init, network)
    ms = tuple(float(m) for m in (milestones or default_milestones(network, epochs)))
    cfg = _Config(
        dataset=dataset,
        val=val_ds,
        network=network,
        epochs=epochs,
        batch_size=batch_size,
        lr=float(lr),
        momentum=float(momentum),
        weight_decay=float(weight_decay),
        gamma=float(gamma),
        milestones=ms,
        warmup_epochs=float(warmup_epochs),
        loc_weight=float(loc_weight),
        threshold=float(overlap_threshold),
        neg_pos_ratio=float(neg_pos_ratio),
        init=None if init_path is None else os.fspath(init_path),
        checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
        resume=resume if isinstance(resume, bool) else os.fspath(resume),
        device=None if device is None else str(device),
        amp=amp,
        num_workers=int(num_workers),
        progress=bool(progress),
        seed=int(seed),
        keep_checkpoints=keep_checkpoints,
        dist_backend=dist_backend,
    )
    model, metrics = launch(
        functools.partial(_train_process, cfg), int(world_size), device=cfg.device,
        backend=cfg.dist_backend,
    )  # fmt: skip
    return model, metrics


def _check_resumable(network: str, image_size: int, ck: Mapping[str, Any], path: Path) -> None:
    """A checkpoint of another network or image size is not resumed."""
    if ck.get("network") != network:
        raise ValueError(f"{path} holds a {ck.get('network')!r} model, not {network!r}")
    if int(ck.get("image_size", image_size)) != image_size:
        raise ValueError(
            f"{path} was trained at image_size {ck.get('image_size')}, "
            f"not {image_size}; use another checkpoint_dir or resume=False"
        )


def _train_process(cfg: _Config, rank: int, world_size: int) -> tuple[RetinaFace, pd.DataFrame]:
    """The training loop of one process (rank) of ``world_size``."""
    dev = device_for(cfg.device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    amp = amp_setup(dev, cfg.amp)
    main = rank == 0
    torch.manual_seed(cfg.seed)
    model = RetinaFace(cfg.network)
    if cfg.init is not None:
        kind = load_init(model, Path(cfg.init))
        log.info("initialised %s from %s (%s)", cfg.network, cfg.init, kind)
    model.to(dev)
    net = wrap_ddp(model, dev, world_size)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    crit = MultiBoxLoss(cfg.threshold, cfg.neg_pos_ratio)
    ds = cfg.dataset
    priors = normalised_priors(ds.image_size, dev)
    samples, per_rank = shard(len(ds), cfg.batch_size, world_size)
    epoch_size = math.ceil(samples / per_rank)  # iterations per epoch (each process)
    milestone_its = [round(m * epoch_size) for m in cfg.milestones]
    warmup_its = round(cfg.warmup_epochs * epoch_size)

    keep = None if cfg.keep_checkpoints is None else max(cfg.keep_checkpoints, 1)
    ckpts = Checkpoints(cfg.checkpoint_dir, cfg.resume, keep=keep, main=main, logger=log)
    rows: list[dict[str, Any]] = []
    start = 0
    ck = ckpts.load(
        dev, cfg.epochs, functools.partial(_check_resumable, cfg.network, ds.image_size)
    )
    if ck is not None:
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        amp.load_state_dict(ck.get("scaler"))
        start = int(ck["epoch"])
        rows = [dict(r) for r in ck.get("metrics", [])]

    config = plain(
        {k: v for k, v in cfg.__dict__.items() if k not in ("dataset", "val")}
        | {
            "image_size": ds.image_size,
            "train_size": len(ds),
            "world_size": world_size,
            "epoch_size": epoch_size,
            "milestone_iterations": milestone_its,
            "amp": amp.enabled,
        }
    )
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        ds.set_epoch(epoch)
        model.train()
        loader = make_loader(
            ds, per_rank, shuffle=True, seed=cfg.seed, epoch=epoch, rank=rank,
            world_size=world_size, num_workers=cfg.num_workers, collate_fn=collate,
            pin_memory=dev.type == "cuda",
        )  # fmt: skip
        sums = torch.zeros(6, dtype=torch.float64)  # loss, loc, conf, landm, images, skipped
        lr = cfg.lr
        bar = progress(loader, cfg.progress and main, f"epoch {epoch + 1}/{cfg.epochs}")
        for it, (x, targets) in enumerate(bar):
            iteration = epoch * epoch_size + it
            lr = learning_rate(iteration, cfg.lr, milestone_its, cfg.gamma, warmup_its)
            for g in opt.param_groups:
                g["lr"] = lr
            x = x.to(dev, non_blocking=True)
            with amp.autocast():
                out = net(x)
            lo = crit(out, priors, targets)
            loss = lo.total(cfg.loc_weight)
            if not amp.step(loss, opt):
                sums[5] += 1
                log.warning("non-finite loss at iteration %d: step skipped", iteration)
            b = x.shape[0]
            vals = [float(v.detach()) for v in (loss, lo.loc, lo.conf, lo.landm)]
            sums[:4] += torch.tensor(vals, dtype=torch.float64) * b
            sums[4] += b
            if cfg.progress and main:
                bar.set_postfix(loss=f"{float(sums[0] / sums[4]):.4f}", lr=f"{lr:.2e}")
        sums = all_reduce_sum(sums, dev)
        seconds = time.perf_counter() - t0
        n = max(float(sums[4]), 1.0)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(sums[0]) / n,
            "loss_loc": float(sums[1]) / n,
            "loss_conf": float(sums[2]) / n,
            "loss_landm": float(sums[3]) / n,
            "lr": lr,
            "images": int(sums[4]),
            "skipped_steps": int(sums[5]),
            "seconds": seconds,
            "images_per_s": float(sums[4]) / seconds if seconds > 0 else math.nan,
        }
        if cfg.val is not None and main:
            ev = evaluate_loss(
                model, cfg.val, per_rank, dev, amp.enabled, cfg.loc_weight, cfg.threshold,
                cfg.neg_pos_ratio, cfg.num_workers,
            )  # fmt: skip
            row.update({f"val_{k}": v for k, v in ev.items()})
        rows.append(plain(row))
        if main:
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, row)
        state = {
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": amp.state_dict(),
            "epoch": epoch + 1,
            "iteration": (epoch + 1) * epoch_size,
            "network": cfg.network,
            "image_size": ds.image_size,
            "metrics": rows,
            "config": config,
        }
        ckpts.save(state, epoch + 1)
        barrier()
    ckpts.write(f"{cfg.network}_Final.pth", dict(model.state_dict()))
    model.eval()
    return model, pd.DataFrame(rows)


__all__ = ["evaluate_loss", "train"]
