"""Multi-head face classifiers: a backbone (ResNet-18 or a small CNN) and one linear head per
label column. Architecture only; training is :mod:`faceetl.train.classifier`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .resnet import ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- backbones ----------------------------------------------------------------------------------


def ResNet18() -> ResNet:  # noqa: N802 (a backbone constructor, named like the class it was)
    """ResNet-18 features (torchvision layout and key names, without ``fc``): (N, 512)."""
    return ResNet(18)


class SmallCNN(nn.Module):
    """A small, fast CNN (4 strided conv-BN-ReLU blocks, global average pool): (N, 128)."""

    out_features = 128

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(a, b, 3, 2, 1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


BACKBONES: dict[str, Any] = {"resnet18": ResNet18, "small": SmallCNN}


def make_backbone(name: str) -> nn.Module:
    """A fresh backbone by name (``"resnet18"`` or ``"small"``)."""
    try:
        return BACKBONES[name]()
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


class MultiHeadClassifier(nn.Module):
    """A backbone and one linear head per label column; ``forward`` gives logits per column.

    ``classes`` maps each label column to its vocabulary (index -> label); ``label_columns``
    keeps their order. Inputs are RGB float tensors in [0, 1], normalised inside.
    """

    def __init__(
        self, backbone: str, classes: Mapping[str, Sequence[Any]], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = make_backbone(backbone)
        self.label_columns = list(classes)
        self.classes = {c: list(v) for c, v in classes.items()}
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # a list (not a dict): label column names may hold dots, which module names may not
        self.heads = nn.ModuleList(
            nn.Linear(self.backbone.out_features, len(self.classes[c])) for c in self.label_columns
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (N, D) of images in [0, 1]."""
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.dropout(self.features(x))
        return {c: h(f) for c, h in zip(self.label_columns, self.heads, strict=True)}

    def load_backbone(self, state_dict: Mapping[str, torch.Tensor] | str | os.PathLike) -> None:
        """Load backbone weights (torchvision names; ``fc.*`` and a ``backbone.`` prefix ignored)."""
        if isinstance(state_dict, (str, os.PathLike)):
            state_dict = torch.load(os.fspath(state_dict), map_location="cpu", weights_only=True)
        if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
            state_dict = state_dict["state_dict"]
        sd = {}
        for k, v in state_dict.items():
            k = k.removeprefix("module.").removeprefix("backbone.")
            if k.startswith("fc."):
                continue
            sd[k] = v
        missing, unexpected = self.backbone.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"pretrained weights do not fit the {self.backbone_name} backbone: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
