"""Evaluation: WIDER FACE AP as the official tool computes it (:mod:`.wider`) and agreement
between two runs' crops (:mod:`.agreement`)."""

from .agreement import eye_agreement, match_faces
from .wider import (
    SETTINGS,
    WiderGT,
    detect_widerface,
    norm_scores,
    read_widerface_gt,
    read_widerface_txt,
    voc_ap,
    widerface,
    widerface_overlaps,
    write_widerface_txt,
)

__all__ = [
    "SETTINGS",
    "WiderGT",
    "detect_widerface",
    "eye_agreement",
    "match_faces",
    "norm_scores",
    "read_widerface_gt",
    "read_widerface_txt",
    "voc_ap",
    "widerface",
    "widerface_overlaps",
    "write_widerface_txt",
]
