"""Non-maximum suppression and pairwise IoU on torch tensors.

IoU NMS runs in torchvision where its ops load, else in OpenCV's ``cv2.dnn.NMSBoxesBatched``
for CPU tensors (a compiled loop, ~12x faster than a Python one on photos with hundreds of
faces), else in plain torch. Every path keeps the same set (tested).
"""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.cache
def _torchvision_nms():
    """torchvision's batched_nms where its compiled ops load, else None."""
    try:
        from torchvision.ops import batched_nms

        batched_nms(torch.zeros((1, 4)), torch.ones(1), torch.zeros(1, dtype=torch.long), 0.5)
        return batched_nms
    except Exception:  # not installed, or its C++ ops do not load (CPU wheels here)
        return None


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (A, B) of x1 y1 x2 y2 boxes (degenerate boxes have area 0)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS in plain torch: indices kept, by decreasing score (torchvision's semantics)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].float()
    return order[_greedy(box_iou(b, b) > iou_threshold).to(boxes.device)]


def _greedy(over: torch.Tensor) -> torch.Tensor:
    """Indices kept by greedy suppression over boxes sorted by decreasing score: ``over[i, j]``
    says box i suppresses box j. A loop over the kept boxes (no library offers this on the
    pairwise matrix of an arbitrary overlap measure), on numpy: torch's per-element indexing
    costs microseconds a call."""
    over = over.cpu().numpy()
    removed = np.zeros(len(over), dtype=bool)
    keep = []
    for i in range(len(over)):
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return torch.tensor(keep, dtype=torch.long)


def _opencv_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor | None:
    """``cv2.dnn.NMSBoxesBatched`` on CPU boxes (x1 y1 x2 y2 -> x y w h), kept indices by score;
    None where OpenCV cannot take them (not importable, non-finite values)."""
    try:
        import cv2
    except ImportError:
        return None
    b = boxes.detach().cpu().double().numpy()
    s = scores.detach().cpu().double().numpy()
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        return None
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    # score threshold below every score: OpenCV keeps scores strictly above it
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), s.tolist(), groups.cpu().numpy().astype(np.int64).tolist(),
        float(s.min()) - 1.0, float(iou_threshold),
    )  # fmt: skip
    keep = torch.as_tensor(np.asarray(keep, dtype=np.int64).reshape(-1), device=boxes.device)
    # OpenCV returns them by decreasing score already; ties keep input order like torch's sort
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS done independently per group (e.g. per image of a batch): kept indices, by score.

    Uses ``torchvision.ops.batched_nms`` where torchvision works, the torch fallback otherwise.
    """
    tv = _torchvision_nms()
    if tv is not None:
        return tv(boxes, scores, groups, iou_threshold)
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.device.type == "cpu":
        keep = _opencv_batched_nms(boxes, scores, groups, iou_threshold)
        if keep is not None:
            return keep
    # offset boxes per group so that boxes of different groups never overlap (as torchvision does)
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return nms_reference(boxes + offsets[:, None], scores, iou_threshold)


def nms_min_overlap(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, thr: float
) -> torch.Tensor:
    """Greedy NMS per group with overlap = intersection / smaller area (+1 pixel areas): the
    "Min" variant of MTCNN's last stage."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].double()
    g = groups[order]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = (
        torch.minimum(b[:, None, 2], b[None, :, 2])
        - torch.maximum(b[:, None, 0], b[None, :, 0])
        + 1
    )
    ih = (
        torch.minimum(b[:, None, 3], b[None, :, 3])
        - torch.maximum(b[:, None, 1], b[None, :, 1])
        + 1
    )
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    over = (inter / torch.minimum(area[:, None], area[None, :]) > thr) & (g[:, None] == g[None, :])
    return order[_greedy(over).to(boxes.device)]


def batched_nms_chunked(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    thr: float,
    chunk: int = 2048,
) -> torch.Tensor:
    """:func:`batched_nms`, called on packs of whole groups of at most ``chunk``
    boxes (one group may be larger) so that a pairwise-matrix fallback stays small."""
    if len(boxes) <= chunk:
        return batched_nms(boxes, scores, groups, thr)
    uniq, counts = torch.unique(groups, return_counts=True)
    keep, pack, n = [], [], 0
    for g, c in zip(uniq.tolist(), counts.tolist(), strict=True):
        if pack and n + c > chunk:
            keep.append(_nms_pack(boxes, scores, groups, thr, pack))
            pack, n = [], 0
        pack.append(g)
        n += c
    if pack:
        keep.append(_nms_pack(boxes, scores, groups, thr, pack))
    keep = torch.cat(keep)
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def _nms_pack(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, thr: float, pack: list[int]
) -> torch.Tensor:
    idx = torch.isin(groups, torch.tensor(pack, device=groups.device)).nonzero()[:, 0]
    return idx[batched_nms(boxes[idx], scores[idx], groups[idx], thr)]
