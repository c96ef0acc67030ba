"""MediaPipe BlazeFace (short or full range) run through LiteRT, MediaPipe's graph ported here.

The models are MediaPipe's legacy-solution ``face_detection_short_range.tflite`` (128x128 input,
896 anchors) and ``face_detection_full_range_sparse.tflite`` (192x192, 2304 anchors). They run in
LiteRT (``ai_edge_litert.interpreter.Interpreter``, PyPI ``ai-edge-litert``, extra
``faceetl[mediapipe]``). What MediaPipe's face-detection graph does around the model is written
out here, step by step, with the graph's constants:

1. ImageToTensorCalculator (``keep_aspect_ratio``, ``BORDER_ZERO``, float range [-1, 1]): the
   image centred in a square of its longer side, warped onto the model input with OpenCV's
   bilinear ``warpPerspective`` from the same corner points (zero padding), then pixels
   ``* 2/255 - 1`` (:func:`letterbox`).
2. SsdAnchorsCalculator: anchor centres on the feature-map grid of each stride, fixed anchor
   size 1 (:func:`ssd_anchor_centres`).
3. TensorsToDetectionsCalculator (``reverse_output_order``: x, y, w, h, then 6 keypoints x, y;
   all scales = the input side): logits clipped to +-100, sigmoid, kept where the score is at
   least ``score_threshold``; boxes of negative size dropped (:func:`decode`).
4. NonMaxSuppressionCalculator, ``WEIGHTED`` over IoU ``> nms_threshold``: each face is the
   score-weighted mean of the boxes and keypoints it suppresses, with its own (top) score
   (:func:`weighted_nms`).
5. DetectionProjectionCalculator: back through the letterbox to input pixels.

Why hand-written: the one library that implements this graph is ``mediapipe`` itself, and its
PyPI package pins OpenCV's GUI build (``opencv-contrib-python``, which links libGL) plus
sounddevice and matplotlib; a second cv2 package next to faceetl's ``opencv-python-headless``
breaks both. The constants are those of MediaPipe's Tasks ``FaceDetectorGraph`` for these
metadata-less models (``tasks/cc/vision/face_detector/face_detector_graph.cc``), which are the
legacy graphs' (``modules/face_detection/face_detection_{short,full}_range.pbtxt``). One
difference from the Tasks API: it turns boxes into whole pixels (each of x, y, width and height
truncated, then clamped to the image), boxes here keep their fractions. The first pass equals
the Tasks API's (``tests/data/mediapipe_reference.json``: same faces, scores to 1e-7, keypoints
to 1e-3 px, boxes equal once truncated); refined results differ a little, because the crops are
placed from the fractional boxes (see the tests).

BlazeFace gives 6 keypoints: the subject's right eye, left eye, nose tip, mouth centre, right ear
tragion, left ear tragion. The eyes and nose fill the ArcFace 5 (eyes ordered by x in the
image); mouth corners are not given and stay NaN. All 6 in pixels are in
``extra["keypoints6"]`` in MediaPipe's order.

Keypoint refinement: the whole photo is shrunk to 128 or 192 px, so on small faces the first
pass places the keypoints coarsely (errors of a fifth of the eye distance and more in group
photos), and BlazeFace gives no mouth corners. ``refine=`` takes a second look at each face:

- ``"onet"`` (the default): MTCNN's O-Net, run once on every face box of the batch
  (:mod:`faceetl.backends.landmarks`, as for the box-only detectors; its square is
  ``ONET_BOX_SCALE`` times the box's larger side), gives the five ArcFace points, mouth corners
  included. On the 7 shared group photos (34 faces matched to dlib's 68 points, full-range
  model) the eyes' error is a median 0.05 of the eye distance (90th percentile 0.08), against
  0.19 (0.42) for the first pass and 0.08 (0.12) for the BlazeFace second pass, at about the
  latter's cost.
- ``"blazeface"`` (``True`` before): each face is cut out as a square of ``refine_scale`` times
  its box's larger side, centred on the box (zero padding past the borders), sampled
  bilinearly onto the short-range model's 128 px input (as MediaPipe samples its own inputs),
  and detected again. The detection in that crop that best overlaps the face's expected
  position gives the face's keypoints and box, mapped back to image pixels; the first-pass
  score is kept. A face whose crop yields no overlapping detection keeps its first-pass box
  and keypoints. Only faces the crop would show at least ``refine_min_zoom`` (1.5) times
  larger than the first pass did are refined: faces under ~35 px in the model input had eye
  errors of 0.1-1.0 of the eye distance that refinement brought to ~0.05-0.15, while faces
  over ~45 px were within 0.04-0.11 already and gained little (so a portrait costs one pass,
  as in MediaPipe). ``refine_min_zoom=0`` refines every face.
- ``None`` (or ``False``): MediaPipe's keypoints as they are.

``extra["refined"]`` says which faces got their points from the second look; ``keypoints6``
keeps the six BlazeFace keypoints (refined ones with ``"blazeface"``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import math
import threading
from typing import Any

import cv2
import numpy as np

from ..align import square_crop
from ..boxes import box_iou
from ..extras import Need, require
from ..nets import external as _releases  # noqa: F401 (registers the model files)
from ..weights import fetch, weights_info
from .base import BaseDetector, Detections, register_backend
from .params import renamed

log = logging.getLogger(__name__)

#: model option -> registered weights name
MODELS = {
    "short": "mediapipe_face_detection_short_range",
    "full": "mediapipe_face_detection_full_range_sparse",
}

#: OpenCV's warp (its remap) needs image sides below SHRT_MAX; longer images are downscaled
MAX_INPUT_SIDE = 32766
#: what ``refine=`` takes (see the module docstring); True and False are the older spellings
REFINE_METHODS = ("onet", "blazeface", None)
#: O-Net's square as a multiple of a BlazeFace box's larger side: median eye error against
#: dlib's on the shared group photos 0.053 of the eye distance at 1.1 (0.052-0.059 at 1.0,
#: 0.065-0.121 at 0.8; BlazeFace boxes are tighter than SSD's, which take 0.8)
ONET_BOX_SCALE = 1.1
#: input side of the short-range model, the one the BlazeFace refinement runs
REFINE_INPUT = 128
#: a refined detection must overlap the face's expected box in the crop at least this much
REFINE_MIN_IOU = 0.3

#: input normalisation of BlazeFace: (pixel - 127.5) / 127.5 -> [-1, 1]
NORM_MEAN = 127.5
NORM_STD = 127.5
#: TensorsToDetectionsCalculator's score_clipping_thresh: logits are clipped to +-this
SCORE_CLIP = 100.0
NUM_KEYPOINTS = 6


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """The graph options of one BlazeFace model (FaceDetectorGraph's defaults for it)."""

    size: int  #: input side (width = height); also x_scale, y_scale, w_scale and h_scale
    strides: tuple[int, ...]  #: SsdAnchorsCalculator strides, one per layer
    interpolated: bool  #: interpolated_scale_aspect_ratio > 0: a second anchor per layer
    num_boxes: int  #: anchors = model outputs


SPECS = {
    "short": GraphSpec(size=128, strides=(8, 16, 16, 16), interpolated=True, num_boxes=896),
    "full": GraphSpec(size=192, strides=(4,), interpolated=False, num_boxes=2304),
}


def ssd_anchor_centres(spec: GraphSpec) -> np.ndarray:
    """Anchor centres (num_boxes, 2) as x, y in [0, 1] of the model input, in MediaPipe's order.

    Consecutive layers of the same stride share one grid: per cell, one anchor per layer (aspect
    ratio 1) and, with ``interpolated``, one more. The anchor size is fixed at 1, so only the
    centres matter.
    """
    out = []
    i = 0
    while i < len(spec.strides):
        j = i
        while j < len(spec.strides) and spec.strides[j] == spec.strides[i]:
            j += 1
        per_cell = (j - i) * (2 if spec.interpolated else 1)
        cells = math.ceil(spec.size / spec.strides[i])
        c = (np.arange(cells, dtype=np.float32) + np.float32(0.5)) / np.float32(cells)
        ys, xs = np.meshgrid(c, c, indexing="ij")
        out.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), per_cell, axis=0))
        i = j
    anchors = np.concatenate(out)
    if len(anchors) != spec.num_boxes:  # the spec contradicts itself
        raise ValueError(f"{len(anchors)} anchors, expected {spec.num_boxes}")
    return anchors


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The model input (1, size, size, 3) float32 in [-1, 1], and the letterbox as
    ``(side, x0, y0)``: input x = tensor x (in [0, 1]) * side + x0, the same for y.

    As ImageToTensorCalculator on the CPU: the region is the image centred in a square of its
    longer side; its corners (bottom-left first, as ``cv::RotatedRect::points``) go to the
    tensor's corners through ``getPerspectiveTransform`` and ``warpPerspective`` (bilinear, zero
    border), on uint8, then converted to float.
    """
    h, w = image.shape[:2]
    scale = np.float32(2.0 / 255.0)  # [0, 255] -> [-1, 1], MediaPipe's float scale and offset
    if h == w == size:  # already the input (a refinement crop): the warp would be the identity
        return (image.astype(np.float32) * scale + np.float32(-1.0))[None], (float(size), 0.0, 0.0)
    side = float(max(w, h))
    cx, cy = 0.5 * w, 0.5 * h
    x0, y0, x1, y1 = cx - 0.5 * side, cy - 0.5 * side, cx + 0.5 * side, cy + 0.5 * side
    src = np.array([[x0, y1], [x0, y0], [x1, y0], [x1, y1]], np.float32)
    dst = np.array([[0, size], [0, 0], [size, 0], [size, size]], np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(
        image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    tensor = warped.astype(np.float32) * scale + np.float32(-1.0)
    return tensor[None], (side, x0, y0)


def decode(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray,
    size: int,
    score_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates from the model outputs: boxes (N, 4) as xmin, ymin, width, height, scores (N,)
    and keypoints (N, 6, 2), all in [0, 1] of the model input; float32 as in MediaPipe.

    ``raw_boxes`` (num_boxes, 16): x, y, w, h offsets in input pixels from the anchor centre,
    then the 6 keypoints x, y; ``raw_scores`` (num_boxes,): logits.
    """
    logits = np.clip(raw_scores.astype(np.float32), -SCORE_CLIP, SCORE_CLIP)
    with np.errstate(over="ignore"):  # exp(100) is inf in float32: the score is 0, as in C++
        scores = np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))
    keep = scores >= np.float32(score_threshold)
    r, a, scores = raw_boxes[keep].astype(np.float32), anchors[keep], scores[keep]
    s = np.float32(size)
    xc, yc = r[:, 0] / s + a[:, 0], r[:, 1] / s + a[:, 1]
    bw, bh = r[:, 2] / s, r[:, 3] / s
    half = np.float32(2.0)
    xmin, ymin = xc - bw / half, yc - bh / half
    xmax, ymax = xc + bw / half, yc + bh / half
    boxes = np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1)
    kps = r[:, 4 : 4 + 2 * NUM_KEYPOINTS].reshape(-1, NUM_KEYPOINTS, 2) / s + a[:, None, :]
    ok = (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0)  # also drops NaN sizes
    return boxes[ok], scores[ok], kps[ok]


