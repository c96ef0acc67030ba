"""Face-detection annotation files of any supported layout, told apart by their first line."""

from __future__ import annotations

import os

from .annotation import ImageAnnotation
from .dlib_xml import read_dlib_xml
from .wider import read_retinaface_labels, read_wider_bbx_gt


def annotation_format(path: str | os.PathLike) -> str:
    """``"label"`` (RetinaFace label.txt), ``"bbx_gt"`` (WIDER) or ``"xml"`` (dlib imglab)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            s = line.strip()
            if not s:
                continue
            if s.startswith("<"):
                return "xml"
            return "label" if s.startswith("#") else "bbx_gt"
    return "label"


def read_annotations(path: str | os.PathLike) -> list[ImageAnnotation]:
    """Read any of the three layouts (see :func:`annotation_format`)."""
    fmt = annotation_format(path)
    if fmt == "xml":
        return read_dlib_xml(path)
    return read_retinaface_labels(path) if fmt == "label" else read_wider_bbx_gt(path)


__all__ = ["annotation_format", "read_annotations"]
