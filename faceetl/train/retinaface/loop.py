"""The RetinaFace training recipe: SGD with the published schedule and the multibox loss (mixed
precision, DDP and checkpoints every epoch come with the shared loop,
:mod:`faceetl.train.recipe`), and the loss of a model on a dataset (:func:`evaluate_loss`)."""

from __future__ import annotations

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
from ..common import all_reduce_sum, inference, model_device, wrap_ddp
from ..recipe import Recipe, RunConfig, plain_path
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
    dev = model_device(model, device)
    crit = MultiBoxLoss(threshold, neg_pos_ratio)
    priors = normalised_priors(dataset.image_size, dev)
    sums = dict.fromkeys(("loss", "loss_loc", "loss_conf", "loss_landm"), 0.0)
    n = 0
    batches = inference(model, dataset, batch_size, dev, amp, num_workers, collate_fn=collate)
    for out, targets in batches:
        lo = crit(out, priors, targets)
        b = len(targets)
        sums["loss"] += float(lo.total(loc_weight)) * b
        sums["loss_loc"] += float(lo.loc) * b
        sums["loss_conf"] += float(lo.conf) * b
        sums["loss_landm"] += float(lo.landm) * b
        n += b
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
    cfg = _Config(
        train=dataset, val=val_ds, network=network, epochs=epochs, batch_size=batch_size, lr=lr,
        momentum=float(momentum), weight_decay=float(weight_decay), gamma=float(gamma),
        milestones=tuple(float(m) for m in (milestones or default_milestones(network, epochs))),
        warmup_epochs=float(warmup_epochs), loc_weight=float(loc_weight),
        threshold=float(overlap_threshold), neg_pos_ratio=float(neg_pos_ratio),
        init=plain_path(init_path), checkpoint_dir=checkpoint_dir, resume=resume,
        device=device, amp=amp, num_workers=num_workers, progress=progress, seed=seed,
        keep=keep_checkpoints, dist_backend=dist_backend,
    )  # fmt: skip
    return _RetinaFace.run(cfg, world_size)


@dataclass(frozen=True, kw_only=True, eq=False)
class _Config(RunConfig):
    """A RetinaFace run: the network, SGD, schedule (milestones in epochs) and loss settings."""

    network: str
    momentum: float
    weight_decay: float
    gamma: float
    milestones: tuple[float, ...]
    warmup_epochs: float
    loc_weight: float
    threshold: float
    neg_pos_ratio: float
    init: str | None


