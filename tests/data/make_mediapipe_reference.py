"""Write ``mediapipe_reference.json``: BlazeFace as MediaPipe's own Tasks API runs it.

The reference the LiteRT port (``faceetl/backends/mediapipe.py``) is tested against
(``tests/test_backend_mediapipe.py``). It needs the ``mediapipe`` PyPI package, which faceetl no
longer depends on (it pins OpenCV's GUI build): install it into a separate environment with
faceetl, then run ``python tests/data/make_mediapipe_reference.py`` from the repository root.
The shared images are read from ``$FACEETL_SHARED/images`` (default ``../shared/images``), the
model files through :func:`faceetl.weights.fetch`. Use OpenCV 4 there (``pip install
"opencv-contrib-python<5"`` after mediapipe): OpenCV 5's bilinear warp rounds some pixels of the
refinement crops one level apart from OpenCV 4's, which moves refined keypoints by up to 0.6 px.

What runs here is faceetl's mediapipe backend as it was before the port (faceetl commit b3ba3d8),
kept so that the reference can be made again: ``vision.FaceDetector`` on the legacy models, given
the TFLite metadata the Tasks API needs, and the same keypoint refinement on face crops. Recorded
per model ("short", "full") and image, with MediaPipe's defaults (min_detection_confidence 0.5,
min_suppression_threshold 0.3):

- ``boxes``: x1, y1, x2, y2 as the Tasks API gives them: whole pixels (origin and size each
  truncated, then clamped to the image), not clipped further;
- ``scores``; ``keypoints6``: the 6 keypoints in pixels (MediaPipe's relative ones times the
  image size);
- ``refined_boxes``, ``refined_keypoints6``, ``refined``: after refinement (refine_scale 2), per
  face whether a crop detection replaced it.

Also usable as a module: the live test imports :class:`TasksBlazeFace` and :func:`refine`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FACEETL_SHARED", ROOT.parent / "shared"))
IMAGES = SHARED / "images"
OUT = Path(__file__).with_name("mediapipe_reference.json")

#: the images recorded, relative to IMAGES: those tests/test_backend_mediapipe.py uses
IMAGE_GLOBS = ("single/*.jpg", "group/*.jpg")
MODELS = {
    "short": "mediapipe_face_detection_short_range",
    "full": "mediapipe_face_detection_full_range_sparse",
}
SCORE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.3
REFINE_SCALE = 2.0
REFINE_INPUT = 128
REFINE_MIN_IOU = 0.3


def with_task_metadata(model: bytes, name: str = "blazeface") -> bytes:
    """The TFLite ``model`` with the metadata the Tasks FaceDetector needs added.

    The legacy models carry none, and the Tasks API refuses a float-input model without
    NormalizationOptions. mediapipe's metadata writer cannot be imported in mediapipe 1.2.x, so
    the metadata (RGB image input, mean 127.5, std 127.5: pixels to [-1, 1]; two named outputs)
    is written with mediapipe's generated flatbuffer schema classes.
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
    norm.mean = [127.5]
    norm.std = [127.5]
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
    meta.minParserVersion = "1.0.0"
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


