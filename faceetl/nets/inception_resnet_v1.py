"""InceptionResnetV1 (FaceNet, Schroff et al. 2015) with facenet-pytorch's module names, so its
VGGFace2 release loads strictly; the release record and the loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..weights import WeightsError, load_state_dict, register_weights

FACENET_WEIGHTS = "facenet_vggface2"
#: the VGGFace2 classifier head in the released file (used only for training; kept for strict load)
VGGFACE2_CLASSES = 8631
INPUT_SIZE = 160

register_weights(
    FACENET_WEIGHTS,
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
    "20180402-114759-vggface2.pt",
    # pinned in several independent public projects for this release file (111,898,327 bytes)
    "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b",
    filename="20180402-114759-vggface2.pt",
    description="facenet-pytorch InceptionResnetV1 VGGFace2 state dict (MIT), incl. 8631 logits",
    licence="MIT",
    colour="RGB",
    mean=(127.5, 127.5, 127.5),  # fixed_image_standardization: (x - 127.5) / 128
    std=(128.0, 128.0, 128.0),
    input_size=(INPUT_SIZE, INPUT_SIZE),
)


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, k: Any, stride: int, padding: Any = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001, momentum=0.1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _seq(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


class Block35(nn.Module):
    """Inception-ResNet-A block (35x35)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(256, 32, 1, 1)
        self.branch1 = _seq(BasicConv2d(256, 32, 1, 1), BasicConv2d(32, 32, 3, 1, 1))
        self.branch2 = _seq(
            BasicConv2d(256, 32, 1, 1),
            BasicConv2d(32, 32, 3, 1, 1),
            BasicConv2d(32, 32, 3, 1, 1),
        )
        self.conv2d = nn.Conv2d(96, 256, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)
        return self.relu(self.conv2d(y) * self.scale + x)


class Block17(nn.Module):
    """Inception-ResNet-B block (17x17)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(896, 128, 1, 1)
        self.branch1 = _seq(
            BasicConv2d(896, 128, 1, 1),
            BasicConv2d(128, 128, (1, 7), 1, (0, 3)),
            BasicConv2d(128, 128, (7, 1), 1, (3, 0)),
        )
        self.conv2d = nn.Conv2d(256, 896, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.branch0(x), self.branch1(x)], 1)
        return self.relu(self.conv2d(y) * self.scale + x)


class Block8(nn.Module):
    """Inception-ResNet-C block (8x8)."""

    def __init__(self, scale: float = 1.0, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.use_relu = relu
        self.branch0 = BasicConv2d(1792, 192, 1, 1)
        self.branch1 = _seq(
            BasicConv2d(1792, 192, 1, 1),
            BasicConv2d(192, 192, (1, 3), 1, (0, 1)),
            BasicConv2d(192, 192, (3, 1), 1, (1, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.branch0(x), self.branch1(x)], 1)
        y = self.conv2d(y) * self.scale + x
        return torch.relu(y) if self.use_relu else y


class Mixed6a(nn.Module):
    """Reduction-A."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, 2)
        self.branch1 = _seq(
            BasicConv2d(256, 192, 1, 1),
            BasicConv2d(192, 192, 3, 1, 1),
            BasicConv2d(192, 256, 3, 2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Mixed7a(nn.Module):
    """Reduction-B."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _seq(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 384, 3, 2))
        self.branch1 = _seq(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 256, 3, 2))
        self.branch2 = _seq(
            BasicConv2d(896, 256, 1, 1),
            BasicConv2d(256, 256, 3, 1, 1),
            BasicConv2d(256, 256, 3, 2),
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)]
        return torch.cat(parts, 1)


class InceptionResnetV1(nn.Module):
    """Embedding network: (N, 3, 160, 160) standardised RGB -> (N, 512) unit vectors."""

    def __init__(self, num_classes: int = VGGFACE2_CLASSES) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, 2)
        self.conv2d_2a = BasicConv2d(32, 32, 3, 1)
        self.conv2d_2b = BasicConv2d(32, 64, 3, 1, 1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3, 1)
        self.conv2d_4b = BasicConv2d(192, 256, 3, 2)
        self.repeat_1 = _seq(*[Block35(0.17) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = _seq(*[Block17(0.10) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = _seq(*[Block8(0.20) for _ in range(5)])
        self.block8 = Block8(relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(1792, 512, bias=False)
        self.last_bn = nn.BatchNorm1d(512, eps=0.001, momentum=0.1)
        self.logits = nn.Linear(512, num_classes)  # VGGFace2 identities: unused here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in (
            "conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a",
            "conv2d_4b", "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8",
            "avgpool_1a",
        ):  # fmt: skip
            x = getattr(self, name)(x)
        x = self.last_bn(self.last_linear(x.flatten(1)))
        return torch.nn.functional.normalize(x, p=2, dim=1)


def load_facenet(path: str | Path):
    """InceptionResnetV1 with the state dict at ``path`` (facenet-pytorch layout, strict)."""
    sd = load_state_dict(path)
    if not isinstance(sd, dict) or "last_linear.weight" not in sd:
        raise WeightsError(
            f"{path} is not a facenet-pytorch InceptionResnetV1 state dict (no last_linear.weight)"
        )
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    if "logits.weight" not in sd:  # a features-only file: the classifier head is not needed
        sd = {
            **sd,
            "logits.weight": torch.zeros(VGGFACE2_CLASSES, 512),
            "logits.bias": torch.zeros(VGGFACE2_CLASSES),
        }
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = InceptionResnetV1(int(sd["logits.weight"].shape[0]))
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(
            f"{path} does not fit facenet-pytorch's InceptionResnetV1 (VGGFace2 release layout): {e}"
        ) from e
    return model.eval()
