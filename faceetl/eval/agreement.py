"""Comparing face tables: match faces between two runs, measure how alike their crops are."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..align import transform_points
from ..boxes import box_iou
from ..schema import STATUS_OK, boxes_array, landmarks_array


def match_faces(a: pd.DataFrame, b: pd.DataFrame, min_iou: float = 0.5) -> pd.DataFrame:
    """Pairs of rows (one face in ``a``, the same face in ``b``), greedily by box IoU per image.

    Returns a frame with columns ``path``, ``ia``, ``ib`` (row labels in a and b) and ``iou``.
    """
    out = []
    a = a[a["status"] == STATUS_OK]
    b = b[b["status"] == STATUS_OK]
    for path, ga in a.groupby("path", sort=False):
        gb = b[b["path"] == path]
        if len(gb) == 0:
            continue
        m = box_iou(boxes_array(ga), boxes_array(gb))
        while m.size and m.max() >= min_iou:
            i, j = np.unravel_index(np.argmax(m), m.shape)
            out.append((path, ga.index[i], gb.index[j], float(m[i, j])))
            m[i, :] = -1
            m[:, j] = -1
    return pd.DataFrame(out, columns=["path", "ia", "ib", "iou"])


def eye_agreement(
    a: pd.DataFrame, b: pd.DataFrame, reference: pd.DataFrame, crop_size: int, min_iou: float = 0.5
) -> pd.DataFrame:
    """Where the same eyes land in the crops of two runs, as a fraction of the crop size.

    For each face found by ``a``, ``b`` and ``reference`` (matched by box), the reference run's
    eye centres are mapped through a's and b's image-to-crop transforms; ``dist`` is the larger of
    the two eyes' distances between the two crops, divided by ``crop_size``.
    """
    ab = match_faces(a, b, min_iou)
    ref = match_faces(a, reference, min_iou).set_index("ia")["ib"]
    ref_lm = landmarks_array(reference)
    pos = {label: k for k, label in enumerate(reference.index)}
    rows = []
    for path, ia, ib, _ in ab.itertuples(index=False):
        if ia not in ref.index:
            continue
        eyes = ref_lm[pos[ref[ia]], :2]
        if not np.isfinite(eyes).all():
            continue
        ma = np.asarray(a.loc[ia, "affine"], np.float64).reshape(2, 3)
        mb = np.asarray(b.loc[ib, "affine"], np.float64).reshape(2, 3)
        d = np.linalg.norm(transform_points(ma, eyes) - transform_points(mb, eyes), axis=1)
        rows.append((path, ia, ib, float(d.max() / crop_size)))
    return pd.DataFrame(rows, columns=["path", "ia", "ib", "dist"])
