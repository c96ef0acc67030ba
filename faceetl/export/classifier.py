"""Export kind ``classifier``: a trained :class:`faceetl.nets.classifier.MultiHeadClassifier`.

Input ``"input"``: RGB in [0, 1] (the model normalises inside), dynamic batch, height and width;
one output of logits per head, named by its label column, in ``model.label_columns`` order. The
vocabularies are in the file's metadata (``faceetl.classes``, JSON). Graph parameter ``size``:
the crop side of the example, the check and the TensorRT shapes (default 224).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ..nets.classifier import MultiHeadClassifier
from .registry import Shapes, register_exportable


class ClassifierGraph(nn.Module):
    """A multi-head classifier's logits as a tuple in ``label_columns`` order."""

    def __init__(self, net: MultiHeadClassifier) -> None:
        super().__init__()
        self.net = net
        self.cols = list(net.label_columns)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x)
        return tuple(out[c] for c in self.cols)


def prepare(images: list[np.ndarray], size: int = 224) -> list[np.ndarray]:
    """RGB uint8 crops resized to ``size`` (INTER_AREA), in [0, 1], in batches of 32."""
    size = int(size)
    xs = [
        cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        for img in images
    ]
    x = np.stack(xs).transpose(0, 3, 1, 2)
    return [np.ascontiguousarray(x[i : i + 32]) for i in range(0, len(x), 32)]


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def metadata(net: MultiHeadClassifier, size: int = 224) -> dict[str, str]:
    cols = list(net.label_columns)
    return {
        "faceetl.input": "RGB float32 in [0, 1], NCHW (normalised inside the graph)",
        "faceetl.backbone": str(net.backbone_name),
        "faceetl.label_columns": json.dumps(cols),
        "faceetl.classes": json.dumps({c: [_jsonable(v) for v in net.classes[c]] for c in cols}),
        "faceetl.input_size": str(int(size)),
    }


def profiles(meta: Mapping[str, str]) -> Shapes:
    s = int(meta.get("faceetl.input_size", 224))
    return (1, 3, s, s), (32, 3, s, s), (256, 3, s, s)


def claims(path: Path) -> bool:
    """A classifier checkpoint file (backbone, classes, model), or a folder holding ``last.pt``."""
    from ..train.common import checkpoint_file

    file = checkpoint_file(path)
    if not file.is_file():
        return False
    try:
        ck = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch zip checkpoint
        return False
    return isinstance(ck, dict) and {"backbone", "classes", "model"} <= set(ck)


def load_checkpoint(path: Path) -> MultiHeadClassifier:
    from ..train.classifier import load_classifier

    return load_classifier(path, device="cpu")[0]


register_exportable(
    "classifier",
    modules=(MultiHeadClassifier,),
    graph=ClassifierGraph,
    outputs=lambda net: list(net.label_columns),
    dynamic={0: "batch", 2: "height", 3: "width"},
    example=lambda size: (2, 3, int(size), int(size)),
    prepare=prepare,
    metadata=metadata,
    profiles=profiles,
    claims=claims,
    load_checkpoint=load_checkpoint,
    params={"size": 224},
)
