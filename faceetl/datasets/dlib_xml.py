"""dlib imglab XML (``<images><image file=...><box top left width height>``), as dlib's
training tools and ``imglab`` write it; 68 landmark parts are reduced to RetinaFace's five."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from ..align import five_from_68
from .annotation import ImageAnnotation


def read_dlib_xml(path: str | os.PathLike, keep_ignored: bool = False) -> list[ImageAnnotation]:
    """Read dlib imglab XML: boxes (``x2 = left + width``), 68 parts reduced to the five.

    Boxes marked ``ignore='1'`` are dropped unless ``keep_ignored``; boxes without all 68
    parts get no landmarks.
    """
    root = ET.parse(path).getroot()
    out = []
    for img in root.iter("image"):
        boxes, lms = [], []
        for b in img.iter("box"):
            if b.get("ignore", "0") == "1" and not keep_ignored:
                continue
            t, left = float(b.get("top", 0)), float(b.get("left", 0))
            w, h = float(b.get("width", 0)), float(b.get("height", 0))
            boxes.append([left, t, left + w, t + h])
            parts = {p.get("name"): (float(p.get("x")), float(p.get("y"))) for p in b.iter("part")}
            names = [f"{i:02d}" for i in range(68)]
            if all(n in parts for n in names):
                lms.append(five_from_68(np.array([parts[n] for n in names])))
            else:
                lms.append(np.full((5, 2), -1.0, np.float32))
        out.append(
            ImageAnnotation(
                img.get("file", ""),
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(lms, np.float32).reshape(-1, 5, 2),
            )
        )
    return out


__all__ = ["read_dlib_xml"]
