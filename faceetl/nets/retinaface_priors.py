"""RetinaFace's prior boxes (anchors) and the coder between them and the heads' outputs.

Both directions live here: decoding for inference (backends, exporters) and encoding/matching
for training, so every user of the network agrees on one set of anchors and variances.
"""

from __future__ import annotations

import math

import torch

from .nms import box_iou

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)


def priors_for(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Anchors (P, 4) as cx, cy, w, h in canvas PIXELS, in the order of the heads' outputs."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy, cx = torch.meshgrid(
            (torch.arange(fh, dtype=torch.float32) + 0.5) * step,
            (torch.arange(fw, dtype=torch.float32) + 0.5) * step,
            indexing="ij",
        )
        per = []
        for s in sizes:
            wh = torch.full_like(cx, float(s))
            per.append(torch.stack([cx, cy, wh, wh], dim=-1))
        out.append(torch.stack(per, dim=2).reshape(-1, 4))  # (fh, fw, anchors, 4)
    return torch.cat(out).to(device)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Box deltas -> x1 y1 x2 y2 (same units as ``priors``)."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Landmark deltas (N, 10) -> points (N, 5, 2) (same units as ``priors``)."""
    pts = pre.reshape(-1, 5, 2)
    return priors[:, None, :2] + pts * VARIANCE[0] * priors[:, None, 2:]


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """cx cy w h -> x1 y1 x2 y2."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)


def normalised_priors(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The anchors (P, 4) cx cy w h of a ``size`` x ``size`` input, in units of the side."""
    return priors_for(size, size, device) / float(size)


def encode(matched: torch.Tensor, priors: torch.Tensor, variances=VARIANCE) -> torch.Tensor:
    """Boxes x1 y1 x2 y2 (P, 4) -> regression targets against ``priors`` (cx cy w h)."""
    centre = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (
        variances[0] * priors[:, 2:]
    )
    wh = (matched[:, 2:] - matched[:, :2]).clamp(min=1e-12) / priors[:, 2:]
    return torch.cat([centre, torch.log(wh) / variances[1]], 1)


def encode_landm(matched: torch.Tensor, priors: torch.Tensor, variances=VARIANCE) -> torch.Tensor:
    """Landmarks (P, 10) -> regression targets (P, 10) against ``priors``."""
    pts = matched.reshape(-1, 5, 2)
    out = (pts - priors[:, None, :2]) / (variances[0] * priors[:, None, 2:])
    return out.reshape(-1, 10)


def match(
    truths: torch.Tensor,
    labels: torch.Tensor,
    landms: torch.Tensor,
    priors: torch.Tensor,
    threshold: float = 0.35,
    variances=VARIANCE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match priors to faces; ``(loc_t (P, 4), conf_t (P,), landm_t (P, 10))``.

    Each prior takes the face it overlaps most; below ``threshold`` IoU it is background
    (conf 0), else its conf is the face's label (1, or -1 for a face without landmarks).
    Every face whose best prior reaches IoU 0.2 gets that prior whatever its overlap (the
    reference's "ignore hard gt" rule); a prior that is the best of several faces goes to the
    last of them, as in the reference loop.
    """
    num_priors = priors.shape[0]
    dev = priors.device
    if truths.numel() == 0:
        return (
            torch.zeros(num_priors, 4, device=dev),
            torch.zeros(num_priors, dtype=torch.long, device=dev),
            torch.zeros(num_priors, 10, device=dev),
        )
    overlaps = box_iou(truths, point_form(priors))  # (G, P)
    best_prior_overlap, best_prior_idx = overlaps.max(1)
    valid = best_prior_overlap >= 0.2
    if not bool(valid.any()):
        return (
            torch.zeros(num_priors, 4, device=dev),
            torch.zeros(num_priors, dtype=torch.long, device=dev),
            torch.zeros(num_priors, 10, device=dev),
        )
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap = best_truth_overlap.index_fill(0, best_prior_idx[valid], 2.0)
    # every face gets its best prior; on ties the highest face index wins (the reference loop)
    forced = torch.full((num_priors,), -1, dtype=torch.long, device=dev)
    forced.scatter_reduce_(0, best_prior_idx, torch.arange(len(truths), device=dev), reduce="amax")
    best_truth_idx = torch.where(forced >= 0, forced, best_truth_idx)
    conf = labels[best_truth_idx].long()
    conf[best_truth_overlap < threshold] = 0
    loc = encode(truths[best_truth_idx], priors, variances)
    landm = encode_landm(landms[best_truth_idx], priors, variances)
    return loc, conf, landm
