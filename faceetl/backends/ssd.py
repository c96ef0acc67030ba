"""OpenCV's "res10" SSD face detector (ResNet-10 SSD, 300x300 input) + five O-Net landmarks.

Two copies of the same network: the TensorFlow uint8-quantised graph (default,
``model="tensorflow"``) and the original Caffe model (``model="caffe"``). Images go in as
BGR, resized to 300x300, mean (104, 177, 123) subtracted, as in OpenCV's samples. The
model's confidence is the score.

Runtimes (``engine=``): ``"torch"`` (the default for the TensorFlow graph) runs its weights as
a torch module (:mod:`faceetl.nets.res10_ssd`), about twice as fast as OpenCV DNN on one core,
with the same boxes to ~1e-7 of the image side; ``"opencv"`` runs the graph in OpenCV's DNN
module (the only runtime for the Caffe model).

Landmarks (``landmarks=``): ``"onet"`` (default) runs MTCNN's O-Net once on each box for the
five ArcFace points (:mod:`faceetl.backends.landmarks`: ~1 ms a face on one core); ``"haar"``
searches each box with the Haar eye cascade (:func:`faceetl.backends.haar.find_eyes`: eyes
only, on fewer faces, ~40 ms a face); ``None`` gives boxes only.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from ..nets import external as _releases  # noqa: F401 (registers the model files)
from ..weights import fetch, weights_info
from .base import BaseDetector, Detections, register_backend
from .landmarks import eyes_to_landmarks, landmark_stage
from .params import renamed

log = logging.getLogger(__name__)

INPUT_SIZE = 300
MEAN_BGR = (104.0, 177.0, 123.0)


#: O-Net's square is this fraction of an SSD box's larger side: SSD boxes are looser than the
#: MTCNN boxes O-Net was trained on (median eye error on the shared photos 0.032 of the eye
#: distance at 0.8, 0.043 at 1.0)
ONET_BOX_SCALE = 0.8

#: model name -> (weights of the network, weights of the graph/config)
MODELS = {
    "tensorflow": ("ssd_tf_uint8", "ssd_tf_pbtxt"),
    "caffe": ("ssd_caffe_model", "ssd_caffe_prototxt"),
}
#: what runs the network (see the module docstring)
ENGINES = ("torch", "opencv")


@register_backend("ssd", workers=4, gpu=False)
class SSDDetector(BaseDetector):
    """OpenCV's res10 SSD: boxes and confidences; five O-Net landmarks (or Haar eyes).

    ``score_threshold``: the least model confidence kept. ``min_inside``: the least fraction of
    a raw box's area inside the image (filters the model's spurious boxes on tight crops).
    ``min_face_size``: the least box width and height in pixels after clipping.
    ``landmarks``: ``"onet"``, ``"haar"`` or ``None``; ``engine``: ``"torch"`` or ``"opencv"``,
    ``None`` for the model's default (see the module docstring).
    """

    name = "ssd"

    @renamed(confidence="score_threshold", min_box="min_face_size", eyes=eyes_to_landmarks)
    def __init__(
        self,
        *,
        model: str = "tensorflow",
        score_threshold: float = 0.5,
        landmarks: str | None = "onet",
        min_face_size: float = 4.0,
        min_inside: float = 0.75,
        engine: str | None = None,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
        engine = engine or ("torch" if model == "tensorflow" else "opencv")
        if engine not in ENGINES or (engine == "torch" and model != "tensorflow"):
            raise ValueError(
                f"engine must be one of {ENGINES} ('torch' runs model='tensorflow' only), "
                f"got engine={engine!r} with model={model!r}"
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError("score_threshold must be in [0, 1]")
        self.model = model
        self.score_threshold = float(score_threshold)
        self.landmarks = landmarks
        self.min_face_size = float(min_face_size)
        self.min_inside = float(min_inside)
        self.engine = engine
        net_name, cfg_name = MODELS[model]
        files = [weights_info(n) for n in (net_name, cfg_name)]
        self._weights = {wf.filename: wf.sha256 for wf in files}
        self._points = landmark_stage(landmarks, ONET_BOX_SCALE)
        if self._points is not None:
            self._weights.update(self._points.weights)
        net_path, cfg_path = fetch(net_name), fetch(cfg_name)
        self._net: Any = None
        self._torch: Any = None
        if engine == "torch":
            import torch

            from ..nets.res10_ssd import from_opencv

            net, self._priors = from_opencv(net_path, cfg_path)
            self._torch = net.to(memory_format=torch.channels_last)
        elif model == "tensorflow":
            self._net = cv2.dnn.readNetFromTensorflow(str(net_path), str(cfg_path))
        else:
            self._net = cv2.dnn.readNetFromCaffe(str(cfg_path), str(net_path))
        if self._net is not None:
            self._net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            self._net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        # OpenCV 4.14 fails on a batch of more than one image with the TF graph (a shape
        # error inside a Scale layer); then each image of the blob is run on its own
        self._batched = True

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        """Raw detections (K, 7): image index, class, confidence, x1, y1, x2, y2 (normalised)."""
        if self._torch is not None:
            return self._forward_torch(blob)
        if self._batched and len(blob) > 1:
            try:
                self._net.setInput(blob)
                return self._net.forward().reshape(-1, 7)
            except cv2.error as e:
                log.info("batched forward failed (%s); running images one at a time", e.err)
                self._batched = False
        outs = []
        for i in range(len(blob)):
            self._net.setInput(blob[i : i + 1])
            o = self._net.forward().reshape(-1, 7).copy()
            o[:, 0] = i
            outs.append(o)
        return np.concatenate(outs) if outs else np.zeros((0, 7), np.float32)

    def _forward_torch(self, blob: np.ndarray) -> np.ndarray:
        """:meth:`_forward` on the torch module: the whole blob at once, channels-last."""
        import torch

        from ..nets.res10_ssd import detect

        x = torch.from_numpy(blob).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            loc, conf = self._torch(x)
        rows = [np.zeros((0, 7), np.float32)]
        for i, d in enumerate(detect(loc, conf, self._priors, self.score_threshold)):
            rows.append(np.column_stack([np.full((len(d), 2), (i, 1)), d[:, 4], d[:, :4]]))
        return np.concatenate(rows).astype(np.float32)

    def _detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """All images in one blob (or one by one, see :meth:`_forward`)."""
        # RGB in, swapped to BGR after the resize (the same blob as converting the whole image
        # first; OpenCV swaps the mean to the image's order before subtracting it)
        blob = cv2.dnn.blobFromImages(
            [np.ascontiguousarray(im) for im in images],
            1.0,
            (INPUT_SIZE, INPUT_SIZE),
            MEAN_BGR,
            swapRB=True,
            crop=False,
        )
        raw = self._forward(blob)
        raw = raw[np.isfinite(raw).all(axis=1) & (raw[:, 2] >= self.score_threshold)]
        out = []
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            r = raw[raw[:, 0] == i]
            # on tight crops (e.g. aligned faces) the model emits confident boxes lying partly
            # or wholly outside [0, 1]; on whole photos real faces lie >= 98% inside. Drop
            # boxes with less than min_inside of their area inside the image, clip the rest,
            # and drop those left narrower or shorter than min_face_size pixels.
            raw_b = r[:, 3:7].astype(np.float64)
            area = (raw_b[:, 2] - raw_b[:, 0]) * (raw_b[:, 3] - raw_b[:, 1])
            c = np.clip(raw_b, 0.0, 1.0)
            inside = (c[:, 2] - c[:, 0]).clip(0) * (c[:, 3] - c[:, 1]).clip(0)
            ok_area = (area > 0) & (inside >= self.min_inside * np.maximum(area, 1e-12))
            b = c * [w, h, w, h]
            size = self.min_face_size
            keep = ok_area & (b[:, 2] - b[:, 0] >= size) & (b[:, 3] - b[:, 1] >= size)
            b, s = b[keep], np.clip(r[keep, 2], 0.0, 1.0)
            order = np.argsort(-s, kind="stable")
            b, s = b[order], s[order]
            out.append((b, s))
        points = None
        if self._points is not None:
            points = self._points(images, [b for b, _ in out])
        return [
            Detections(b, s, None if points is None else points[i]) for i, (b, s) in enumerate(out)
        ]

    def _parameters(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "score_threshold": self.score_threshold,
            "min_face_size": self.min_face_size,
            "min_inside": self.min_inside,
            "landmarks": self.landmarks,
            **({} if self._points is None else {"landmark_stage": self._points.parameters()}),
            "engine": self.engine,
            "input_size": INPUT_SIZE,
            "mean_bgr": list(MEAN_BGR),
            "opencv": cv2.__version__,
        }
