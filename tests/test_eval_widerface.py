"""faceetl.eval.widerface: the official WIDER FACE val AP, checked by hand, on perfect
predictions, against a loop-by-loop transcription of the MATLAB eval_tools, and on the txt layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.io import loadmat

from faceetl.eval import (
    detect_widerface,
    read_widerface_gt,
    read_widerface_txt,
    widerface,
    widerface_overlaps,
    write_widerface_txt,
)
from helpers import ANNOTATIONS, IMAGES, wider_gt

GT_DIR = ANNOTATIONS / "wider"
MEETING = "11_Meeting_Meeting_11_Meeting_Meeting_11_26"
PARADE = "0_Parade_marchingband_1_765"


# ----------------------------------------------------------------------------- reference
# A second, independent implementation: a direct, loop-based transcription of the MATLAB
# eval_tools (read_pred.m sort, norm_score.m, evaluation.m, boxoverlap.m, VOCap.m). It shares
# no code with faceetl.eval; on a subset of images it behaves as the official tool run on a val
# set made only of those images.


def _ref_boxoverlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """boxoverlap.m: IoU of every row of a (x1 y1 x2 y2) with the single box b, +1 convention."""
    out = np.zeros(len(a))
    for r in range(len(a)):
        x1 = max(a[r, 0], b[0])
        y1 = max(a[r, 1], b[1])
        x2 = min(a[r, 2], b[2])
        y2 = min(a[r, 3], b[3])
        w = x2 - x1 + 1
        h = y2 - y1 + 1
        if w <= 0 or h <= 0:
            continue
        inter = w * h
        aarea = (a[r, 2] - a[r, 0] + 1) * (a[r, 3] - a[r, 1] + 1)
        barea = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        out[r] = inter / (aarea + barea - inter)
    return out


def _ref_vocap(rec: list[float], prec: list[float]) -> float:
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        # MATLAB max ignores NaN
        if math.isnan(mpre[i]):
            mpre[i] = mpre[i + 1]
        elif not math.isnan(mpre[i + 1]):
            mpre[i] = max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def reference_widerface(preds: dict[str, np.ndarray], names: list[str], iou_thresh: float = 0.5):
    """Official algorithm, loops everywhere; ``preds``: name -> (N, 5) x y w h score."""
    gt = loadmat(GT_DIR / "wider_face_val.mat")
    subset = set(names)
    # read_pred.m: sort each image's boxes by decreasing score (stable)
    pred_list = {}
    for name in subset:
        rows = [list(map(float, r)) for r in preds.get(name, [])]
        rows = sorted(rows, key=lambda r: -r[4])
        pred_list[name] = rows
    # norm_score: min starts at 1 and max at 0 as in the Python port
    lo, hi = 1.0, 0.0
    for rows in pred_list.values():
        for r in rows:
            lo, hi = min(lo, r[4]), max(hi, r[4])
    for rows in pred_list.values():
        for r in rows:
            r[4] = (r[4] - lo) / (hi - lo) if hi > lo else 1.0
    aps = {}
    for setting in ("easy", "medium", "hard"):
        gt_list = loadmat(GT_DIR / f"wider_{setting}_val.mat")["gt_list"]
        org = [[0.0, 0.0] for _ in range(1000)]
        count_face = 0
        for i in range(len(gt["event_list"])):
            for j in range(len(gt["file_list"][i][0])):
                name = str(gt["file_list"][i][0][j][0][0])
                if name not in subset:
                    continue
                gt_bbx = gt["face_bbx_list"][i][0][j][0].astype(float)
                keep_index = [int(k) for k in gt_list[i][0][j][0].ravel()]
                count_face += len(keep_index)
                pred_info = [list(r) for r in pred_list[name]]
                if len(gt_bbx) == 0 or len(pred_info) == 0:
                    continue
                ignore = [0] * len(gt_bbx)
                for k in keep_index:
                    ignore[k - 1] = 1
                # image_evaluation
                g = gt_bbx.copy()
                g[:, 2] = g[:, 0] + g[:, 2]
                g[:, 3] = g[:, 1] + g[:, 3]
                recall_list = [0] * len(g)
                proposal_list = [1] * len(pred_info)
                pred_recall = [0] * len(pred_info)
                for h, p in enumerate(pred_info):
                    box = [p[0], p[1], p[0] + p[2], p[1] + p[3]]
                    overlap_list = _ref_boxoverlap(g, box)
                    idx = 0
                    for k in range(1, len(overlap_list)):
                        if overlap_list[k] > overlap_list[idx]:
                            idx = k
                    if overlap_list[idx] >= iou_thresh:
                        if ignore[idx] == 0:
                            recall_list[idx] = -1
                            proposal_list[h] = -1
                        elif recall_list[idx] == 0:
                            recall_list[idx] = 1
                    pred_recall[h] = sum(1 for v in recall_list if v == 1)
                # image_pr_info
                for t in range(1, 1001):
                    thresh = 1 - t / 1000
                    r_index = None
                    for h in range(len(pred_info)):
                        if pred_info[h][4] >= thresh:
                            r_index = h
                    if r_index is None:
                        continue
                    org[t - 1][0] += sum(1 for v in proposal_list[: r_index + 1] if v == 1)
                    org[t - 1][1] += pred_recall[r_index]
        # dataset_pr_info
        prec, rec = [], []
        for t in range(1000):
            prec.append(org[t][1] / org[t][0] if org[t][0] else float("nan"))
            rec.append(org[t][1] / count_face if count_face else float("nan"))
        aps[setting] = _ref_vocap(rec, prec) if count_face else float("nan")
    return aps


def _frame_xywh(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Test-side conversion of a faceetl frame to name -> (N, 5) x y w h score."""
    out = {}
    for path, g in df.groupby("path", sort=False):
        g = g[g["status"] == "ok"]
        b = g[["x1", "y1", "x2", "y2", "score"]].to_numpy(float)
        out[Path(path).stem] = np.column_stack(
            [b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1], b[:, 4]]
        )
    return out


