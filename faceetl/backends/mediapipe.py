"""MediaPipe BlazeFace through the maintained Tasks API (``vision.FaceDetector``).

The shared models are the legacy-solution ``face_detection_short_range.tflite`` (128x128 input)
and ``face_detection_full_range_sparse.tflite`` (192x192). They carry no TFLite metadata, and
the Tasks API refuses a float-input model without it ("Input tensor has type float32: it
requires specifying NormalizationOptions metadata"). mediapipe's own metadata writer
(``mediapipe.tasks.python.metadata.metadata_writers``) cannot be imported in mediapipe 1.2.2 (it
imports the missing extension ``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version``),
so :func:`with_task_metadata` writes the same metadata with mediapipe's generated flatbuffer
schema classes (``mediapipe.tasks.metadata``): an RGB image input normalised with mean 127.5
and std 127.5 (pixels to [-1, 1], as the legacy graph's ImageToTensorCalculator did), and the two
output tensors named. The verified weight file is not modified; the patched copy lives in memory
and goes to the detector as ``model_asset_buffer``. Anchors, decoding and NMS are MediaPipe's own.

BlazeFace gives 6 keypoints: the subject's right eye, left eye, nose tip, mouth centre, right ear
tragion, left ear tragion. The eyes and nose fill the ArcFace 5 (eyes ordered by x in the
image); mouth corners are not given and stay NaN. All 6 in pixels are in
``extra["keypoints6"]`` in MediaPipe's order.

Keypoint refinement (``refine=True``, the default): the whole photo is shrunk to 128 or 192 px,
so on small faces the first pass places the keypoints coarsely (errors of a third of the eye
distance and more in group photos). Each face found is then cut out as a square of
``refine_scale`` times its box's larger side, centred on the box (zero padding past the
borders), resized to the short-range model's 128 px input, and detected again. The detection in
that crop that best overlaps the face's expected position gives the face's keypoints and box,
mapped back to image pixels; the first-pass score is kept. A face whose crop yields no
overlapping detection keeps its first-pass box and keypoints (``extra["refined"]`` says which).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from ..boxes import box_iou
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

#: MediaPipe aborts the whole process (no exception: libc++abi terminates it) on an image with a
#: side of 32767 px or more (its remap needs sides below SHRT_MAX); longer images are downscaled
MAX_INPUT_SIDE = 32766
#: input side of the short-range model, the one refinement runs
REFINE_INPUT = 128
#: a refined detection must overlap the face's expected box in the crop at least this much
REFINE_MIN_IOU = 0.3

#: input normalisation of BlazeFace: (pixel - 127.5) / 127.5 -> [-1, 1]
NORM_MEAN = 127.5
NORM_STD = 127.5


def with_task_metadata(model: bytes, name: str = "blazeface") -> bytes:
    """The TFLite ``model`` with the metadata the Tasks FaceDetector needs added.

    Adds a ``TFLITE_METADATA`` buffer (image input, RGB, NormalizationOptions; two named
    outputs), as mediapipe's MetadataPopulator does. Fails if the model already has one.
    """
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as mfb
    from mediapipe.tasks.metadata import schema_py_generated as sfb

    image = mfb.TensorMetadataT()
    image.name = "image"
    image.description = "RGB image, normalised to [-1, 1]"
    content = mfb.ContentT()
    content.contentPropertiesType = mfb.ContentProperties.ImageProperties
    props = mfb.ImagePropertiesT()
    props.colorSpace = mfb.ColorSpaceType.RGB
    content.contentProperties = props
    image.content = content
    norm = mfb.NormalizationOptionsT()
    norm.mean = [NORM_MEAN]
    norm.std = [NORM_STD]
    unit = mfb.ProcessUnitT()
    unit.optionsType = mfb.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    image.processUnits = [unit]
    outputs = []
    for out_name in ("regressors", "classificators"):
        t = mfb.TensorMetadataT()
        t.name = out_name
        outputs.append(t)
    subgraph = mfb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = outputs
    meta = mfb.ModelMetadataT()
    meta.name = name
    meta.description = "BlazeFace face detector (legacy MediaPipe model, metadata added by faceetl)"
    meta.minParserVersion = "1.0.0"  # only 1.0.0 features (image input + normalisation)
    meta.subgraphMetadata = [subgraph]
    b = flatbuffers.Builder(0)
    b.Finish(meta.Pack(b), b"M001")
    meta_buf = bytes(b.Output())

    tfl = sfb.ModelT.InitFromObj(sfb.Model.GetRootAsModel(bytearray(model), 0))
    sg = tfl.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 2:
        raise ValueError("not a BlazeFace model: expected 1 input and 2 outputs")
    if any(m.name == b"TFLITE_METADATA" for m in tfl.metadata or []):
        raise ValueError("model already has TFLITE_METADATA")
    buf = sfb.BufferT()
    buf.data = np.frombuffer(meta_buf, np.uint8)
    tfl.buffers.append(buf)
    entry = sfb.MetadataT()
    entry.name = "TFLITE_METADATA"
    entry.buffer = len(tfl.buffers) - 1
    tfl.metadata = [*(tfl.metadata or []), entry]
    b = flatbuffers.Builder(0)
    b.Finish(tfl.Pack(b), b"TFL3")
    return bytes(b.Output())


@register_backend("mediapipe", workers=2, gpu=False)
class MediaPipeDetector(BaseDetector):
    """BlazeFace (short or full range) via ``mediapipe.tasks.python.vision.FaceDetector``.

    ``score_threshold`` and ``nms_threshold`` are the Tasks API's ``min_detection_confidence``
    and ``min_suppression_threshold``.
    """

    name = "mediapipe"

    @renamed(min_detection_confidence="score_threshold", min_suppression_threshold="nms_threshold")
    def __init__(
        self,
        *,
        model: str = "short",
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        refine: bool = True,
        refine_scale: float = 2.0,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, not {model!r}")
        if not refine_scale > 1.0:
            raise ValueError(f"refine_scale must be > 1, not {refine_scale!r}")
        import mediapipe as mp

        self._mp = mp
        self.model = model
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.refine = bool(refine)
        self.refine_scale = float(refine_scale)
        self._mp_version = getattr(mp, "__version__", "unknown")
        self._weights: dict[str, str] = {}
        self._task_sha256: dict[str, str] = {}
        self._detector = self._create(model)
        # refinement runs the short-range model on face crops: the same detector for
        # model="short", a second one (created once, reused for every crop) for "full"
        self._refiner = None
        if self.refine:
            self._refiner = self._detector if model == "short" else self._create("short")
        # One lock for both detectors. Concurrent detect() calls on one detector gave identical
        # results in our check, but the Tasks API does not document thread safety, so calls
        # are serialised.
        self._lock = threading.Lock()

    def _create(self, model: str) -> Any:
        """A Tasks ``FaceDetector`` for ``model`` ("short" or "full"), its hashes recorded."""
        from mediapipe.tasks.python import BaseOptions, vision

        wf = weights_info(MODELS[model])
        path = fetch(MODELS[model])
        patched = with_task_metadata(path.read_bytes(), name=path.stem)
        self._weights[wf.filename] = wf.sha256
        self._task_sha256[wf.filename] = hashlib.sha256(patched).hexdigest()
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_buffer=patched),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=self.score_threshold,
            min_suppression_threshold=self.nms_threshold,
        )
        with _repeats_collapsed():  # LiteRT warns once per sparse tensor: 46 times for "full"
            det = vision.FaceDetector.create_from_options(options)
        log.debug("mediapipe %s FaceDetector loaded (%s)", self._mp_version, wf.filename)
        return det

    def _run(self, detector: Any, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4), scores (N,) and the 6 keypoints (N, 6, 2) in ``img`` pixels."""
        h, w = img.shape[:2]
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=img)
        with self._lock:
            faces = detector.detect(mp_image).detections or []
        boxes = np.zeros((len(faces), 4), np.float32)
        scores = np.zeros(len(faces), np.float32)
        kp6 = np.full((len(faces), 6, 2), np.nan, np.float32)
        for i, det in enumerate(faces):
            bb = det.bounding_box
            boxes[i] = (bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height)
            scores[i] = det.categories[0].score if det.categories else np.nan
            for k, kp in enumerate((det.keypoints or [])[:6]):
                kp6[i, k] = (kp.x * w, kp.y * h)
        return boxes, scores, kp6

    def _refine(
        self, img: np.ndarray, boxes: np.ndarray, kp6: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes and keypoints re-detected on a square crop around each face (see module doc).

        Returns the new boxes, keypoints and a bool per face: whether it was refined.
        """
        h, w = img.shape[:2]
        boxes, kp6 = boxes.copy(), kp6.copy()
        refined = np.zeros(len(boxes), bool)
        for i, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
            side = int(round(self.refine_scale * max(x2 - x1, y2 - y1)))
            if side < 8:
                continue
            ox = int(round((x1 + x2 - side) / 2))
            oy = int(round((y1 + y2 - side) / 2))
            crop = np.zeros((side, side, 3), np.uint8)
            sx0, sy0 = max(ox, 0), max(oy, 0)
            sx1, sy1 = min(ox + side, w), min(oy + side, h)
            crop[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = img[sy0:sy1, sx0:sx1]
            interp = cv2.INTER_AREA if side > REFINE_INPUT else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (REFINE_INPUT, REFINE_INPUT), interpolation=interp)
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
        """Parameters, and the sha256 of each weight file's copy with metadata added."""
        return {
            "model": self.model,
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "refine": self.refine,
            "refine_scale": self.refine_scale,
            "task_model_sha256": dict(self._task_sha256),
            "normalization": {"mean": NORM_MEAN, "std": NORM_STD},
            "mediapipe": self._mp_version,
        }

    def close(self) -> None:
        """Release the MediaPipe graphs."""
        det, self._detector = getattr(self, "_detector", None), None
        ref, self._refiner = getattr(self, "_refiner", None), None
        for d in {id(x): x for x in (det, ref) if x is not None}.values():
            d.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass


@contextlib.contextmanager
def _repeats_collapsed() -> Iterator[None]:
    """Capture what native code writes to the process's stderr (file descriptor 2) meanwhile,
    then write it back with each repeated line once, followed by how many times it came.

    LiteRT logs from C++ straight to the descriptor, past Python's ``sys.stderr`` and its
    ``logging``, and has no switch to quiet it; nothing is dropped, only repeats are counted.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode("utf-8", "replace").splitlines()
            counts = collections.Counter(lines)
            out = []
            for line in dict.fromkeys(lines):  # first appearance order
                n = counts[line]
                out.append(line if n == 1 else f"{line} (x{n})")
            if out:
                sys.stderr.write("\n".join(out) + "\n")
                sys.stderr.flush()
