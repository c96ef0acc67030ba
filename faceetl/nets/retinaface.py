"""RetinaFace (Deng et al. 2019): architecture, released weights and the strict loader.

Two bodies: MobileNet-0.25 (``mobilenet0.25_Final.pth``) and ResNet-50 (``Resnet50_Final.pth``),
both from biubug6/Pytorch_Retinaface. Module names follow the released state dicts so they load
with ``strict=True``. The forward returns the raw head outputs; runtime concerns (padding masks
on mixed-size canvases, device placement, ONNX sessions) live in the backend. The prior-box coder
(anchors, decode for inference, encode/match for training) is :mod:`faceetl.nets.retinaface_priors`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import WeightsError, load_strict, register_weights
from .resnet import ResNet

MOBILENET_WEIGHTS = "retinaface_mobilenet0.25"
RESNET50_WEIGHTS = "retinaface_resnet50"
#: what the released networks were trained on: BGR, the mean subtracted, no scaling
MEAN_BGR = (104, 117, 123)
_PREPROCESSING: dict[str, Any] = {
    "licence": "MIT",
    "colour": "BGR",
    "mean": MEAN_BGR,
    "std": (1.0, 1.0, 1.0),
    "classes": ("background", "face"),
}

register_weights(
    MOBILENET_WEIGHTS,
    "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
    "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
    "mobilenet0.25_Final.pth",
    "RetinaFace MobileNet-0.25 (biubug6/Pytorch_Retinaface release, MIT)",
    **_PREPROCESSING,
)
register_weights(
    RESNET50_WEIGHTS,
    "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
    "Resnet50_Final.pth",
    "RetinaFace ResNet-50 (biubug6/Pytorch_Retinaface release, MIT; 109497761 bytes)",
    **_PREPROCESSING,
)

#: per-body settings of the released models (biubug6 cfg_mnet / cfg_re50)
CONFIGS: dict[str, dict[str, Any]] = {
    "mobilenet0.25": {"in_channel": 32, "out_channel": 64, "weights": MOBILENET_WEIGHTS},
    "resnet50": {"in_channel": 256, "out_channel": 256, "weights": RESNET50_WEIGHTS},
}
ALIASES = {"mobile0.25": "mobilenet0.25", "mobilenet": "mobilenet0.25", "resnet": "resnet50"}


def network_name(network: str) -> str:
    """The canonical body name (aliases accepted); a clear error for an unknown one."""
    network = ALIASES.get(network, network)
    if network not in CONFIGS:
        raise ValueError(f"unknown RetinaFace network {network!r}; choose one of {sorted(CONFIGS)}")
    return network


# ----------------------------------------------------------------------------- layers


def _conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, leaky: float | None = 0.0
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ LeakyReLU unless ``leaky`` is None)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(cin: int, cout: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with BatchNorm and LeakyReLU (MobileNet v1 block)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(leaky, inplace=True),
    )


class MobileNetBody(nn.Module):
    """MobileNet v1 x0.25 trunk: strides 8, 16, 32 out of stage1, stage2, stage3."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, stride=2, leaky=0.1),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)]
        )
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class ResNet50Body(ResNet):
    """ResNet-50 up to layer4 with torchvision's names; gives the layer2..layer4 outputs."""

    def __init__(self) -> None:
        super().__init__(50)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.stages(x)[1:]


class FPN(nn.Module):
    """Top-down feature pyramid over the three body outputs (nearest upsampling, 3x3 merge)."""

    def __init__(self, in_channels: list[int], out_channel: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out_channel, k=1, leaky=leaky)
        self.output2 = _conv_bn(in_channels[1], out_channel, k=1, leaky=leaky)
        self.output3 = _conv_bn(in_channels[2], out_channel, k=1, leaky=leaky)
        self.merge1 = _conv_bn(out_channel, out_channel, leaky=leaky)
        self.merge2 = _conv_bn(out_channel, out_channel, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p1, p2, p3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 and 7x7 receptive fields concatenated."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.conv3X3 = _conv_bn(cin, cout // 2, leaky=None)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, leaky=None)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, leaky=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), c7], dim=1))


class _Head(nn.Module):
    """1x1 conv predicting ``per_anchor`` values for each of 2 anchors per location."""

    def __init__(self, cin: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """RetinaFace network: body -> FPN -> SSH x3 -> class/box/landmark heads."""

    def __init__(self, network: str = "mobilenet0.25") -> None:
        super().__init__()
        network = network_name(network)
        cfg = CONFIGS[network]
        self.network = network
        self.body = MobileNetBody() if network == "mobilenet0.25" else ResNet50Body()
        c, out = cfg["in_channel"], cfg["out_channel"]
        self.fpn = FPN([c * 2, c * 4, c * 8], out)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out, out), SSH(out, out), SSH(out, out)
        self.ClassHead = nn.ModuleList([_Head(out, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw outputs: box deltas (B, P, 4), class logits (B, P, 2), landmark deltas (B, P, 10)."""
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, conf, ldm


def load_weights(model: RetinaFace, source: str | os.PathLike | dict) -> RetinaFace:
    """Load a state dict (file or dict, biubug6 layout) strictly; :class:`WeightsError` if not."""
    what = f"RetinaFace {model.network}"
    return load_strict(model, source, what, layout="biubug6/Pytorch_Retinaface", optional=())


def retinaface(network: str = "mobilenet0.25", weights: Any = None) -> RetinaFace:
    """A RetinaFace of ``network``, loaded from ``weights`` (a state dict or file) when given."""
    net = RetinaFace(network)
    if weights is not None:
        load_weights(net, weights)
    return net


__all__ = [
    "ALIASES",
    "CONFIGS",
    "FPN",
    "MEAN_BGR",
    "SSH",
    "MobileNetBody",
    "ResNet50Body",
    "RetinaFace",
    "WeightsError",
    "load_weights",
    "network_name",
    "retinaface",
]
