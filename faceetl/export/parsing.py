"""Export kind ``parsing``: BiSeNet face parsing (:mod:`faceetl.nets.bisenet`).

Input ``"input"``: 512x512 RGB in [0, 1] normalised with the ImageNet mean and std (as
:func:`faceetl.predictors.parsing.preprocess`), dynamic batch; output ``logits`` (B, 19, 512, 512)
of the main head (label = argmax over axis 1).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from torch import nn

from ..nets.bisenet import CLASSES, INPUT_SIZE, WEIGHTS_NAME, BiSeNet, load_bisenet
from ..predictors.parsing import ParsingPredictor, preprocess
from ..weights import resolve
from .registry import Loaded, register_exportable


def load(weights: Any = None) -> Loaded:
    """BiSeNet with the released ``79999_iter.pth``, or the state dict of the file ``weights``."""
    resolved = resolve(weights, WEIGHTS_NAME, "face-parsing BiSeNet")
    return Loaded(load_bisenet(resolved.path), resolved.sha256)


def prepare(images: list[np.ndarray]) -> list[np.ndarray]:
    """Network inputs of RGB uint8 crops, in batches of 8."""
    return [preprocess(images[i : i + 8]) for i in range(0, len(images), 8)]


def metadata(net: nn.Module) -> dict[str, str]:
    return {
        "faceetl.input": "RGB in [0, 1] normalised with ImageNet mean/std, NCHW 512x512",
        "faceetl.classes": json.dumps(list(CLASSES)),
    }


def _net(obj: Any) -> nn.Module:
    return obj.net if isinstance(obj, ParsingPredictor) else obj


register_exportable(
    "parsing",
    modules=(BiSeNet, ParsingPredictor),
    unwrap=_net,
    outputs=("logits",),
    dynamic={0: "batch"},
    example=(2, 3, INPUT_SIZE, INPUT_SIZE),
    prepare=prepare,
    metadata=metadata,
    profiles=((1, 3, 512, 512), (8, 3, 512, 512), (32, 3, 512, 512)),
    load=load,
)
