"""Public data-set formats, each read in one place, and the face table as training data.

Detection annotations (records of :class:`ImageAnnotation`): WIDER FACE's ``bbx_gt.txt`` lists,
RetinaFace's ``label.txt`` (:mod:`.wider`, with the val ground truth ``.mat`` files the official
evaluation reads), dlib imglab XML (:mod:`.dlib_xml`), told apart by :func:`read_annotations`.
Face parsing: CelebAMask-HQ part masks and label maps (:mod:`.celebamask`). Labels: FairFace's
CSV files (:mod:`.fairface`). Face tables: label encoding (:mod:`.table`), stratified splits
(:mod:`.split`) and the torch :class:`FaceDataset` (:mod:`.faces`, loaded on first use: the
other modules need no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from .annotation import ImageAnnotation
from .celebamask import (
    G_MASK_PARTS,
    PARTS,
    CelebAMaskFolder,
    find_layout,
    merge_part_masks,
    part_mask_path,
    read_label_map,
    read_part_masks,
    write_label_maps,
)
from .dlib_xml import read_dlib_xml
from .fairface import FAIRFACE_LABEL_COLUMNS, read_fairface
from .formats import annotation_format, read_annotations
from .split import stratified_split
from .table import IGNORE_INDEX, as_pandas, encode_labels
from .wider import (
    WIDER_ATTRIBUTES,
    WiderGT,
    default_image_root,
    read_retinaface_labels,
    read_wider_bbx_gt,
    read_widerface_gt,
    write_retinaface_labels,
)

_LAZY = {"FaceDataset": "faces"}


def __getattr__(name: str) -> Any:
    """The torch Dataset loads on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAIRFACE_LABEL_COLUMNS",
    "G_MASK_PARTS",
    "IGNORE_INDEX",
    "PARTS",
    "WIDER_ATTRIBUTES",
    "CelebAMaskFolder",
    "FaceDataset",
    "ImageAnnotation",
    "WiderGT",
    "annotation_format",
    "as_pandas",
    "default_image_root",
    "encode_labels",
    "find_layout",
    "merge_part_masks",
    "part_mask_path",
    "read_annotations",
    "read_dlib_xml",
    "read_fairface",
    "read_label_map",
    "read_part_masks",
    "read_retinaface_labels",
    "read_wider_bbx_gt",
    "read_widerface_gt",
    "stratified_split",
    "write_label_maps",
    "write_retinaface_labels",
]