def _assert_aps(got: dict, want: dict, tol: float) -> None:
    for s in ("easy", "medium", "hard"):
        if math.isnan(want[s]):
            assert math.isnan(got[s]), s
        else:
            assert got[s] == pytest.approx(want[s], abs=tol), s


@pytest.fixture(scope="module")
def gt():
    return read_widerface_gt(GT_DIR)


# ----------------------------------------------------------------------------- ground truth


def test_ground_truth_loads(gt) -> None:
    assert len(gt.names) == 3226
    assert len(set(gt.names)) == 3226
    assert sum(len(b) for b in gt.boxes) == 39708
    assert {s: sum(len(k) for k in gt.keep[s]) for s in gt.keep} == {
        "easy": 7211,
        "medium": 13319,
        "hard": 31958,
    }
    i = gt.index()[MEETING]
    assert gt.events[i] == "11--Meeting"
    # same boxes as the JSON extract in shared/
    want = wider_gt()[MEETING + ".jpg"]
    got = gt.boxes[i].copy()
    got[:, 2:] += got[:, :2]
    np.testing.assert_array_equal(got, want)
    # 1-based gt_list -> 0-based: hard drops boxes 3 and 20 (1-based), medium keeps 7 and 21
    assert 2 not in gt.keep["hard"][i] and 19 not in gt.keep["hard"][i]
    assert list(gt.keep["medium"][i]) == [6, 20]


# ----------------------------------------------------------------------------- (a) by hand


def test_official_iou_convention() -> None:
    # 10x10 GT box (x2 = x + w = 20), prediction shifted by 2 px in x and y
    gtb = np.array([[10.0, 10.0, 10.0, 10.0]])
    pred = np.array([[12.0, 12.0, 10.0, 10.0]])
    # +1 convention: both 11 px wide; intersection 9x9
    assert widerface_overlaps(pred, gtb)[0, 0] == pytest.approx(81 / (2 * 121 - 81))
    # plain IoU would be 64 / 136 = 0.47 < 0.5: the official one crosses 0.5
    assert widerface_overlaps(pred, gtb)[0, 0] > 0.5
    # disjoint and touching boxes: 0; touching corners share one pixel under +1
    assert widerface_overlaps([[40, 40, 5, 5]], gtb)[0, 0] == 0
    assert widerface_overlaps([[20, 20, 5, 5]], gtb)[0, 0] == pytest.approx(1 / (121 + 36 - 1))


