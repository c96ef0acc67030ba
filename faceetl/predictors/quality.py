"""Quality and head pose of each face: size, sharpness, exposure, yaw / pitch / roll.

No model: measures on the face's row (landmarks, ``shape``, box, image size) and on its grey
ArcFace crop at 112 px (:data:`faceetl.measures.quality.QUALITY_ALIGN`, the same for every
backend). Made in the extraction pass from the images in memory
(``extract_faces(..., predict="quality")``), or added to an existing output by
``faceetl.predict(faces, "quality")`` without detecting again (the stored crop is used where it
is that 112 px ArcFace PNG, else the original is read once per image).

Columns (all float64 but ``pose_points``): ``face_size`` (inter-ocular distance, input pixels;
NaN without both eyes), ``box_side`` (``sqrt(width * height)`` of the box, input pixels),
``blur`` (variance of the crop's Laplacian: higher = sharper), ``brightness`` (mean grey 0..255),
``contrast`` (std of grey), ``yaw`` / ``pitch`` / ``roll`` (degrees; yaw > 0: the face turns to
the image's right, pitch > 0: it looks up, roll > 0: turned clockwise in the image, 0 upright;
NaN without five finite landmarks or a 68-point shape, or where no pose fits) and
``pose_points`` (Int64: 68 when dlib's 68-point ``shape`` gave the pose, 5 when the five
landmarks did, null when neither is complete). See
:mod:`faceetl.measures.quality` and :mod:`faceetl.measures.pose` for the definitions.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..align import AlignSpec
from ..measures.pose import head_pose
from ..measures.quality import (
    QUALITY_ALIGN,
    box_side,
    crop_measures,
    face_size,
    inside_mask,
    quality_transform,
)
from .base import check_crops, register_predictor

COLUMNS: dict[str, Any] = {
    "face_size": "float64",
    "box_side": "float64",
    "blur": "float64",
    "brightness": "float64",
    "contrast": "float64",
    "yaw": "float64",
    "pitch": "float64",
    "roll": "float64",
    "pose_points": "Int64",
}


def _value(v: Any) -> Any:
    """A cell as None when it is missing (None, NaN, ``pd.NA``), else as it is."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


@register_predictor("quality", gpu=False)
class QualityPredictor:
    """Face size, sharpness, exposure and head pose of each face (no model, no weights)."""

    name = "quality"
    align: ClassVar[AlignSpec | None] = QUALITY_ALIGN
    columns: ClassVar[dict[str, Any]] = COLUMNS
    #: predict_batch takes each crop's row (landmarks, shape, box, image size) as ``rows=``
    uses_rows: ClassVar[bool] = True
    #: nothing held but constants: one instance serves every thread
    thread_safe: ClassVar[bool] = True

    def predict_batch(
        self, crops: list[np.ndarray], rows: pd.DataFrame | None = None
    ) -> dict[str, list]:
        """The columns of each crop (RGB uint8, 112 px ArcFace) and its face's row in ``rows``
        (same order). Without rows only ``blur``, ``brightness`` and ``contrast`` are measured
        (over the whole crop); the others are NaN / null."""
        check_crops(crops, self.align, "the quality predictor")
        if rows is not None and len(rows) != len(crops):
            raise ValueError(f"{len(rows)} rows for {len(crops)} crops")
        out: dict[str, list] = {c: [] for c in COLUMNS}
        records = [None] * len(crops) if rows is None else rows.to_dict("records")
        for crop, row in zip(crops, records, strict=True):
            values = self._one(crop, row)
            for c in COLUMNS:
                out[c].append(values[c])
        return out

    def _one(self, crop: np.ndarray, row: dict[str, Any] | None) -> dict[str, Any]:
        if row is None:
            blur, bright, contrast = crop_measures(crop)
            return {**dict.fromkeys(COLUMNS, math.nan), "pose_points": None, "blur": blur,
                    "brightness": bright, "contrast": contrast}  # fmt: skip
        lm, shape = _value(row.get("landmarks")), _value(row.get("shape"))
        box = np.array([row["x1"], row["y1"], row["x2"], row["y2"]], np.float64)
        w, h = int(row["image_width"]), int(row["image_height"])
        mask = inside_mask(quality_transform(lm, box), w, h, QUALITY_ALIGN.size)
        blur, bright, contrast = crop_measures(crop, mask)
        yaw, pitch, roll, points = head_pose(lm, shape, w, h)
        return {
            "face_size": face_size(lm),
            "box_side": box_side(*box),
            "blur": blur,
            "brightness": bright,
            "contrast": contrast,
            "yaw": yaw,
            "pitch": pitch,
            "roll": roll,
            "pose_points": points or None,
        }

    def provenance(self) -> dict[str, Any]:
        """What each column is measured on and how (no weights)."""
        import cv2

        a = self.align
        return {
            "model": self.name,
            "align": {"template": a.template, "size": a.size, "padding": a.padding},
            "blur": "variance of cv2.Laplacian(grey, CV_64F, ksize=1) inside the photo",
            "grey": "cv2.COLOR_RGB2GRAY",
            "pose": {
                "mean_face": "OpenFace In-the-wild aligned PDM 68, made left-right symmetric",
                "solver": "cv2.solvePnP SOLVEPNP_ITERATIVE from a frontal guess",
                "camera": "focal = larger image side, principal point = centre, no distortion",
                "angles": "yaw>0 right, pitch>0 up, roll>0 clockwise (degrees)",
            },
            "library_version": str(cv2.__version__),
            "weights": {},
        }
