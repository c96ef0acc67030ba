"""WIDER FACE evaluation: easy / medium / hard AP exactly as the official tool computes it.

The official evaluation is the MATLAB ``eval_tools`` of WIDER FACE (Shuo Yang, 2015) and its
Python port (wondervictor's ``evaluation.py``, shipped e.g. in biubug6/Pytorch_Retinaface's
``widerface_evaluate``). This is an independent, vectorised implementation of the same steps:

1. Ground truth: ``wider_face_val.mat`` (``event_list``, ``file_list``, ``face_bbx_list`` with
   boxes ``x y w h``) and ``wider_{easy,medium,hard}_val.mat`` whose ``gt_list`` holds, per image,
   the 1-based indices of the boxes that count in that setting. The other boxes are *ignored*:
   a detection whose best match is one of them is neither a true nor a false positive.
2. Predictions per image as ``x y w h score`` rows, sorted by decreasing score (stable, as
   ``read_pred.m`` does). Scores are min-max normalised over all predictions of the evaluated
   images (``norm_score``; like the Python port the running min starts at 1 and the max at 0).
3. Per image (``image_evaluation``): boxes become ``x1 y1 x2 y2`` with ``x2 = x + w``, the IoU
   uses the VOC "+1 pixel" convention of ``boxoverlap.m`` / ``bbox_overlaps``. Detections are
   taken in score order; each one's best-overlapping GT box (first on ties) decides: IoU below
   the threshold -> false positive; an ignored box -> the detection stops counting as a
   proposal; a counted box not yet recalled -> it becomes recalled (a later detection of the same
   face stays a proposal: a false positive).
4. 1000 score thresholds ``1 - t/1000`` (t = 1..1000): per image the number of proposals and
   of recalled faces up to the last detection scoring at least the threshold (``image_pr_info``),
   summed over images; precision = recalled / proposals, recall = recalled / counted faces, where
   every image's counted faces add up, with or without predictions (``dataset_pr_info``).
5. AP: VOC all-point average precision with the precision envelope (``VOCap``).

Documented differences from the official tools (none changes a result on valid input):

* When every normalised score would be ``0/0`` (all predictions share one score in [0, 1]) the
  official tools produce NaN scores and an AP of 0/NaN; here every score becomes 1.0.
* A setting with no counted face in the evaluated images has an undefined recall; its AP is NaN.
* ``images=`` evaluates a subset as if the dataset were just those images: only their faces are
  counted and only their predictions enter the score normalisation. The official tools always
  use the whole val set (3226 images); with ``images=None`` this does too.
* Predictions for images outside the ground truth are ignored and do not enter the
  normalisation (as in ``read_pred.m``; the Python port would normalise over every txt file).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..datasets.wider import SETTINGS, WiderGT, read_widerface_gt  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

THRESH_NUM = 1000

_EVENT_RE = re.compile(r"^\d+--.+$")

Predictions = str | os.PathLike | pd.DataFrame | Mapping[str, np.ndarray]


# ----------------------------------------------------------------------------- predictions


def read_widerface_txt(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Predictions in the official layout: ``folder/<event>/<name>.txt`` -> ``{name: (N, 5)}``.

    Each file holds a name line (ignored, as ``read_pred.m`` does), the number of boxes, then one
    ``x y w h score`` line per box. Images are keyed by the txt file's stem.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"prediction folder {root} does not exist")
    out: dict[str, np.ndarray] = {}
    for f in sorted(root.rglob("*.txt")):
        lines = [ln.strip() for ln in f.read_text().splitlines()]
        if len(lines) < 2:
            raise ValueError(f"{f}: expected a name line and a count line")
        try:
            count = int(float(lines[1]))
        except ValueError:
            raise ValueError(
                f"{f}: the second line must be the number of boxes, got {lines[1]!r}"
            ) from None
        rows = [ln for ln in lines[2:] if ln]
        if len(rows) != count:
            raise ValueError(f"{f}: announces {count} boxes but holds {len(rows)} box lines")
        arr = np.zeros((count, 5), np.float64)
        for k, ln in enumerate(rows):
            vals = ln.split()
            if len(vals) < 5:
                raise ValueError(f"{f}: box line {k + 1} needs 'x y w h score', got {ln!r}")
            arr[k] = [float(v) for v in vals[:5]]
        if f.stem in out:
            raise ValueError(f"two prediction files for image {f.stem!r} under {root}")
        out[f.stem] = arr
    return out


def _frame_to_preds(
    df: pd.DataFrame, integer: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """faceetl face rows -> ``{name: (N, 5) x y w h score}`` and ``{name: path}``.

    ``integer`` truncates the corners first (biubug6's ``int(x1)``, ``int(x2) - int(x1)``).
    """
    missing = {"path", "x1", "y1", "x2", "y2", "score"} - set(df.columns)
    if missing:
        raise ValueError(f"the predictions frame lacks columns {sorted(missing)}")
    out: dict[str, np.ndarray] = {}
    paths: dict[str, str] = {}
    ok = np.ones(len(df), bool)
    if "status" in df.columns:
        ok = np.array(df["status"] == "ok", dtype=bool)  # a writable copy (copy-on-write pandas)
    vals = np.array(df[["x1", "y1", "x2", "y2", "score"]].to_numpy(np.float64), copy=True)
    ok &= np.isfinite(vals).all(axis=1)
    if integer:
        vals[:, :4] = np.trunc(vals[:, :4])
    for path, pos in pd.Series(np.arange(len(df))).groupby(
        df["path"].astype(str).to_numpy(), sort=False
    ):
        name = Path(path).stem
        if name in paths and paths[name] != path:
            raise ValueError(f"two images share the name {name!r}: {paths[name]} and {path}")
        paths[name] = path
        rows = vals[pos.to_numpy()[ok[pos.to_numpy()]]]
        xywh = np.column_stack(
            [rows[:, 0], rows[:, 1], rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1], rows[:, 4]]
        )
        out[name] = xywh.reshape(-1, 5)
    return out, paths


def _as_preds(predictions: Predictions) -> dict[str, np.ndarray]:
    if isinstance(predictions, pd.DataFrame):
        return _frame_to_preds(predictions)[0]
    if isinstance(predictions, (str, os.PathLike)):
        return read_widerface_txt(predictions)
    if isinstance(predictions, Mapping):
        out = {}
        for name, arr in predictions.items():
            a = np.asarray(arr, np.float64)
            if a.size and (a.ndim != 2 or a.shape[1] < 5):
                raise ValueError(f"predictions for {name!r} must be (N, 5) x y w h score")
            out[Path(str(name)).stem] = a[:, :5].reshape(-1, 5) if a.size else np.zeros((0, 5))
        return out
    raise TypeError(
        "predictions must be a txt folder, a faceetl DataFrame or a mapping name -> (N, 5) array"
    )


def write_widerface_txt(
    predictions: pd.DataFrame | Mapping[str, np.ndarray],
    out_dir: str | os.PathLike,
    gt_dir: str | os.PathLike | None = None,
    integer: bool = False,
) -> list[Path]:
    """Write predictions in the official layout ``out_dir/<event>/<name>.txt``; the files written.

    A file's lines are the image name, the box count and ``x y w h score`` per box, sorted by
    decreasing score. The event folder is the image's parent folder when that is a WIDER event
    (``12--Group``), else looked up in the ground truth of ``gt_dir``. Values are written exactly
    (shortest round-trip repr); ``integer=True`` instead truncates like biubug6's
    ``test_widerface.py`` (``x = int(x1)``, ``w = int(x2) - int(x1)``; DataFrame input only).
    An image of a DataFrame without faces gets a file with count 0.
    """
    if isinstance(predictions, pd.DataFrame):
        preds, paths = _frame_to_preds(predictions, integer)
    else:
        if integer:
            raise ValueError("integer=True needs a DataFrame (x1 y1 x2 y2 boxes)")
        preds, paths = _as_preds(predictions), {}
    lookup: dict[str, str] = {}
    if gt_dir is not None:
        gt = read_widerface_gt(gt_dir)
        lookup = dict(zip(gt.names, gt.events, strict=True))
    written = []
    for name, a in preds.items():
        parent = Path(paths[name]).parent.name if name in paths else ""
        if _EVENT_RE.match(parent):
            event = parent
        elif name in lookup:
            event = lookup[name]
        else:
            raise ValueError(
                f"cannot tell the WIDER event of {name!r}: its folder {parent!r} is not an event "
                "folder; pass gt_dir to look it up"
            )
        a = a[np.argsort(-a[:, 4], kind="stable")]
        lines = [name, str(len(a))]
        for row in a:
            if integer:
                lines.append(" ".join(str(int(v)) for v in row[:4]) + f" {float(row[4])!r}")
            else:
                lines.append(" ".join(repr(float(v)) for v in row))
        f = Path(out_dir) / event / f"{name}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("\n".join(lines) + "\n")
        written.append(f)
    return written


# ----------------------------------------------------------------------------- the algorithm


def widerface_overlaps(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Official IoU (N, K) of ``x y w h`` boxes: corners ``x2 = x + w``, then the +1 convention.

    Widths and heights count pixels inclusively (``x2 - x1 + 1``), as in ``boxoverlap.m``; no
    overlap (intersection width or height <= 0) gives 0.
    """
    p = np.asarray(pred, np.float64).reshape(-1, 4)
    g = np.asarray(gt, np.float64).reshape(-1, 4)
    px1, py1, px2, py2 = p[:, 0:1], p[:, 1:2], p[:, 0:1] + p[:, 2:3], p[:, 1:2] + p[:, 3:4]
    gx1, gy1, gx2, gy2 = g[:, 0], g[:, 1], g[:, 0] + g[:, 2], g[:, 1] + g[:, 3]
    iw = np.minimum(px2, gx2) - np.maximum(px1, gx1) + 1
    ih = np.minimum(py2, gy2) - np.maximum(py1, gy1) + 1
    inter = iw * ih
    union = (px2 - px1 + 1) * (py2 - py1 + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        o = inter / union
    o[(iw <= 0) | (ih <= 0) | ~np.isfinite(o)] = 0.0
    return o


def norm_scores(preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scores min-max normalised over all images (the port's ``norm_score``), copies returned.

    The running min starts at 1 and the max at 0, as in the Python port. If they are equal
    (one common score) every score becomes 1.0, where the official tools would divide by zero.
    """
    lo, hi = 1.0, 0.0
    for a in preds.values():
        if len(a):
            lo = min(lo, float(a[:, 4].min()))
            hi = max(hi, float(a[:, 4].max()))
    out = {}
    for name, a in preds.items():
        b = np.array(a, np.float64, copy=True)
        if len(b):
            b[:, 4] = (b[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
        out[name] = b
    return out


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: area under the precision envelope (``VOCap.m``).

    The envelope ignores NaN precisions (thresholds with no proposal), as MATLAB's ``max`` does.
    """
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _image_match(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best GT index and its IoU for each detection (first index on ties)."""
    o = widerface_overlaps(pred[:, :4], gt)
    idx = o.argmax(axis=1)
    return idx, o[np.arange(len(o)), idx]


def _image_pr(
    idx: np.ndarray,
    best: np.ndarray,
    keep: np.ndarray,
    n_gt: int,
    n_above: np.ndarray,
    iou_thresh: float,
) -> np.ndarray:
    """``image_evaluation`` + ``image_pr_info`` of one image: (T, 2) proposals, recalled faces.

    ``n_above[t]`` is how many of the (score-sorted) detections reach threshold ``t``.
    """
    counted = np.zeros(n_gt, bool)
    counted[keep] = True
    matched = best >= iou_thresh
    on_counted = matched & counted[idx]
    proposal = ~(matched & ~counted[idx])  # a detection of an ignored face is no proposal
    rows = np.flatnonzero(on_counted)
    _, first = np.unique(idx[rows], return_index=True)  # first detection of each counted face
    new = np.zeros(len(idx), np.int64)
    new[rows[first]] = 1
    pred_recall = np.cumsum(new)
    n_prop = np.cumsum(proposal)
    out = np.zeros((len(n_above), 2))
    has = n_above > 0
    last = n_above[has] - 1
    out[has, 0] = n_prop[last]
    out[has, 1] = pred_recall[last]
    return out


def widerface(
    predictions: Predictions,
    gt_dir: str | os.PathLike,
    iou_thresh: float = 0.5,
    images: Iterable[str] | None = None,
    return_curves: bool = False,
) -> dict[str, Any]:
    """WIDER FACE val AP ``{"easy", "medium", "hard"}`` as the official evaluation computes it.

    ``predictions`` is a folder in the official txt layout (``<event>/<name>.txt``), a faceetl
    face DataFrame (rows with status ``ok``; image name = the path's file stem), or a mapping
    ``name -> (N, 5) x y w h score``. ``gt_dir`` holds ``wider_face_val.mat`` and
    ``wider_{easy,medium,hard}_val.mat``. Images without predictions count as having none.

    ``images`` (names or paths; their stems are used) restricts the evaluation to those images,
    as if the val set held only them: only their faces count and only their predictions are
    normalised together (see the module docstring). A setting without counted faces gets NaN.
    ``return_curves`` adds ``"curves": {setting: (1000, 2) [precision, recall]}`` (NaN precision
    where no detection reaches the threshold), the official ``pr_cruve``.
    """
    gt = read_widerface_gt(gt_dir)
    where = gt.index()
    if images is None:
        order = list(range(len(gt.names)))
    else:
        order = []
        for im in images:
            name = Path(str(im)).stem
            if name not in where:
                raise ValueError(f"image {name!r} is not in the WIDER FACE val ground truth")
            order.append(where[name])
        order = sorted(set(order))
    preds = _as_preds(predictions)
    chosen = {gt.names[i] for i in order}
    ignored = [n for n in preds if n not in where]
    if ignored:
        log.warning(
            "%d predicted images are not in the ground truth (ignored), e.g. %s",
            len(ignored),
            ignored[0],
        )
    used = {n: a for n, a in preds.items() if n in chosen}
    for n, a in used.items():
        if not np.isfinite(a).all():
            raise ValueError(f"predictions for {n!r} hold non-finite values")
    used = {n: a[np.argsort(-a[:, 4], kind="stable")] for n, a in used.items()}
    used = norm_scores(used)

    thresholds = 1 - (np.arange(THRESH_NUM) + 1) / THRESH_NUM
    pr = {s: np.zeros((THRESH_NUM, 2)) for s in SETTINGS}
    count = dict.fromkeys(SETTINGS, 0)
    for i in order:
        for s in SETTINGS:
            count[s] += len(gt.keep[s][i])
        pred = used.get(gt.names[i])
        boxes = gt.boxes[i]
        if pred is None or len(pred) == 0 or len(boxes) == 0:
            continue
        idx, best = _image_match(pred, boxes)
        # scores are sorted descending: the detections reaching a threshold are a prefix
        n_above = np.searchsorted(-pred[:, 4], -thresholds, side="right")
        for s in SETTINGS:
            pr[s] += _image_pr(idx, best, gt.keep[s][i], len(boxes), n_above, iou_thresh)

    result: dict[str, Any] = {}
    curves = {}
    for s in SETTINGS:
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = pr[s][:, 1] / pr[s][:, 0]
            recall = pr[s][:, 1] / count[s] if count[s] else np.full(THRESH_NUM, np.nan)
        result[s] = voc_ap(recall, precision) if count[s] else float("nan")
        curves[s] = np.column_stack([precision, recall])
    if return_curves:
        result["curves"] = curves
    return result


# ----------------------------------------------------------------------------- detection


def detect_widerface(
    image_dir: str | os.PathLike,
    backend: str = "retinaface",
    out_dir: str | os.PathLike | None = None,
    gt_dir: str | os.PathLike | None = None,
    **backend_params: Any,
) -> pd.DataFrame:
    """Run ``backend`` over a WIDER-layout image folder (``<event>/<name>.jpg``); the face frame.

    Images run through :func:`faceetl.extract_faces` with the evaluation parameters the backend
    declares (:func:`faceetl.backends.base.evaluation_params`; RetinaFace:
    ``score_threshold=0.02, max_side=None``, every image at its original scale), overridden by
    ``backend_params``. With ``out_dir`` the detections are also written in the official txt
    layout (:func:`write_widerface_txt`; ``gt_dir`` is needed there only when the images do not
    sit in event folders).
    """
    from ..backends.base import evaluation_params
    from ..pipeline.extract import compute, extract_faces
    from ..pipeline.inputs import IMAGE_EXTENSIONS

    root = Path(image_dir)
    paths = sorted(
        str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not paths:
        raise FileNotFoundError(f"no images under {root}")
    params = evaluation_params(backend, **backend_params)
    ddf = extract_faces(paths, backend=backend, keep_crops=False, **params)
    df = compute(ddf, progress=False).reset_index(drop=True)
    if out_dir is not None:
        write_widerface_txt(df, out_dir, gt_dir=gt_dir)
    return df
