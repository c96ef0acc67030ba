"""Fine-tune a multi-head face classifier (one linear head per label column) on extracted crops.

>>> from faceetl.train import classifier
>>> train_df, val_df = stratified_split(faces, by=["race", "gender"], group="path")
>>> model, metrics = classifier.train(train_df, val_df, label_columns=["race", "gender", "age"],
...                                   epochs=10, checkpoint_dir="runs/fairface")
>>> model, classes = load_classifier("runs/fairface")
>>> preds = predict(model, FaceDataset(val_df))

The backbones (:mod:`faceetl.nets.classifier`) are written in plain torch (torchvision is
optional): ``"resnet18"`` has torchvision's parameter names, so
``torchvision.models.resnet18(weights=...).state_dict()`` loads as ``pretrained_state_dict``;
``"small"`` is a 4-layer CNN for quick CPU runs. Models take RGB crops as float tensors in [0, 1]
and normalise them with the ImageNet mean and std themselves.

Calling the module itself, ``faceetl.train.classifier(...)``, is the deprecated spelling of
:func:`train` (a DeprecationWarning, the same result).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
import types
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ..datasets.faces import FaceDataset
from ..datasets.table import IGNORE_INDEX
from ..nets.classifier import (
    BACKBONES,
    MultiHeadClassifier,
    ResNet18,
    SmallCNN,
    make_backbone,
)
from .common import (
    Checkpoints,
    all_reduce_sum,
    amp_setup,
    autocast,
    barrier,
    checkpoint_file,
    device_for,
    distributed,
    launch,
    make_loader,
    plain,
    shard,
    wrap_ddp,
)
from .common import progress as progress_bar

log = logging.getLogger(__name__)


# --- training -----------------------------------------------------------------------------------


def _as_dataset(
    source: Any, label_columns: Sequence[str] | None, classes: Mapping[str, Any] | None = None
) -> FaceDataset:
    if isinstance(source, FaceDataset):
        ds = source
        if label_columns:
            absent = [c for c in label_columns if c not in ds.label_columns]
            if absent:
                raise ValueError(f"the dataset has no labels {absent} (it has {ds.label_columns})")
        return ds.with_classes(classes) if classes else ds
    return FaceDataset(source, label_columns=label_columns, classes=classes)


def _targets(labels: Mapping[str, Any], cols: Sequence[str], device: torch.device) -> dict:
    return {c: torch.as_tensor(labels[c]).long().to(device, non_blocking=True) for c in cols}


def _loss(logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy (heads without a valid label in the batch skip;
    under DDP they add a zero, so every head's parameters take part in the gradient reduction)."""
    total = None
    for c, y in targets.items():
        if not bool((y != IGNORE_INDEX).any()):
            if distributed():
                zero = logits[c].float().sum() * 0.0
                total = zero if total is None else total + zero
            continue
        ce = F.cross_entropy(logits[c].float(), y, ignore_index=IGNORE_INDEX)
        total = ce if total is None else total + ce
    if total is None:
        total = sum(v.sum() for v in logits.values()) * 0.0
    return total


class _Tally:
    """Running sums of loss and per-head accuracy over an epoch."""

    def __init__(self, cols: Sequence[str]) -> None:
        self.cols = list(cols)
        self.loss = 0.0
        self.n = 0
        self.correct = dict.fromkeys(self.cols, 0)
        self.count = dict.fromkeys(self.cols, 0)

    def add(self, loss: torch.Tensor, logits: Mapping[str, torch.Tensor], targets: Mapping) -> None:
        b = next(iter(targets.values())).shape[0] if targets else 0
        self.loss += float(loss.detach()) * b
        self.n += b
        for c in self.cols:
            y = targets[c]
            ok = y != IGNORE_INDEX
            self.correct[c] += int(((logits[c].argmax(1) == y) & ok).sum())
            self.count[c] += int(ok.sum())

    def reduce(self, device: torch.device) -> None:
        """Sum the tallies of every process (nothing outside DDP)."""
        vals = [self.loss, self.n, *self.correct.values(), *self.count.values()]
        t = all_reduce_sum(torch.tensor(vals, dtype=torch.float64), device).tolist()
        k = len(self.cols)
        self.loss, self.n = t[0], int(t[1])
        self.correct = {c: int(v) for c, v in zip(self.cols, t[2 : 2 + k], strict=True)}
        self.count = {c: int(v) for c, v in zip(self.cols, t[2 + k :], strict=True)}

    def mean_loss(self) -> float:
        return self.loss / self.n if self.n else math.nan

    def acc(self, c: str) -> float:
        return self.correct[c] / self.count[c] if self.count[c] else math.nan


