"""RetinaFace's multibox loss (biubug6 ``multibox_loss.py``): smooth-L1 on boxes and landmarks,
softmax cross-entropy with hard negative mining. Priors are matched to faces and offsets encoded
by :func:`faceetl.nets.retinaface_priors.match`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...nets.retinaface_priors import VARIANCE, match


def hard_negatives(loss_c: torch.Tensor, pos: torch.Tensor, ratio: float = 7) -> torch.Tensor:
    """Per image (rows), the ``ratio`` x positives highest-loss non-positive priors (bool mask).

    At most ``P - 1`` per image; none in an image without positives (as the reference).
    """
    loss_c = loss_c.detach().masked_fill(pos, 0.0)
    _, order = loss_c.sort(1, descending=True)
    _, rank = order.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp((ratio * num_pos).long(), max=pos.shape[1] - 1)
    return (rank < num_neg) & ~pos


class LossOutput(NamedTuple):
    """The three loss terms (each a mean per matched prior) and the counts they rest on."""

    loc: torch.Tensor
    conf: torch.Tensor
    landm: torch.Tensor
    num_pos: int
    num_neg: int
    num_pos_landm: int

    def total(self, loc_weight: float = 2.0) -> torch.Tensor:
        return loc_weight * self.loc + self.conf + self.landm


class MultiBoxLoss(nn.Module):
    """RetinaFace's multibox loss: smooth-L1 boxes and landmarks, softmax CE with hard negatives.

    ``forward((loc, conf_logits, landm), priors, targets)``: predictions (B, P, 4 / 2 / 10)
    before the softmax, ``priors`` (P, 4) normalised cx cy w h, ``targets`` one (N, 15) tensor
    per image (normalised; label -1: no landmarks). Box and class terms are divided by the
    number of positive priors, the landmark term by the positives of faces with landmarks.
    """

    def __init__(
        self, threshold: float = 0.35, neg_pos_ratio: float = 7, variances=VARIANCE
    ) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.variances = tuple(variances)

    @torch.no_grad()
    def targets(
        self, priors: torch.Tensor, targets: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matched ``(loc_t (B, P, 4), conf_t (B, P), landm_t (B, P, 10))`` of a batch."""
        out = [
            match(t[:, :4], t[:, 14], t[:, 4:14], priors, self.threshold, self.variances)
            for t in (t.to(priors.device, torch.float32) for t in targets)
        ]
        loc_t, conf_t, landm_t = (torch.stack(v) for v in zip(*out, strict=True))
        return loc_t, conf_t, landm_t

    def forward(
        self,
        predictions: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        priors: torch.Tensor,
        targets: Sequence[torch.Tensor],
    ) -> LossOutput:
        loc_p, conf_p, landm_p = (p.float() for p in predictions)
        loc_t, conf_t, landm_t = self.targets(priors.float(), targets)

        pos_landm = conf_t > 0
        n_landm = int(pos_landm.sum())
        loss_landm = F.smooth_l1_loss(landm_p[pos_landm], landm_t[pos_landm], reduction="sum")

        pos = conf_t != 0
        labels = pos.long()
        n_pos = int(pos.sum())
        loss_l = F.smooth_l1_loss(loc_p[pos], loc_t[pos], reduction="sum")

        per_prior = torch.logsumexp(conf_p, dim=2) - conf_p.gather(2, labels[..., None])[..., 0]
        neg = hard_negatives(per_prior, pos, self.neg_pos_ratio)
        sel = pos | neg
        loss_c = F.cross_entropy(conf_p[sel], labels[sel], reduction="sum")

        n = max(n_pos, 1)
        return LossOutput(
            loss_l / n, loss_c / n, loss_landm / max(n_landm, 1), n_pos, int(neg.sum()), n_landm
        )


__all__ = ["LossOutput", "MultiBoxLoss", "hard_negatives"]