def test_hand_computed_ap(gt) -> None:
    i = gt.index()[MEETING]
    b = gt.boxes[i]
    fp = [500.0, 600.0, 30.0, 30.0]  # on the table: no GT box near
    assert widerface_overlaps([fp], b).max() == 0
    dup7 = b[6] + [2, 0, 0, 0]  # a second, shifted detection of face 7
    assert widerface_overlaps([dup7], b).argmax() == 6
    preds = {
        MEETING: np.array(
            [
                [*b[2], 0.95],  # face 3: not counted in any setting -> ignored, no proposal
                [*b[6], 0.9],  # face 7: counted in medium and hard
                [*fp, 0.8],  # false positive
                [*b[20], 0.7],  # face 21: counted in medium and hard
                [*dup7, 0.6],  # duplicate of face 7: a proposal, no new recall
                [*fp[:2], 10.0, 10.0, 0.1],  # false positive
            ]
        )
    }
    # ranked: (proposals, recalled) = (0,0) (1,1) (2,1) (3,2) (4,2) (5,2); precision envelope
    # is 1 up to recall 1/N and 2/3 up to 2/N, so AP = (1 + 2/3) / N
    got = widerface(preds, GT_DIR, images=[MEETING])
    assert math.isnan(got["easy"])  # no counted easy face in this image
    assert got["medium"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert got["hard"] == pytest.approx((1 + 2 / 3) / 35, abs=1e-12)
    # the Parade image joins without predictions: its 131 hard faces count, nothing else moves
    both = widerface(preds, GT_DIR, images=[MEETING, PARADE + ".jpg"])
    assert both["medium"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert both["hard"] == pytest.approx((1 + 2 / 3) / (35 + 131), abs=1e-12)
    # the order of the rows does not matter (sorted by score as read_pred.m does)
    shuffled = {MEETING: preds[MEETING][[3, 0, 5, 2, 4, 1]]}
    assert widerface(shuffled, GT_DIR, images=[MEETING]) == pytest.approx(got, nan_ok=True)
    # predictions on images outside the subset do not enter the normalisation
    other = {**preds, PARADE: np.array([[0, 0, 5, 5, 100.0]])}
    assert widerface(other, GT_DIR, images=[MEETING]) == pytest.approx(got, nan_ok=True)
    # a face detected at IoU just under 0.5 is a false positive
    miss = {MEETING: np.array([[*b[6], 0.9], [*(b[20] + [0, 0, 40, 0]), 0.5], [*fp, 0.2]])}
    assert widerface_overlaps([miss[MEETING][1, :4]], b).max() < 0.5
    r = widerface(miss, GT_DIR, images=[MEETING])
    assert r["medium"] == pytest.approx(0.5, abs=1e-12)  # recall 1/2 at precision 1
    assert r["hard"] == pytest.approx(1 / 35, abs=1e-12)
    # thresholds are inclusive (score >= 1 - t/1000): normalised scores 1, 0.5 and 0 reach
    # thresholds 0.999, 0.5 and 0 exactly; the lowest detection (score 0) counts at t = 1000
    edge = {MEETING: np.array([[*b[6], 1.0], [*fp, 0.5], [*b[20], 0.0]])}
    r = widerface(edge, GT_DIR, images=[MEETING], return_curves=True)
    assert r["medium"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    curve = r["curves"]["medium"]  # rows: thresholds 0.999 ... 0; columns precision, recall
    np.testing.assert_allclose(
        curve[[0, 498, 499, 998, 999]], [[1, 0.5], [1, 0.5], [0.5, 0.5], [0.5, 0.5], [2 / 3, 1]]
    )
    with pytest.raises(ValueError, match="not in the WIDER FACE"):
        widerface(preds, GT_DIR, images=["no_such_image"])


def test_plus_one_convention_decides_a_match(gt) -> None:
    i = gt.index()[PARADE]
    b = gt.boxes[i]
    assert list(b[1]) == [299, 143, 10, 11] and 1 in gt.keep["hard"][i]
    shifted = b[1] + [2, 2, 0, 0]
    # +1 convention: intersection 9 x 10 of two 11 x 12 boxes -> 90 / 174 >= 0.5
    assert widerface_overlaps([shifted], b).max() == pytest.approx(90 / 174)
    preds = {PARADE: np.array([[*shifted, 0.9], [900, 600, 20, 20, 0.5]])}
    r = widerface(preds, GT_DIR, images=[PARADE])
    assert r["hard"] == pytest.approx(1 / 131, abs=1e-12)  # counted as found
    assert math.isnan(r["easy"]) and math.isnan(r["medium"])
    assert widerface(preds, GT_DIR, images=[PARADE], iou_thresh=0.55)["hard"] == 0.0


# ----------------------------------------------------------------------------- (b) perfect


def test_perfect_predictions_full_val_set(gt) -> None:
    """GT boxes as predictions, score 1, all 3226 images.

    The official algorithm does not give exactly 1.0 here: the val GT holds one box with a
    negative width (39_Ice_Skating_iceskiing_39_583, w = -2: it overlaps nothing, so its own
    copy is a false positive, counted in every setting) and one exact duplicate box
    (21_Festival_Festival_21_604, boxes 65 and 104, both counted in hard: one copy of the
    duplicate recalls the first box twice, the second box is never recalled).
    """
    preds = {
        n: np.column_stack([b, np.ones(len(b))]) for n, b in zip(gt.names, gt.boxes, strict=True)
    }
    r = widerface(preds, GT_DIR)
    # one extra proposal in every setting; hard also misses the two boxes
    assert r["easy"] == pytest.approx(7211 / 7212, abs=1e-12)
    assert r["medium"] == pytest.approx(13319 / 13320, abs=1e-12)
    assert r["hard"] == pytest.approx((31956 / 31958) ** 2, abs=1e-12)
    # without the copy of the degenerate box: easy and medium are exactly 1
    k = gt.index()["39_Ice_Skating_iceskiing_39_583"]
    assert gt.boxes[k][7, 2] == -2
    preds["39_Ice_Skating_iceskiing_39_583"] = np.delete(
        preds["39_Ice_Skating_iceskiing_39_583"], 7, 0
    )
    r = widerface(preds, GT_DIR)
    assert r["easy"] == 1.0 and r["medium"] == 1.0
    assert r["hard"] == pytest.approx(31956 / 31958 * 31956 / 31957, abs=1e-12)
    # no predictions at all: AP 0
    assert widerface({}, GT_DIR) == {"easy": 0.0, "medium": 0.0, "hard": 0.0}


def test_matches_reference_on_synthetic_predictions(gt) -> None:
    """Noisy, partly wrong predictions on 120 random val images: same AP as the loop transcription."""
    rng = np.random.default_rng(7)
    small = [n for n, b in zip(gt.names, gt.boxes, strict=True) if len(b) <= 30]
    names = list(rng.choice(small, 120, replace=False))
    preds = {}
    for n in names[:100]:  # the last 20 images get no predictions
        b = gt.boxes[gt.index()[n]]
        found = b[rng.random(len(b)) < 0.7]
        jitter = found + rng.normal(0, 0.15, found.shape) * found[:, [2, 3, 2, 3]].clip(1)
        dup = jitter[rng.random(len(jitter)) < 0.2] + rng.normal(0, 1, (1, 4))
        fps = np.column_stack(
            [rng.uniform(0, 900, 3), rng.uniform(0, 600, 3), rng.uniform(5, 60, (3, 2))]
        )
        boxes = np.vstack([jitter, dup, fps])
        scores = np.round(rng.uniform(0.02, 1.0, len(boxes)), 3)  # rounded: score ties occur
        preds[n] = np.column_stack([boxes, scores])
    got = widerface(preds, GT_DIR, images=names)
    want = reference_widerface(preds, names)
    assert all(0.05 < want[s] < 1 for s in ("medium", "hard")), want
    _assert_aps(got, want, 1e-9)


# ----------------------------------------------------------------------------- (c) real backend


@pytest.fixture(scope="module")
def retinaface_wider(tmp_path_factory):
    out = tmp_path_factory.mktemp("wider_txt")
    df = detect_widerface(IMAGES / "wider", backend="retinaface", out_dir=out, gt_dir=GT_DIR)
    return df, out


def test_retinaface_on_shared_wider_images(retinaface_wider) -> None:
    df, out = retinaface_wider
    names = [PARADE, MEETING]
    assert {Path(p).stem for p in df["path"]} == set(names)
    ok = df[df["status"] == "ok"]
    # the WIDER protocol: low threshold, original scale
    assert ok["score"].min() >= 0.0199 and len(ok) > 200
    got = widerface(df, GT_DIR, images=names)
    want = reference_widerface(_frame_xywh(df), names)
    _assert_aps(got, want, 1e-4)
    assert math.isnan(got["easy"])  # neither image has a face counted in easy
    # MobileNet-0.25 RetinaFace at full scale finds most of the 166 hard faces
    assert got["hard"] > 0.7, got
    # the two faces counted in medium are heavily occluded: found late, if at all
    assert got["medium"] < 0.5, got
    # the txt files written beside give the same numbers
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == [
        f"0--Parade/{PARADE}.txt",
        f"11--Meeting/{MEETING}.txt",
    ]
    _assert_aps(widerface(out, GT_DIR, images=names), got, 1e-12)
    # over the whole val set, two images' predictions give tiny APs
    full = widerface(df, GT_DIR)
    assert full["hard"] < 0.01 and full["easy"] == 0.0


# ----------------------------------------------------------------------------- (d) txt layout


def test_txt_round_trip(tmp_path, gt) -> None:
    rng = np.random.default_rng(3)
    preds = {
        MEETING: np.column_stack([rng.uniform(0, 500, (6, 4)), rng.random(6)]),
        PARADE: np.zeros((0, 5)),
    }
    files = write_widerface_txt(preds, tmp_path, gt_dir=GT_DIR)
    assert sorted(f.relative_to(tmp_path).as_posix() for f in files) == [
        f"0--Parade/{PARADE}.txt",
        f"11--Meeting/{MEETING}.txt",
    ]
    lines = (tmp_path / "11--Meeting" / f"{MEETING}.txt").read_text().splitlines()
    assert lines[0] == MEETING and lines[1] == "6" and len(lines) == 8
    assert (tmp_path / "0--Parade" / f"{PARADE}.txt").read_text().splitlines() == [PARADE, "0"]
    back = read_widerface_txt(tmp_path)
    order = np.argsort(-preds[MEETING][:, 4], kind="stable")
    np.testing.assert_array_equal(back[MEETING], preds[MEETING][order])  # exact, score-sorted
    assert back[PARADE].shape == (0, 5)
    names = [MEETING, PARADE]
    _assert_aps(
        widerface(tmp_path, GT_DIR, images=names), widerface(preds, GT_DIR, images=names), 0
    )


def test_txt_from_frame_and_integer_layout(tmp_path) -> None:
    root = tmp_path / "images" / "11--Meeting"
    path = str(root / f"{MEETING}.jpg")
    empty = str(tmp_path / "images" / "0--Parade" / f"{PARADE}.jpg")
    df = pd.DataFrame(
        {
            "path": [path, path, empty],
            "x1": [10.7, 100.2, np.nan],
            "y1": [20.9, 50.0, np.nan],
            "x2": [30.2, 140.9, np.nan],
            "y2": [45.5, 99.99, np.nan],
            "score": [0.5, 0.75, np.nan],
            "status": ["ok", "ok", "no_face"],
        }
    )
    # events come from the folders: no gt_dir needed
    write_widerface_txt(df, tmp_path / "exact")
    back = read_widerface_txt(tmp_path / "exact")
    np.testing.assert_allclose(
        back[MEETING], [[100.2, 50.0, 40.7, 49.99, 0.75], [10.7, 20.9, 19.5, 24.6, 0.5]], atol=1e-12
    )
    assert back[PARADE].shape == (0, 5)
    # biubug6's test_widerface.py truncation: x = int(x1), w = int(x2) - int(x1)
    write_widerface_txt(df, tmp_path / "int", integer=True)
    lines = (tmp_path / "int" / "11--Meeting" / f"{MEETING}.txt").read_text().splitlines()
    assert lines[2:] == ["100 50 40 49 0.75", "10 20 20 25 0.5"]
    # a flat folder needs the GT to find the events
    flat = df.assign(
        path=df["path"].str.replace("/11--Meeting/", "/").str.replace("/0--Parade/", "/")
    )
    with pytest.raises(ValueError, match="event"):
        write_widerface_txt(flat, tmp_path / "flat")
    write_widerface_txt(flat, tmp_path / "flat", gt_dir=GT_DIR)
    assert (tmp_path / "flat" / "0--Parade" / f"{PARADE}.txt").is_file()
    # the frame and its txt files evaluate alike
    names = [MEETING, PARADE]
    _assert_aps(
        widerface(tmp_path / "exact", GT_DIR, images=names),
        widerface(df, GT_DIR, images=names),
        1e-12,
    )


def test_txt_malformed(tmp_path) -> None:
    d = tmp_path / "0--Parade"
    d.mkdir()
    (d / f"{PARADE}.txt").write_text(f"{PARADE}\n2\n1 2 3 4 0.5\n")
    with pytest.raises(ValueError, match="announces 2 boxes"):
        read_widerface_txt(tmp_path)
    (d / f"{PARADE}.txt").write_text(f"{PARADE}\n1\n1 2 3 0.5\n")
    with pytest.raises(ValueError, match="x y w h score"):
        read_widerface_txt(tmp_path)