@torch.no_grad()
def evaluate(
    model: MultiHeadClassifier,
    dataset: FaceDataset,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """``{"loss": ..., "acc_<col>": ...}`` of ``model`` on a labelled dataset."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    amp = device.type == "cuda" if amp is None else amp
    cols = model.label_columns
    loader = make_loader(
        dataset, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    was_training = model.training
    model.eval()
    tally = _Tally(cols)
    for x, labels in loader:
        x = x.to(device, non_blocking=True)
        y = _targets(labels, cols, device)
        with autocast(device, amp):
            out = model(x)
        tally.add(_loss(out, y), out, y)
    model.train(was_training)
    return {"loss": tally.mean_loss(), **{f"acc_{c}": tally.acc(c) for c in cols}}


def train(
    train: FaceDataset | pd.DataFrame | str | os.PathLike | Any,
    val: FaceDataset | pd.DataFrame | str | os.PathLike | Any | None = None,
    label_columns: Sequence[str] | str | None = None,
    backbone: str = "resnet18",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = True,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
    pretrained_state_dict: Mapping[str, torch.Tensor] | str | os.PathLike | None = None,
    weight_decay: float = 1e-4,
    dropout: float = 0.0,
    seed: int = 0,
    *,
    keep_checkpoints: int | None = None,
    world_size: int = 1,
    dist_backend: str | None = None,
) -> tuple[MultiHeadClassifier, pd.DataFrame]:
    """Train a classifier with one head per label column; returns ``(model, metrics)``.

    ``train`` / ``val`` are :class:`~faceetl.datasets.FaceDataset` s or anything one is made from
    (a face table, a parquet path); ``val`` is re-encoded with the training vocabularies. The loss
    is the sum of the heads' cross-entropies (missing labels ignored), optimised with AdamW.
    With ``checkpoint_dir`` a checkpoint (model, optimiser, scaler, epoch, vocabularies, metrics)
    is written after every epoch (``epoch_001.pt`` ... (the last ``keep_checkpoints`` of them)
    and ``last.pt``); with ``resume`` a run finding ``last.pt`` there continues from it up to
    ``epochs`` (total, not additional; a path resumes from that checkpoint file or folder).
    Mixed precision (float16 autocast + GradScaler) is on by default on CUDA. ``world_size > 1``
    spawns that many processes (one GPU each on CUDA, else CPU with gloo) training with DDP;
    ``batch_size`` is then the total over them. Run under ``torchrun`` (or with a process group
    already initialised) each process trains its share. ``metrics`` has one
    row per epoch: ``epoch, train_loss, train_acc_<col>..., val_loss, val_acc_<col>..., images``
    (trained on, over all processes), ``lr, seconds``.
    """
    dataset_cols = label_columns
    if isinstance(dataset_cols, str):
        dataset_cols = [dataset_cols]
    train_ds = _as_dataset(train, dataset_cols)
    cols = list(dataset_cols or train_ds.label_columns)
    if not cols:
        raise ValueError("no label columns: pass label_columns=[...]")
    train_ds = _restrict(train_ds, cols)
    for c in cols:
        if train_ds.classes[c] is None:
            raise ValueError(f"label column {c!r} is float (a regression target), not classes")
        if len(train_ds.classes[c]) < 2:
            raise ValueError(f"label column {c!r} has {len(train_ds.classes[c])} class(es)")
    classes = {c: train_ds.classes[c] for c in cols}
    val_ds = None if val is None else _restrict(_as_dataset(val, cols, classes), cols)
    if len(train_ds) == 0:
        raise ValueError("the training set is empty (no rows with status ok and a crop?)")
    cfg = _Config(
        train=train_ds,
        val=val_ds,
        cols=cols,
        classes=classes,
        backbone=backbone,
        epochs=int(epochs),
        batch_size=int(batch_size),
        lr=float(lr),
        checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
        resume=resume if isinstance(resume, bool) else os.fspath(resume),
        device=None if device is None else str(device),
        amp=amp,
        num_workers=int(num_workers),
        progress=bool(progress),
        pretrained=os.fspath(pretrained_state_dict)
        if isinstance(pretrained_state_dict, os.PathLike)
        else pretrained_state_dict,
        weight_decay=float(weight_decay),
        dropout=float(dropout),
        seed=int(seed),
        keep=keep_checkpoints,
    )
    return launch(
        functools.partial(_train_process, cfg), int(world_size), device=cfg.device,
        backend=dist_backend,
    )  # fmt: skip


@dataclass
class _Config:
    """Everything one training process needs (picklable for ``torch.multiprocessing``)."""

    train: FaceDataset
    val: FaceDataset | None
    cols: list[str]
    classes: dict[str, list[Any]]
    backbone: str
    epochs: int
    batch_size: int
    lr: float
    checkpoint_dir: str | None
    resume: bool | str
    device: str | None
    amp: bool | None
    num_workers: int
    progress: bool
    pretrained: Mapping[str, torch.Tensor] | str | None
    weight_decay: float
    dropout: float
    seed: int
    keep: int | None


def _train_process(
    cfg: _Config, rank: int, world_size: int
) -> tuple[MultiHeadClassifier, pd.DataFrame]:
    """The training loop of one process (rank) of ``world_size``."""
    dev = device_for(cfg.device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    amp = amp_setup(dev, cfg.amp)
    main = rank == 0
    cols, train_ds, val_ds = cfg.cols, cfg.train, cfg.val
    torch.manual_seed(cfg.seed)
    model = MultiHeadClassifier(cfg.backbone, cfg.classes, dropout=cfg.dropout)
    if cfg.pretrained is not None:
        model.load_backbone(cfg.pretrained)
    model.to(dev)
    net = wrap_ddp(model, dev, world_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    ckpts = Checkpoints(cfg.checkpoint_dir, cfg.resume, keep=cfg.keep, main=main, logger=log)
    rows: list[dict[str, Any]] = []
    start = 0
    check = functools.partial(_check_compatible, cfg.backbone, cfg.classes)
    ck = ckpts.load(dev, cfg.epochs, check)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        amp.load_state_dict(ck.get("scaler"))
        start = int(ck["epoch"])
        rows = [dict(r) for r in ck.get("metrics", [])]

    config = plain(
        {
            "backbone": cfg.backbone,
            "label_columns": cols,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "dropout": cfg.dropout,
            "amp": amp.enabled,
            "seed": cfg.seed,
            "train_size": len(train_ds),
            "val_size": 0 if val_ds is None else len(val_ds),
            "world_size": world_size,
        }
    )
    samples, per_rank = shard(len(train_ds), cfg.batch_size, world_size)
    # BatchNorm cannot train on a last batch of one sample
    drop_last = samples % per_rank == 1 and samples > per_rank
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        loader = make_loader(
            train_ds, per_rank, shuffle=True, seed=cfg.seed, epoch=epoch, rank=rank,
            world_size=world_size, num_workers=cfg.num_workers, drop_last=drop_last,
            pin_memory=dev.type == "cuda",
        )  # fmt: skip
        tally = _Tally(cols)
        bar = progress_bar(loader, cfg.progress and main, f"epoch {epoch + 1}/{cfg.epochs}")
        for x, labels in bar:
            x = x.to(dev, non_blocking=True)
            y = _targets(labels, cols, dev)
            with amp.autocast():
                out = net(x)
            loss = _loss(out, y)
            if not amp.step(loss, opt):
                log.warning("non-finite loss in epoch %d: step skipped", epoch + 1)
            tally.add(loss, out, y)
            if cfg.progress and main:
                bar.set_postfix(loss=f"{tally.mean_loss():.4f}")
        tally.reduce(dev)
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": tally.mean_loss()}
        row.update({f"train_acc_{c}": tally.acc(c) for c in cols})
        if val_ds is not None and len(val_ds) and main:
            ev = evaluate(model, val_ds, cfg.batch_size, dev, amp.enabled, cfg.num_workers)
            row["val_loss"] = ev["loss"]
            row.update({f"val_acc_{c}": ev[f"acc_{c}"] for c in cols})
        row["images"] = tally.n
        row["lr"] = opt.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        rows.append(plain(row))
        if main:
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, row)
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": amp.state_dict(),
            "epoch": epoch + 1,
            "backbone": cfg.backbone,
            "label_columns": cols,
            "classes": plain(cfg.classes),
            "dropout": cfg.dropout,
            "metrics": rows,
            "config": config,
        }
        ckpts.save(state, epoch + 1)
        barrier()
    model.eval()
    return model, pd.DataFrame(rows)


def _restrict(ds: FaceDataset, cols: Sequence[str]) -> FaceDataset:
    """``ds`` returning only the labels ``cols`` (a shallow copy when it has more)."""
    if list(ds.label_columns) == list(cols):
        return ds
    import copy

    out = copy.copy(ds)
    out.label_columns = list(cols)
    return out


def _check_compatible(backbone: str, classes: Mapping, ck: Mapping[str, Any], path: Path) -> None:
    """A checkpoint of another backbone or other label vocabularies is not resumed."""
    if ck.get("backbone") != backbone:
        raise ValueError(f"{path} holds a {ck.get('backbone')!r} model, not {backbone!r}")
    saved = ck.get("classes", {})
    if list(saved) != list(classes) or any(list(saved[c]) != list(classes[c]) for c in classes):
        raise ValueError(
            f"{path} was trained on other labels/classes ({ {c: len(v) for c, v in saved.items()} }); "
            "use another checkpoint_dir or resume=False"
        )


# --- loading and predicting ---------------------------------------------------------------------


def load_classifier(
    checkpoint: str | os.PathLike, device: str | torch.device | None = "cpu"
) -> tuple[MultiHeadClassifier, dict[str, list[Any]]]:
    """``(model, classes)`` from a checkpoint file or a checkpoint folder (its ``last.pt``)."""
    path = checkpoint_file(checkpoint)
    dev = device_for(device)
    ck = torch.load(path, map_location=dev, weights_only=True)
    model = MultiHeadClassifier(ck["backbone"], ck["classes"], dropout=ck.get("dropout", 0.0))
    model.load_state_dict(ck["model"])
    model.to(dev).eval()
    return model, {c: list(v) for c, v in ck["classes"].items()}


@torch.no_grad()
def predict(
    model: MultiHeadClassifier,
    dataset: FaceDataset | pd.DataFrame | str | os.PathLike | Any,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    amp: bool | None = None,
    probabilities: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Predictions of ``model`` for every face of ``dataset``, one row each, in order.

    Columns per label column ``c``: ``c_pred`` (the class label), ``c_score`` (its softmax
    probability) and, with ``probabilities``, ``c_probs`` (all of them, in ``model.classes[c]``
    order). The index is ``dataset.frame``'s, so ``dataset.frame.join(preds)`` lines them up.
    """
    ds = dataset if isinstance(dataset, FaceDataset) else FaceDataset(dataset)
    ds = _restrict(ds, [])  # labels are not needed
    dev = next(model.parameters()).device if device is None else torch.device(device)
    model.to(dev)
    amp = dev.type == "cuda" if amp is None else amp
    was_training = model.training
    model.eval()
    loader = make_loader(ds, batch_size, num_workers=num_workers, pin_memory=dev.type == "cuda")
    probs: dict[str, list[np.ndarray]] = {c: [] for c in model.label_columns}
    for x, _ in progress_bar(loader, progress, "predict"):
        with autocast(dev, amp):
            out = model(x.to(dev, non_blocking=True))
        for c in model.label_columns:
            probs[c].append(out[c].float().softmax(1).cpu().numpy())
    model.train(was_training)
    res = pd.DataFrame(index=ds.frame.index)
    for c in model.label_columns:
        n_cls = len(model.classes[c])
        p = np.concatenate(probs[c]) if probs[c] else np.zeros((0, n_cls), np.float32)
        k = p.argmax(1) if len(p) else np.zeros(0, np.int64)
        vocab = np.array(model.classes[c], dtype=object)
        res[f"{c}_pred"] = vocab[k] if len(k) else np.array([], dtype=object)
        res[f"{c}_score"] = p[np.arange(len(p)), k].astype(np.float64) if len(p) else []
        if probabilities:
            res[f"{c}_probs"] = list(p)
    return res


def classifier(*args: Any, **kwargs: Any) -> tuple[MultiHeadClassifier, pd.DataFrame]:
    """Deprecated: :func:`train` under its old name."""
    warnings.warn(
        "faceetl.train.classifier.classifier(...) is deprecated: use "
        "faceetl.train.classifier.train(...)",
        DeprecationWarning,
        stacklevel=2,
    )
    return train(*args, **kwargs)


class _CallableModule(types.ModuleType):
    """This module, callable as its deprecated function: ``faceetl.train.classifier(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[MultiHeadClassifier, pd.DataFrame]:
        warnings.warn(
            "calling faceetl.train.classifier(...) is deprecated: use "
            "faceetl.train.classifier.train(...)",
            DeprecationWarning,
            stacklevel=2,
        )
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "BACKBONES",
    "MultiHeadClassifier",
    "ResNet18",
    "SmallCNN",
    "classifier",
    "evaluate",
    "load_classifier",
    "make_backbone",
    "predict",
    "train",
]
