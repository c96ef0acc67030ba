"""NMS: OpenCV's compiled batched NMS (the CPU path where torchvision does not import) keeps
exactly the set the greedy reference keeps, per group, in the same order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceetl.nets import nms


def _boxes(rng: np.random.Generator, n: int) -> torch.Tensor:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(4, 60, (n, 2))
    return torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)


def _reference(boxes, scores, groups, thr):
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return nms.nms_reference(boxes + offsets[:, None], scores, thr)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("thr", [0.3, 0.4, 0.7])
def test_opencv_batched_nms_keeps_the_reference_set(seed, thr):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    boxes = _boxes(rng, n)
    scores = torch.tensor(rng.uniform(0, 1, n), dtype=torch.float32)
    if seed % 3 == 0:  # ties in score keep input order, as torch's stable sort does
        scores = torch.round(scores * 10) / 10
    groups = torch.tensor(rng.integers(0, 4, n))
    got = nms._opencv_batched_nms(boxes, scores, groups, thr)
    want = _reference(boxes, scores, groups, thr)
    assert got is not None
    assert got.tolist() == want.tolist()


def test_batched_nms_uses_the_compiled_path_on_cpu_and_falls_back_on_non_finite():
    rng = np.random.default_rng(0)
    boxes = _boxes(rng, 50)
    scores = torch.rand(50)
    groups = torch.zeros(50, dtype=torch.long)
    assert (
        nms.batched_nms(boxes, scores, groups, 0.4).tolist()
        == _reference(boxes, scores, groups, 0.4).tolist()
    )
    bad = boxes.clone()
    bad[3, 2] = float("nan")
    assert nms._opencv_batched_nms(bad, scores, groups, 0.4) is None
    assert len(nms.batched_nms(bad, scores, groups, 0.4)) > 0  # the torch loop takes it
    empty = nms.batched_nms(
        torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.4
    )
    assert empty.numel() == 0


def test_min_overlap_greedy_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    boxes = _boxes(rng, 300)
    scores = torch.rand(300)
    groups = torch.tensor(rng.integers(0, 3, 300))
    got = nms.nms_min_overlap(boxes, scores, groups, 0.7).tolist()
    b, s, g = boxes.double().numpy(), scores.numpy(), groups.numpy()
    order = np.argsort(-s, kind="stable")
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            if g[i] != g[j]:
                continue
            iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + 1
            ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            area = lambda k: (b[k, 2] - b[k, 0] + 1) * (b[k, 3] - b[k, 1] + 1)  # noqa: E731
            if inter / min(area(i), area(j)) > 0.7:
                ok = False
                break
        if ok:
            keep.append(int(i))
    assert got == keep