class _RetinaFace(Recipe[_Config]):
    """One process of a RetinaFace run: SGD on the multibox loss, the lr set every step."""

    log = log
    collate_fn = staticmethod(collate)
    drop_single = False
    min_keep = 1  # keep_checkpoints=0 still keeps the newest epoch_NNN.pt
    cudnn_benchmark = True
    sums: torch.Tensor  # the epoch's loss, loc, conf, landm, images, skipped steps
    lr: float

    def build(self) -> tuple[RetinaFace, torch.nn.Module, torch.optim.Optimizer]:
        cfg = self.cfg
        model = RetinaFace(cfg.network)
        if cfg.init is not None:
            kind = load_init(model, Path(cfg.init))
            self.log.info("initialised %s from %s (%s)", cfg.network, cfg.init, kind)
        model.to(self.dev)
        net = wrap_ddp(model, self.dev, self.world_size)
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.crit = MultiBoxLoss(cfg.threshold, cfg.neg_pos_ratio)
        self.priors = normalised_priors(cfg.train.image_size, self.dev)
        self.milestone_its = [round(m * self.steps) for m in cfg.milestones]
        self.warmup_its = round(cfg.warmup_epochs * self.steps)
        return model, net, opt

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg
        # every setting (in the order the checkpoints of earlier versions hold them), then
        # what this process made of them
        names = ("network", "epochs", "batch_size", "lr", "momentum", "weight_decay", "gamma",
                 "milestones", "warmup_epochs", "loc_weight", "threshold", "neg_pos_ratio",
                 "init", "checkpoint_dir", "resume", "device")  # fmt: skip
        return {n: getattr(cfg, n) for n in names} | {
            "amp": self.amp.enabled,
            "num_workers": cfg.num_workers,
            "progress": cfg.progress,
            "seed": cfg.seed,
            "keep_checkpoints": cfg.keep,
            "dist_backend": cfg.dist_backend,
            "image_size": cfg.train.image_size,
            "train_size": len(cfg.train),
            "world_size": self.world_size,
            "epoch_size": self.steps,
            "milestone_iterations": self.milestone_its,
        }

    def check(self, ck: Mapping[str, Any], path: Path) -> None:
        """A checkpoint of another network or image size is not resumed."""
        network, image_size = self.cfg.network, self.cfg.train.image_size
        if ck.get("network") != network:
            raise ValueError(f"{path} holds a {ck.get('network')!r} model, not {network!r}")
        if int(ck.get("image_size", image_size)) != image_size:
            raise ValueError(
                f"{path} was trained at image_size {ck.get('image_size')}, "
                f"not {image_size}; use another checkpoint_dir or resume=False"
            )

    def begin_epoch(self, epoch: int) -> None:
        self.cfg.train.set_epoch(epoch)  # the augmentation is drawn per (seed, epoch)
        self.sums = torch.zeros(6, dtype=torch.float64)
        self.lr = self.cfg.lr
        self.iteration = epoch * self.steps

    def step(self, batch: tuple[torch.Tensor, list[torch.Tensor]], epoch: int) -> None:
        cfg = self.cfg
        self.lr = learning_rate(self.iteration, cfg.lr, self.milestone_its, cfg.gamma,
                                self.warmup_its)  # fmt: skip
        self.set_lr(self.lr)
        x, targets = batch
        x = x.to(self.dev, non_blocking=True)
        with self.amp.autocast():
            out = self.net(x)
        lo = self.crit(out, self.priors, targets)
        loss = lo.total(cfg.loc_weight)
        if not self.optimise(loss, f"at iteration {self.iteration}"):
            self.sums[5] += 1
        self.iteration += 1
        b = x.shape[0]
        vals = [float(v.detach()) for v in (loss, lo.loc, lo.conf, lo.landm)]
        self.sums[:4] += torch.tensor(vals, dtype=torch.float64) * b
        self.sums[4] += b

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{float(self.sums[0] / self.sums[4]):.4f}", "lr": f"{self.lr:.2e}"}

    def end_epoch(self, epoch: int, t0: float) -> dict[str, Any]:
        cfg = self.cfg
        sums = all_reduce_sum(self.sums, self.dev)
        seconds = time.perf_counter() - t0  # training only: validation is not counted
        n = max(float(sums[4]), 1.0)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(sums[0]) / n,
            "loss_loc": float(sums[1]) / n,
            "loss_conf": float(sums[2]) / n,
            "loss_landm": float(sums[3]) / n,
            "lr": self.lr,
            "images": int(sums[4]),
            "skipped_steps": int(sums[5]),
            "seconds": seconds,
            "images_per_s": float(sums[4]) / seconds if seconds > 0 else math.nan,
        }
        # not self.validating: an empty val set reports zero losses here, as it always has
        if self.main and cfg.val is not None:
            ev = evaluate_loss(
                self.model, cfg.val, self.per_rank, self.dev, self.amp.enabled, cfg.loc_weight,
                cfg.threshold, cfg.neg_pos_ratio, cfg.num_workers,
            )  # fmt: skip
            row.update({f"val_{k}": v for k, v in ev.items()})
        return row

    def checkpoint_fields(self, epoch: int) -> dict[str, Any]:
        return {
            "iteration": epoch * self.steps,
            "network": self.cfg.network,
            "image_size": self.cfg.train.image_size,
        }

    def finish(self) -> None:
        self.ckpts.write(f"{self.cfg.network}_Final.pth", dict(self.model.state_dict()))


__all__ = ["evaluate_loss", "train"]
