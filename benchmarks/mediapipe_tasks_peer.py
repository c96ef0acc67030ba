"""MediaPipe's own Tasks ``FaceDetector``, timed pass by pass for ``peers.py``.

Run by ``peers.py`` in an interpreter that has the ``mediapipe`` package (faceetl does not depend
on it: it pins OpenCV's GUI build, so it lives in a separate environment), pinned to one core:

    python mediapipe_tasks_peer.py MODEL.tflite IMAGES.npz

``IMAGES.npz`` holds the decoded RGB photos (``img0``, ``img1``, ...), the same arrays faceetl is
timed on. The model is the legacy BlazeFace file faceetl uses, given the TFLite metadata the Tasks
API needs (``tests/data/make_mediapipe_reference.py``); MediaPipe's defaults otherwise
(min_detection_confidence 0.5, min_suppression_threshold 0.3). It answers ``peers.py`` as
``peer_protocol.py`` says. Only ``detect`` is timed, as for faceetl.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402
from peer_protocol import load_images, pin_one_core, serve  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))


def main() -> None:
    import mediapipe as mp
    from make_mediapipe_reference import with_task_metadata
    from mediapipe.tasks.python import BaseOptions, vision

    model, images_npz = Path(sys.argv[1]), sys.argv[2]
    pin_one_core()
    images = [
        mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im))
        for im in load_images(images_npz)
    ]
    options = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_buffer=with_task_metadata(model.read_bytes())),
        running_mode=vision.RunningMode.IMAGE,
        min_detection_confidence=0.5,
        min_suppression_threshold=0.3,
    )
    detector = vision.FaceDetector.create_from_options(options)

    def one_pass() -> tuple[float, int]:
        start = time.perf_counter()
        faces = sum(len(detector.detect(im).detections or []) for im in images)
        return time.perf_counter() - start, faces

    serve(one_pass)
    detector.close()


if __name__ == "__main__":
    main()
