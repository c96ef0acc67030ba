"""Non-maximum suppression and pairwise IoU on torch tensors (torchvision where it imports)."""

from __future__ import annotations

import functools

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
    over = (box_iou(b, b) > iou_threshold).cpu()
    n = len(b)
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


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
    # offset boxes per group so that boxes of different groups never overlap (as torchvision does)
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return nms_reference(boxes + offsets[:, None], scores, iou_threshold)
