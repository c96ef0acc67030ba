"""From faces to a training set: quality and head pose (filters over them here), duplicates
(:mod:`.duplicates`), identities and search (:mod:`.identities` on the :mod:`.index`).

The quality measures are pure functions (:mod:`faceetl.measures`: ``face_size``, ``box_side``,
``blur``, ``brightness``, ``contrast``, ``yaw``, ``pitch``, ``roll``); the ``quality``
predictor adds them as columns (``faceetl.predict(faces, "quality")`` or
``extract_faces(..., predict="quality")``). Filtering is then plain pandas or Dask:
``faces.query(PRESETS["frontal"])``. A comparison with NaN is false, so every preset also drops
the rows without a face and the faces whose measure is missing (no pose without landmarks).
"""

from __future__ import annotations

#: ``DataFrame.query`` strings (pandas and Dask alike) over the quality columns:
#:
#: - ``frontal``: yaw within 30 degrees and pitch within 25 of facing the camera (any roll:
#:   alignment undoes it). Pitch from five points is the weakest angle: RetinaFace's and MTCNN's
#:   read 3-5 degrees lower (more "down") than dlib's 68 points on the same faces.
#: - ``sharp``: ``blur`` (variance of the Laplacian of the 112 px ArcFace crop) at least 100.
#:   Measured with RetinaFace on the shared photos: faces 35-60 px between the eyes read 92-1199
#:   (median 464); a Gaussian blur of sigma 1 px on the photo brought 14 of them to 24-187, of
#:   2 px to 10-43; faces under 25 px between the eyes (enlarged into the crop) read 13 at the
#:   median, 90% below 35.
#: - ``large``: at least 35 px between the eye centres: the 112 px ArcFace crop (35.2 px between
#:   its eyes) is then made without enlarging the face.
#: - ``exposed``: mean grey 40-215 and its standard deviation at least 20: neither very dark,
#:   very bright, nor flat (on the shared photos every face of 35 px or more passes, means
#:   57-178, std >= 29; 3 of 244 faces fail, all small ones).
#: - ``training``: all four.
PRESETS: dict[str, str] = {
    "frontal": "-30 <= yaw <= 30 and -25 <= pitch <= 25",
    "sharp": "blur >= 100",
    "large": "face_size >= 35",
    "exposed": "40 <= brightness <= 215 and contrast >= 20",
}
PRESETS["training"] = " and ".join(f"({q})" for q in PRESETS.values())

__all__ = ["PRESETS"]
