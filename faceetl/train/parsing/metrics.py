"""Face-parsing accuracy: one confusion matrix over all pixels, per-class IoU and mIoU.

``IoU_c = TP / (TP + FP + FN)``; a class absent from both the predictions and the labels has no
IoU (NaN) and is left out of the mean; mIoU includes the background unless
``include_background=False``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..common import inference, model_device
from .data import CLASSES, IGNORE_LABEL, N_CLASSES, CelebAMaskHQ, _as_dataset


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    n_classes: int = N_CLASSES,
    ignore_index: int = IGNORE_LABEL,
) -> np.ndarray:
    """(n, n) int64 counts: row = true class, column = predicted class (ignored pixels skipped)."""
    p = torch.as_tensor(pred).flatten().long()
    t = torch.as_tensor(label).flatten().long().to(p.device)
    keep = (t != ignore_index) & (t >= 0) & (t < n_classes)
    idx = t[keep] * n_classes + p[keep].clamp(0, n_classes - 1)
    cm = torch.bincount(idx, minlength=n_classes * n_classes)
    return cm.reshape(n_classes, n_classes).cpu().numpy().astype(np.int64)


def iou_from_confusion(
    cm: np.ndarray, classes: Sequence[str] = CLASSES, include_background: bool = True
) -> dict[str, Any]:
    """Per-class IoU, mIoU and pixel accuracy of a confusion matrix.

    ``IoU_c = TP / (TP + FP + FN)``; NaN for a class with no pixel in the labels nor in the
    predictions, and such classes are left out of ``miou`` (a class present in the labels but
    never predicted counts with IoU 0, and so does one predicted but absent from the labels).
    """
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    use = iou if include_background else iou[1:]
    present = ~np.isnan(use)
    total = cm.sum()
    return {
        "miou": float(use[present].mean()) if present.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
        "iou": {c: float(v) for c, v in zip(classes, iou, strict=True)},
        "n_classes": int(present.sum()),
        "confusion": cm.astype(np.int64),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset | str | os.PathLike,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    num_workers: int = 0,
    include_background: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU of ``model`` on a labelled dataset, from one confusion matrix over all its pixels.

    Returns ``{"miou", "pixel_accuracy", "iou": {class: IoU}, "n_classes", "confusion"}``
    (see :func:`iou_from_confusion`; classes absent from both predictions and labels are NaN
    and not averaged). A :class:`CelebAMaskHQ` is evaluated without augmentation (full images
    at its ``image_size``); a path is read as one. The prediction is the main head's argmax.
    """
    ds = _as_dataset(dataset, augment=False)
    if isinstance(ds, CelebAMaskHQ) and ds.augment:
        ds = ds.with_augment(False)
    dev = model_device(model, device)
    cm = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    for logits, y in inference(model, ds, batch_size, dev, amp, num_workers, bar=progress):
        cm += confusion_matrix(logits.argmax(1), y.to(dev))
    return iou_from_confusion(cm, include_background=include_background)


__all__ = ["confusion_matrix", "evaluate", "iou_from_confusion"]