def _iou_one(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes`` (N, 4) with ``box``, both xmin, ymin, width, height (float32)."""
    ix = np.minimum(boxes[:, 0] + boxes[:, 2], box[0] + box[2]) - np.maximum(boxes[:, 0], box[0])
    iy = np.minimum(boxes[:, 1] + boxes[:, 3], box[1] + box[3]) - np.maximum(boxes[:, 1], box[1])
    inter = np.where((ix > 0) & (iy > 0), ix * iy, np.float32(0.0))
    union = boxes[:, 2] * boxes[:, 3] + box[2] * box[3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), np.float32(0.0))


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression on :func:`decode`'s output.

    Best first (stable order for equal scores): the best remaining candidate and every remaining
    one overlapping it by IoU ``> threshold`` (itself included) are replaced by one face, their
    score-weighted mean box (mean corners) and keypoints, with the best one's score. As in
    MediaPipe, the loop ends when a round removes nothing (so a ``threshold`` of 1 or more
    keeps one face only).
    """
    order = np.argsort(-scores, kind="stable")
    thr = np.float32(threshold)
    out_boxes, out_scores, out_kps = [], [], []
    while len(order):
        top = order[0]
        sim = _iou_one(boxes[order], boxes[top])
        cand, rest = order[sim > thr], order[~(sim > thr)]
        box, kp = boxes[top], kps[top]
        if len(cand):
            wgt = scores[cand]
            total = wgt.sum(dtype=np.float32)
            b = boxes[cand]
            corners = np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], 1)
            mean = (corners * wgt[:, None]).sum(0, dtype=np.float32) / total
            box = np.array([mean[0], mean[1], mean[2] - mean[0], mean[3] - mean[1]], np.float32)
            kp = (kps[cand] * wgt[:, None, None]).sum(0, dtype=np.float32) / total
        out_boxes.append(box)
        out_scores.append(scores[top])
        out_kps.append(kp)
        if len(rest) == len(order):
            break
        order = rest
    n = len(out_boxes)
    return (
        np.array(out_boxes, np.float32).reshape(n, 4),
        np.array(out_scores, np.float32).reshape(n),
        np.array(out_kps, np.float32).reshape(n, NUM_KEYPOINTS, 2),
    )


