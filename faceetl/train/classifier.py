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
    all_reduce_sum,
    checkpoint_file,
    device_for,
    distributed,
    inference,
    model_device,
    plain,
    wrap_ddp,
)
from .recipe import Recipe, RunConfig, plain_path

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
    dev = model_device(model, device)
    cols = model.label_columns
    tally = _Tally(cols)
    for out, labels in inference(model, dataset, batch_size, dev, amp, num_workers):
        y = _targets(labels, cols, dev)
        tally.add(_loss(out, y), out, y)
    return {"loss": tally.mean_loss(), **{f"acc_{c}": tally.acc(c) for c in cols}}


@dataclass(frozen=True, kw_only=True, eq=False)
class _Config(RunConfig):
    """A classifier run: the label columns, their vocabularies and the model's settings."""

    cols: list[str]
    classes: dict[str, list[Any]]
    backbone: str
    pretrained: Mapping[str, torch.Tensor] | str | None
    weight_decay: float
    dropout: float


class _Classifier(Recipe[_Config]):
    """One process of a classifier run: AdamW on the sum of the heads' cross-entropies."""

    log = log
    weights_key = "model"
    tally: _Tally

    def build(self) -> tuple[MultiHeadClassifier, torch.nn.Module, torch.optim.Optimizer]:
        cfg = self.cfg
        model = MultiHeadClassifier(cfg.backbone, cfg.classes, dropout=cfg.dropout)
        if cfg.pretrained is not None:
            model.load_backbone(cfg.pretrained)
        model.to(self.dev)
        net = wrap_ddp(model, self.dev, self.world_size)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return model, net, opt

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "backbone": cfg.backbone,
            "label_columns": cfg.cols,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "dropout": cfg.dropout,
            "amp": self.amp.enabled,
            "seed": cfg.seed,
            "train_size": len(cfg.train),
            "val_size": 0 if cfg.val is None else len(cfg.val),
            "world_size": self.world_size,
        }

    def check(self, ck: Mapping[str, Any], path: Path) -> None:
        """A checkpoint of another backbone or other label vocabularies is not resumed."""
        backbone, classes = self.cfg.backbone, self.cfg.classes
        if ck.get("backbone") != backbone:
            raise ValueError(f"{path} holds a {ck.get('backbone')!r} model, not {backbone!r}")
        saved = ck.get("classes", {})
        if list(saved) != list(classes) or any(list(saved[c]) != list(classes[c]) for c in classes):
            raise ValueError(
                f"{path} was trained on other labels/classes ({ {c: len(v) for c, v in saved.items()} }); "
                "use another checkpoint_dir or resume=False"
            )

    def begin_epoch(self, epoch: int) -> None:
        self.tally = _Tally(self.cfg.cols)

    def step(self, batch: tuple[torch.Tensor, Mapping[str, Any]], epoch: int) -> None:
        x, labels = batch
        x = x.to(self.dev, non_blocking=True)
        y = _targets(labels, self.cfg.cols, self.dev)
        with self.amp.autocast():
            out = self.net(x)
        loss = _loss(out, y)
        self.optimise(loss, f"in epoch {epoch + 1}")
        self.tally.add(loss, out, y)

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.tally.mean_loss():.4f}"}

    def end_epoch(self, epoch: int, t0: float) -> dict[str, Any]:
        cfg, tally = self.cfg, self.tally
        tally.reduce(self.dev)
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": tally.mean_loss()}
        row.update({f"train_acc_{c}": tally.acc(c) for c in cfg.cols})
        if self.validating:
            ev = evaluate(self.model, cfg.val, cfg.batch_size, self.dev, self.amp.enabled,
                          cfg.num_workers)  # fmt: skip
            row["val_loss"] = ev["loss"]
            row.update({f"val_acc_{c}": ev[f"acc_{c}"] for c in cfg.cols})
        row["images"] = tally.n
        row["lr"] = self.opt.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        return row

    def checkpoint_fields(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "backbone": cfg.backbone,
            "label_columns": cfg.cols,
            "classes": plain(cfg.classes),
            "dropout": cfg.dropout,
        }


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
        train=train_ds, val=val_ds, cols=cols, classes=classes, backbone=backbone, epochs=epochs,
        batch_size=batch_size, lr=lr, checkpoint_dir=checkpoint_dir, resume=resume,
        device=device, amp=amp, num_workers=num_workers, progress=progress,
        pretrained=plain_path(pretrained_state_dict), weight_decay=float(weight_decay),
        dropout=float(dropout), seed=seed, keep=keep_checkpoints, dist_backend=dist_backend,
    )  # fmt: skip
    return _Classifier.run(cfg, world_size)


def _restrict(ds: FaceDataset, cols: Sequence[str]) -> FaceDataset:
    """``ds`` returning only the labels ``cols`` (a shallow copy when it has more)."""
    if list(ds.label_columns) == list(cols):
        return ds
    import copy

    out = copy.copy(ds)
    out.label_columns = list(cols)
    return out


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
    dev = model_device(model, device)
    probs: dict[str, list[np.ndarray]] = {c: [] for c in model.label_columns}
    batches = inference(model, ds, batch_size, dev, amp, num_workers, bar=progress, desc="predict")
    for out, _ in batches:
        for c in model.label_columns:
            probs[c].append(out[c].float().softmax(1).cpu().numpy())
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
