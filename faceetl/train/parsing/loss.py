"""face-parsing.PyTorch's training loss: cross-entropy over the hard pixels (OHEM)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .data import IGNORE_LABEL


class OhemCELoss(nn.Module):
    """Cross-entropy averaged over the hard pixels (online hard example mining).

    Pixels labelled ``ignore_index`` do not count. The hard pixels are those whose loss exceeds
    ``-log(thresh)`` (predicted probability of the true class below ``thresh``); when fewer than
    ``n_min`` are hard, the ``n_min`` largest losses are averaged instead (all valid pixels when
    there are fewer). ``n_min=None`` takes 1/16 of the batch's pixels, face-parsing.PyTorch's
    ``n_img * H * W // 16``.
    """

    def __init__(
        self, thresh: float = 0.7, n_min: int | None = None, ignore_index: int = IGNORE_LABEL
    ) -> None:
        super().__init__()
        if not 0 < thresh <= 1:
            raise ValueError("thresh is a probability in (0, 1]")
        self.thresh = float(thresh)
        self.loss_thresh = -math.log(self.thresh)
        self.n_min = None if n_min is None else int(n_min)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(
            logits.float(), labels.long(), ignore_index=self.ignore_index, reduction="none"
        ).flatten()
        valid = loss[labels.flatten() != self.ignore_index]
        if valid.numel() == 0:
            return logits.sum() * 0.0
        n_min = labels.numel() // 16 if self.n_min is None else self.n_min
        n_min = max(1, min(n_min, valid.numel()))
        hard = valid[valid > self.loss_thresh]
        if hard.numel() >= n_min:
            return hard.mean()
        return valid.topk(n_min, sorted=False).values.mean()


__all__ = ["OhemCELoss"]