class _Net:
    """One BlazeFace model in a LiteRT interpreter, with its anchors and tensor indices."""

    def __init__(self, interpreter_cls: Any, model: str) -> None:
        self.spec = SPECS[model]
        self.anchors = ssd_anchor_centres(self.spec)
        path = fetch(MODELS[model])
        self.interpreter = interpreter_cls(model_path=str(path), num_threads=1)
        self.interpreter.allocate_tensors()
        (inp,) = self.interpreter.get_input_details()
        want = [1, self.spec.size, self.spec.size, 3]
        if list(inp["shape"]) != want or inp["dtype"] != np.float32:
            raise ValueError(f"{path.name}: input {inp['shape']} {inp['dtype']}, expected {want}")
        self.input_index = inp["index"]
        outs = {tuple(o["shape"]): o["index"] for o in self.interpreter.get_output_details()}
        n = self.spec.num_boxes
        try:  # told apart by shape: (1, n, 16) regressors, (1, n, 1) classificators
            self.boxes_index = outs[(1, n, 4 + 2 * NUM_KEYPOINTS)]
            self.scores_index = outs[(1, n, 1)]
        except KeyError:
            raise ValueError(f"{path.name}: outputs {sorted(outs)} are not BlazeFace's") from None

    def run(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw regressors (n, 16) and logits (n,) for one input tensor (not thread-safe)."""
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        raw_boxes = self.interpreter.get_tensor(self.boxes_index)[0]
        raw_scores = self.interpreter.get_tensor(self.scores_index)[0, :, 0]
        return raw_boxes, raw_scores


@register_backend("mediapipe", workers=2, gpu=False)
class MediaPipeDetector(BaseDetector):
    """BlazeFace (short or full range) in LiteRT with MediaPipe's face-detection graph.

    ``score_threshold`` and ``nms_threshold`` are MediaPipe's ``min_detection_confidence`` and
    ``min_suppression_threshold``. ``refine``: ``"onet"`` (five O-Net points on every face),
    ``"blazeface"`` (a second BlazeFace pass on small faces: ``refine_scale``,
    ``refine_min_zoom``) or ``None`` (see the module docstring).
    """

    name = "mediapipe"

    @staticmethod
    def needs(params: dict[str, Any]) -> list[Need]:
        """What the backend needs installed (checked where it is asked for)."""
        return [("ai_edge_litert", "mediapipe", "the mediapipe backend")]

    @renamed(min_detection_confidence="score_threshold", min_suppression_threshold="nms_threshold")
    def __init__(
        self,
        *,
        model: str = "short",
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        refine: str | bool | None = "onet",
        refine_scale: float = 2.0,
        refine_min_zoom: float = 1.5,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, not {model!r}")
        if not refine_scale > 1.0:
            raise ValueError(f"refine_scale must be > 1, not {refine_scale!r}")
        litert = require("ai_edge_litert.interpreter", "mediapipe", "the mediapipe backend")
        self.model = model
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        refine = {True: "blazeface", False: None}.get(refine, refine)  # type: ignore[call-overload]
        if refine not in REFINE_METHODS:
            raise ValueError(f"refine must be one of {REFINE_METHODS}, not {refine!r}")
        self.refine = refine
        self.refine_scale = float(refine_scale)
        if not refine_min_zoom >= 0:
            raise ValueError(f"refine_min_zoom must be >= 0, not {refine_min_zoom!r}")
        self.refine_min_zoom = float(refine_min_zoom)
        self._litert_version = _litert_version()
        self._weights: dict[str, str] = {}
        self._detector = self._create(litert.Interpreter, model)
        # the BlazeFace refinement runs the short-range model on face crops: the same net for
        # model="short", a second one (created once, reused for every crop) for "full"
        self._refiner = None
        if self.refine == "blazeface":
            self._refiner = (
                self._detector if model == "short" else self._create(litert.Interpreter, "short")
            )
        self._points = None
        if self.refine == "onet":
            from .landmarks import ONetLandmarks

            self._points = ONetLandmarks(box_scale=ONET_BOX_SCALE)
            self._weights.update(self._points.weights)
        # One lock for both nets: a LiteRT interpreter must not run two invocations at once
        # (its tensors are shared state); the numpy/OpenCV steps around it run unlocked.
        self._lock = threading.Lock()

    def _create(self, interpreter_cls: Any, model: str) -> _Net:
        """The LiteRT net for ``model`` ("short" or "full"), its weight hash recorded."""
        wf = weights_info(MODELS[model])
        net = _Net(interpreter_cls, model)
        self._weights[wf.filename] = wf.sha256
        log.debug("BlazeFace %s loaded in LiteRT %s", wf.filename, self._litert_version)
        return net

    def _run(self, net: _Net, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4) x1 y1 x2 y2, scores (N,) and the 6 keypoints (N, 6, 2) in ``img``
        pixels, best first (not clipped to the image)."""
        tensor, (side, x0, y0) = letterbox(img, net.spec.size)
        with self._lock:
            raw_boxes, raw_scores = net.run(tensor)
        cand = decode(raw_boxes, raw_scores, net.anchors, net.spec.size, self.score_threshold)
        rel, scores, kps = weighted_nms(*cand, self.nms_threshold)
        rel = rel.astype(np.float64)
        corners = np.stack([rel[:, 0], rel[:, 1], rel[:, 0] + rel[:, 2], rel[:, 1] + rel[:, 3]], 1)
        boxes = corners * side + np.array([x0, y0, x0, y0])
        kp6 = kps.astype(np.float64) * side + np.array([x0, y0])
        return boxes.astype(np.float32), scores, kp6.astype(np.float32)

    def _refine(
        self, img: np.ndarray, boxes: np.ndarray, kp6: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes and keypoints re-detected on a square crop around each face (see module doc).

        Returns the new boxes, keypoints and a bool per face: whether it was refined.
        """
        h, w = img.shape[:2]
        boxes, kp6 = boxes.copy(), kp6.copy()
        refined = np.zeros(len(boxes), bool)
        if self._refiner is None:  # no BlazeFace refinement
            return boxes, kp6, refined
        # a face's side in the first pass's input, and in the refinement crop's
        first = self._detector.spec.size / max(h, w)
        in_crop = REFINE_INPUT / self.refine_scale
        for i, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
            face = max(x2 - x1, y2 - y1)
            if in_crop < self.refine_min_zoom * face * first:
                continue  # seen nearly as large already: refining would gain little
            side = int(round(self.refine_scale * face))
            if side < 8:
                continue
            ox = int(round((x1 + x2 - side) / 2))
            oy = int(round((y1 + y2 - side) / 2))
            # sampled as MediaPipe samples its own inputs (bilinear): the eyes land as near
            # dlib's as from an area-averaged crop, at a twentieth of its cost on large faces
            crop = square_crop(img, ox, oy, side, REFINE_INPUT, area=False)
            b, _, k = self._run(self._refiner, crop)
            if not len(b):
                continue
            scale = side / REFINE_INPUT  # crop pixels -> image pixels
            origin = np.array([ox, oy, ox, oy], np.float64)
            iou = box_iou(boxes[i] - origin, b * scale)[0]
            j = int(np.argmax(iou))
            if iou[j] < REFINE_MIN_IOU:
                continue
            boxes[i] = b[j] * scale + origin
            kp6[i] = k[j] * scale + origin[:2]
            refined[i] = True
        return boxes, kp6, refined

    def _detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Each image on its own through the graph; with ``refine="onet"``, every face of the
        batch then through O-Net at once."""
        dets = [self._detect_one(im) for im in images]
        if self._points is None:
            return dets
        points = self._points(images, [d.boxes for d in dets])
        return [
            Detections(d.boxes, d.scores, p, {**d.extra, "refined": np.ones(len(d), bool)})
            for d, p in zip(dets, points, strict=True)
        ]

    def _detect_one(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        if max(h, w) > MAX_INPUT_SIDE:  # searched downscaled; boxes come back in input pixels
            s = MAX_INPUT_SIDE / max(h, w)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            det = self._detect_one(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
            f = np.array([w / size[0], h / size[1]], np.float32)
            extra = {**det.extra, "keypoints6": det.extra["keypoints6"] * f}
            return Detections(det.boxes * np.tile(f, 2), det.scores, det.landmarks * f, extra)
        img = np.ascontiguousarray(image)
        boxes, scores, kp6 = self._run(self._detector, img)
        refined = np.zeros(len(boxes), bool)
        if self._refiner is not None and len(boxes):
            boxes, kp6, refined = self._refine(img, boxes, kp6)
        n = len(boxes)
        landmarks = np.full((n, 5, 2), np.nan, np.float32)
        swap = kp6[:, 0, 0] > kp6[:, 1, 0]  # eyes in image order: smaller x first
        landmarks[:, 0] = np.where(swap[:, None], kp6[:, 1], kp6[:, 0])
        landmarks[:, 1] = np.where(swap[:, None], kp6[:, 0], kp6[:, 1])
        landmarks[:, 2] = kp6[:, 2]
        scores = np.clip(scores, 0.0, 1.0)
        extra = {"keypoints6": kp6, "refined": refined}
        return Detections(boxes, scores, landmarks, extra)

    def _parameters(self) -> dict[str, Any]:
        """Parameters, the input normalisation and the LiteRT version."""
        return {
            "model": self.model,
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "refine": self.refine,
            "refine_scale": self.refine_scale,
            "refine_min_zoom": self.refine_min_zoom,
            **({} if self._points is None else {"landmark_stage": self._points.parameters()}),
            "normalization": {"mean": NORM_MEAN, "std": NORM_STD},
            "litert": self._litert_version,
        }


def _litert_version() -> str:
    """The installed ai-edge-litert version (recorded in provenance)."""
    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree
        import ai_edge_litert

        return str(getattr(ai_edge_litert, "__version__", "unknown"))