class TasksBlazeFace:
    """One BlazeFace model in ``mediapipe.tasks.python.vision.FaceDetector`` (IMAGE mode)."""

    def __init__(
        self,
        model: str,
        score_threshold: float = SCORE_THRESHOLD,
        nms_threshold: float = NMS_THRESHOLD,
    ) -> None:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        import faceetl.nets.external  # noqa: F401 (registers the model files)
        from faceetl.weights import fetch

        self._mp = mp
        path = fetch(MODELS[model])
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(
                model_asset_buffer=with_task_metadata(path.read_bytes(), path.stem)
            ),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=score_threshold,
            min_suppression_threshold=nms_threshold,
        )
        self._detector = vision.FaceDetector.create_from_options(options)

    def detect(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4) x1 y1 x2 y2 (whole pixels), scores (N,), 6 keypoints (N, 6, 2) px."""
        h, w = img.shape[:2]
        mp_image = self._mp.Image(
            image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)
        )
        faces = self._detector.detect(mp_image).detections or []
        boxes = np.zeros((len(faces), 4), np.float32)
        scores = np.zeros(len(faces), np.float32)
        kp6 = np.full((len(faces), 6, 2), np.nan, np.float32)
        for i, det in enumerate(faces):
            bb = det.bounding_box
            boxes[i] = (bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height)
            scores[i] = det.categories[0].score
            for k, kp in enumerate((det.keypoints or [])[:6]):
                kp6[i, k] = (kp.x * w, kp.y * h)
        return boxes, scores, kp6

    def close(self) -> None:
        """Release the MediaPipe graph."""
        self._detector.close()


def refine(
    refiner: TasksBlazeFace,
    img: np.ndarray,
    boxes: np.ndarray,
    kp6: np.ndarray,
    refine_scale: float = REFINE_SCALE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each face re-detected by the short-range ``refiner`` on a square crop of ``refine_scale``
    times its box's larger side, sampled to 128 px: new boxes, keypoints, and which were."""
    from faceetl.boxes import box_iou

    h, w = img.shape[:2]
    boxes, kp6 = boxes.copy(), kp6.copy()
    refined = np.zeros(len(boxes), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
        side = int(round(refine_scale * max(x2 - x1, y2 - y1)))
        if side < 8:
            continue
        ox = int(round((x1 + x2 - side) / 2))
        oy = int(round((y1 + y2 - side) / 2))
        # sampled bilinearly straight from the image, as ImageToTensorCalculator samples the
        # model's input, zero past the image's borders; crop pixel centres at (x + 0.5) * s - 0.5
        s = REFINE_INPUT / side
        m = np.array([[s, 0.0, s * (0.5 - ox) - 0.5], [0.0, s, s * (0.5 - oy) - 0.5]])
        crop = cv2.warpAffine(
            img, m, (REFINE_INPUT, REFINE_INPUT), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )  # fmt: skip
        b, _, k = refiner.detect(crop)
        if not len(b):
            continue
        scale = side / REFINE_INPUT
        origin = np.array([ox, oy, ox, oy], np.float64)
        iou = box_iou(boxes[i] - origin, b * scale)[0]
        j = int(np.argmax(iou))
        if iou[j] < REFINE_MIN_IOU:
            continue
        boxes[i] = b[j] * scale + origin
        kp6[i] = k[j] * scale + origin[:2]
        refined[i] = True
    return boxes, kp6, refined


def image_names() -> list[str]:
    """The recorded images, relative to IMAGES, sorted."""
    return sorted(str(p.relative_to(IMAGES)) for g in IMAGE_GLOBS for p in IMAGES.glob(g))


def _rounded(a: np.ndarray, decimals: int) -> Any:
    return np.round(a.astype(np.float64), decimals).tolist()


def make_reference() -> dict[str, Any]:
    """The reference, as written to the JSON file."""
    import mediapipe as mp

    from faceetl.images import load_image

    names = image_names()
    images = {n: load_image(IMAGES / n) for n in names}
    short = TasksBlazeFace("short")
    results: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        det = short if model == "short" else TasksBlazeFace(model)
        results[model] = {}
        for name, img in images.items():
            boxes, scores, kp6 = det.detect(img)
            rboxes, rkp6, refined = refine(short, img, boxes, kp6)
            results[model][name] = {
                "boxes": boxes.astype(int).tolist(),
                "scores": _rounded(scores, 7),
                "keypoints6": _rounded(kp6, 4),
                "refined_boxes": _rounded(rboxes, 4),
                "refined_keypoints6": _rounded(rkp6, 4),
                "refined": refined.tolist(),
            }
        if det is not short:
            det.close()
    short.close()
    return {
        "about": "BlazeFace via mediapipe.tasks vision.FaceDetector; see make_mediapipe_reference.py",
        "mediapipe": getattr(mp, "__version__", "unknown"),
        "score_threshold": SCORE_THRESHOLD,
        "nms_threshold": NMS_THRESHOLD,
        "refine_scale": REFINE_SCALE,
        "images": names,
        "results": results,
    }


def dumps(ref: dict[str, Any]) -> str:
    """``ref`` as JSON text, one line per model and image."""
    head = {k: v for k, v in ref.items() if k != "results"}
    models = []
    for model, per_image in ref["results"].items():
        rows = [
            f"  {json.dumps(n)}: {json.dumps(e, separators=(',', ':'))}"
            for n, e in per_image.items()
        ]
        models.append(f" {json.dumps(model)}: {{\n" + ",\n".join(rows) + "\n }")
    text = json.dumps(head, indent=1)[:-2] + ',\n "results": {\n' + ",\n".join(models) + "\n }\n}\n"
    if json.loads(text) != ref:  # the layout must not change the content
        raise AssertionError("JSON layout changed the reference")
    return text


def main() -> None:
    sys.path.insert(0, str(ROOT))  # faceetl from this checkout when not installed
    ref = make_reference()
    OUT.write_text(dumps(ref))
    n = sum(len(r["scores"]) for m in ref["results"].values() for r in m.values())
    print(f"wrote {OUT} ({len(ref['images'])} images, {n} faces, mediapipe {ref['mediapipe']})")


if __name__ == "__main__":
    main()
