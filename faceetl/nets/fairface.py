"""FairFace's classifier (Karkkainen & Joo 2021): torchvision's ResNet-34 with ``fc`` 512 -> 18
(7 race, 2 gender, 9 age logits), so the released state dicts load strictly."""

from __future__ import annotations

import os

from ..weights import load_strict
from .resnet import ResNet

N_OUTPUTS = 18


def build_resnet34(num_outputs: int = N_OUTPUTS) -> ResNet:
    """torchvision's ``resnet34()`` with ``fc = Linear(512, num_outputs)``, same state-dict keys."""
    return ResNet(34, num_classes=num_outputs)


def load_model(source: str | os.PathLike | dict) -> ResNet:
    """A FairFace ResNet-34 from a state dict in the released layout (strict), in eval mode.

    Files saved by torch < 0.4.1 lack BatchNorm's (unused in eval) batch counters: allowed.
    """
    what = f"FairFace ResNet-34 (torchvision resnet34 keys with fc 512->{N_OUTPUTS})"
    return load_strict(build_resnet34(N_OUTPUTS), source, what).eval()
