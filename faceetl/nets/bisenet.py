"""BiSeNet face parsing (Yu et al. 2018) with the module names of zllrunning/face-parsing.PyTorch,
so its released ``79999_iter.pth`` (19 CelebAMask-HQ classes) loads strictly; its release record."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..weights import load_strict, register_weights
from .parsing_classes import CLASSES as PARSING_CLASSES

#: the 19 CelebAMask-HQ classes in the released model's output order
CLASSES = PARSING_CLASSES
N_CLASSES = len(CLASSES)
INPUT_SIZE = 512
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
WEIGHTS_NAME = "parsing_bisenet"
WEIGHTS_FILE = "79999_iter.pth"

register_weights(
    WEIGHTS_NAME,
    "https://huggingface.co/ManyOtherFunctions/face-parse-bisent/resolve/"
    "0073b233a5a3c4b1377d4dbf49245017938a72b5/79999_iter.pth",
    "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
    WEIGHTS_FILE,
    "BiSeNet face parsing (CelebAMask-HQ, 19 classes), zllrunning/face-parsing.PyTorch",
    licence="MIT",
    colour="RGB",
    mean=MEAN,
    std=STD,
    input_size=(INPUT_SIZE, INPUT_SIZE),
    classes=CLASSES,
)


class ConvBNReLU(nn.Module):
    """Conv + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block with the official BiSeNet names."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(s + r)


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class Resnet18(nn.Module):
    """ResNet-18 trunk: the stride 8, 16 and 32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    """Channel attention on a context feature."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        att = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * att


class ContextPath(nn.Module):
    """ResNet-18 features refined and upsampled to stride 8."""

    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        avg_up = F.interpolate(avg, feat32.shape[2:], mode="nearest")
        up32 = F.interpolate(self.arm32(feat32) + avg_up, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        up16 = self.conv_head16(up16)
        return feat8, up16, up32


class FeatureFusion(nn.Module):
    """Spatial and context features fused with channel attention."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        att = F.adaptive_avg_pool2d(feat, 1)
        att = torch.sigmoid(self.conv2(F.relu(self.conv1(att))))
        return feat * att + feat


class Head(nn.Module):
    """3x3 conv block then 1x1 class logits."""

    def __init__(self, cin: int, mid: int, n: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid, n, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Main-head logits at the input resolution (the auxiliary heads are not run)."""

    def __init__(self, n: int = N_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, n)
        self.conv_out16 = Head(128, 64, n)
        self.conv_out32 = Head(128, 64, n)

    def forward(self, x):
        feat8, cp8, _ = self.cp(x)
        out = self.conv_out(self.ffm(feat8, cp8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def build_bisenet(n_classes: int = N_CLASSES) -> BiSeNet:
    """BiSeNet with the official module names; untrained."""
    return BiSeNet(n_classes)


def load_bisenet(source: str | os.PathLike | dict[str, Any]) -> BiSeNet:
    """BiSeNet with the weights of ``source`` (the official key layout), in eval mode.

    Raises :class:`~faceetl.weights.WeightsError` naming the missing, unexpected or mis-shaped
    keys when it is not a face-parsing.PyTorch BiSeNet state dict.
    """
    what = f"face-parsing.PyTorch BiSeNet (19-class {WEIGHTS_FILE})"
    return load_strict(BiSeNet(), source, what).eval()
