"""Fine-tune a multi-head face classifier (one linear head per label column) on extracted crops.

>>> train_df, val_df = stratified_split(faces, by=["race", "gender"], group="path")
>>> model, metrics = classifier(train_df, val_df, label_columns=["race", "gender", "age"],
...                             epochs=10, checkpoint_dir="runs/fairface")
>>> model, classes = load_classifier("runs/fairface")
>>> preds = predict(model, FaceDataset(val_df))

The backbones are written here in plain torch (torchvision is optional): ``"resnet18"`` has
torchvision's parameter names, so ``torchvision.models.resnet18(weights=...).state_dict()`` loads
as ``pretrained_state_dict``; ``"small"`` is a 4-layer CNN for quick CPU runs. Models take RGB
crops as float tensors in [0, 1] and normalise them with the ImageNet mean and std themselves.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..data import IGNORE_INDEX, FaceDataset
from ..nets.classifier import (
    BACKBONES,
    MultiHeadClassifier,
    ResNet18,
    SmallCNN,
    make_backbone,
)
from ._common import LAST, autocast, checkpoint_file, plain, save
from ._common import progress as progress_bar

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


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


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _targets(labels: Mapping[str, Any], cols: Sequence[str], device: torch.device) -> dict:
    return {c: torch.as_tensor(labels[c]).long().to(device, non_blocking=True) for c in cols}


def _loss(logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy (heads without a valid label in the batch skip)."""
    total = None
    for c, y in targets.items():
        if not bool((y != IGNORE_INDEX).any()):
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
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
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


def classifier(
    train: FaceDataset | pd.DataFrame | str | os.PathLike | Any,
    val: FaceDataset | pd.DataFrame | str | os.PathLike | Any | None = None,
    label_columns: Sequence[str] | str | None = None,
    backbone: str = "resnet18",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
    pretrained_state_dict: Mapping[str, torch.Tensor] | str | os.PathLike | None = None,
    weight_decay: float = 1e-4,
    dropout: float = 0.0,
    seed: int = 0,
) -> tuple[MultiHeadClassifier, pd.DataFrame]:
    """Train a classifier with one head per label column; returns ``(model, metrics)``.

    ``train`` / ``val`` are :class:`~faceetl.data.FaceDataset` s or anything one is made from
    (a face table, a parquet path); ``val`` is re-encoded with the training vocabularies. The loss
    is the sum of the heads' cross-entropies (missing labels ignored), optimised with AdamW.
    With ``checkpoint_dir`` a checkpoint (model, optimiser, scaler, epoch, vocabularies, metrics)
    is written after every epoch (``epoch_001.pt`` ... and ``last.pt``); with ``resume`` a run
    finding ``last.pt`` there continues from it up to ``epochs`` (total, not additional).
    Mixed precision (float16 autocast + GradScaler) is on by default on CUDA. ``metrics`` has one
    row per epoch: ``epoch, train_loss, train_acc_<col>..., val_loss, val_acc_<col>..., seconds``.
    """
    if isinstance(label_columns, str):
        label_columns = [label_columns]
    train_ds = _as_dataset(train, label_columns)
    cols = list(label_columns or train_ds.label_columns)
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

    dev = _default_device(device)
    amp = dev.type == "cuda" if amp is None else bool(amp)
    torch.manual_seed(seed)
    model = MultiHeadClassifier(backbone, classes, dropout=dropout)
    if pretrained_state_dict is not None:
        model.load_backbone(pretrained_state_dict)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and dev.type == "cuda")

    rows: list[dict[str, Any]] = []
    start = 0
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        if not resume and (ckdir / LAST).is_file():
            log.warning("resume=False: checkpoints in %s will be overwritten", ckdir)
        if resume and (ckdir / LAST).is_file():
            ck = torch.load(ckdir / LAST, map_location=dev, weights_only=True)
            _check_compatible(ck, backbone, classes, ckdir / LAST)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if ck.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(ck["scaler"])
            start = int(ck["epoch"])
            rows = [dict(r) for r in ck.get("metrics", [])]
            log.info("resuming from %s at epoch %d of %d", ckdir / LAST, start + 1, epochs)

    config = plain(
        {
            "backbone": backbone,
            "label_columns": cols,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "dropout": dropout,
            "amp": amp,
            "seed": seed,
            "train_size": len(train_ds),
            "val_size": 0 if val_ds is None else len(val_ds),
        }
    )
    pin = dev.type == "cuda"
    # BatchNorm cannot train on a last batch of one sample
    drop_last = len(train_ds) % batch_size == 1 and len(train_ds) > batch_size
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        loader = DataLoader(
            train_ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
            pin_memory=pin, drop_last=drop_last,
            generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
        )  # fmt: skip
        tally = _Tally(cols)
        bar = progress_bar(loader, progress, f"epoch {epoch + 1}/{epochs}")
        for x, labels in bar:
            x = x.to(dev, non_blocking=True)
            y = _targets(labels, cols, dev)
            with autocast(dev, amp):
                out = model(x)
            loss = _loss(out, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            tally.add(loss, out, y)
            if progress:
                bar.set_postfix(loss=f"{tally.mean_loss():.4f}")
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": tally.mean_loss()}
        row.update({f"train_acc_{c}": tally.acc(c) for c in cols})
        if val_ds is not None and len(val_ds):
            ev = evaluate(model, val_ds, batch_size, dev, amp, num_workers)
            row["val_loss"] = ev["loss"]
            row.update({f"val_acc_{c}": ev[f"acc_{c}"] for c in cols})
        row["lr"] = opt.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        rows.append(plain(row))
        log.info("epoch %d/%d: %s", epoch + 1, epochs, row)
        if ckdir is not None:
            ck = {
                "version": CHECKPOINT_VERSION,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "epoch": epoch + 1,
                "backbone": backbone,
                "label_columns": cols,
                "classes": plain(classes),
                "dropout": dropout,
                "metrics": rows,
                "config": config,
            }
            save(ck, ckdir / f"epoch_{epoch + 1:03d}.pt")
            save(ck, ckdir / LAST)
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


def _check_compatible(ck: Mapping[str, Any], backbone: str, classes: Mapping, path: Path) -> None:
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
    dev = _default_device(device)
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
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )  # fmt: skip
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
]
