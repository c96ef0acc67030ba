"""The BiSeNet being trained: its initialisation, the three-head training forward (wrapped as a
module for DDP), face-parsing.PyTorch's optimiser groups, and reloading/exporting the result.

The network and its strict loader are :mod:`faceetl.nets.bisenet`'s, so checkpoints load into
the ``parsing`` predictor."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...nets.bisenet import build_bisenet, load_bisenet
from ...weights import WeightsError, load_state_dict, load_strict
from ..common import checkpoint_file, device_for, save
from .data import N_CLASSES


def build_model(init: str | os.PathLike | Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A BiSeNet (the parsing predictor's module and key layout) ready for training.

    Without ``init``: the convolutions outside the ResNet-18 get face-parsing.PyTorch's
    ``kaiming_normal_(a=1)``, the ResNet-18 torch's default initialisation (the published model
    starts from ImageNet weights, which faceetl does not ship). ``init`` is a state dict or a
    file: a whole BiSeNet (keys ``cp.resnet...``, e.g. ``79999_iter.pth`` or a checkpoint of
    :func:`train`) or a ResNet-18 with torchvision's names (``conv1.weight`` ..., ``fc.*``
    ignored), loaded into the context path's backbone.
    """
    net = build_bisenet(N_CLASSES)
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and not name.startswith("cp.resnet."):
            nn.init.kaiming_normal_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if init is None:
        return net
    if isinstance(init, (str, os.PathLike)):
        sd = load_state_dict(init)
    else:
        sd = {k.removeprefix("module."): v for k, v in init.items()}
    if any(k.startswith("cp.resnet.") for k in sd):
        target, module = "BiSeNet", net
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        target, module = "ResNet-18 backbone", net.cp.resnet
    try:
        load_strict(module, sd, target)
    except WeightsError as e:
        raise ValueError(f"init weights do not fit the {target}: {e}") from e
    return net


def forward_heads(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(main, aux16, aux32)`` logits of BiSeNet at the input resolution (training forward)."""
    feat8, cp8, cp16 = net.cp(x)
    outs = (net.conv_out(net.ffm(feat8, cp8)), net.conv_out16(cp8), net.conv_out32(cp16))
    size = x.shape[2:]
    return tuple(F.interpolate(o, size, mode="bilinear", align_corners=True) for o in outs)


class TrainingHeads(nn.Module):
    """``net`` whose forward is :func:`forward_heads` (what DDP wraps: every head trains)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return forward_heads(self.net, x)


_HEADS = ("ffm", "conv_out", "conv_out16", "conv_out32")


def param_groups(net: nn.Module, weight_decay: float = 5e-4) -> list[dict[str, Any]]:
    """face-parsing.PyTorch's four SGD groups: (no) weight decay x (1x / 10x learning rate).

    Conv/linear weights decay, biases and BatchNorm parameters do not; the feature fusion
    module and the three output heads learn 10x faster (``lr_mul``).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (d, m): [] for d in (True, False) for m in (False, True)
    }
    for name, module in net.named_modules():
        mul = name.split(".", 1)[0] in _HEADS
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            groups[(True, mul)].append(module.weight)
            if module.bias is not None:
                groups[(False, mul)].append(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            groups[(False, mul)] += list(module.parameters(recurse=False))
    n = sum(len(v) for v in groups.values())
    if n != len(list(net.parameters())):
        raise RuntimeError("param_groups: some parameters belong to no group")
    return [
        {"params": groups[(True, False)], "weight_decay": weight_decay, "lr_mul": 1.0},
        {"params": groups[(False, False)], "weight_decay": 0.0, "lr_mul": 1.0},
        {"params": groups[(True, True)], "weight_decay": weight_decay, "lr_mul": 10.0},
        {"params": groups[(False, True)], "weight_decay": 0.0, "lr_mul": 10.0},
    ]


def load_model(
    checkpoint: str | os.PathLike, device: str | torch.device | None = "cpu"
) -> nn.Module:
    """The BiSeNet of a checkpoint file or folder (its ``last.pt``), or of a bare state dict."""
    net = load_bisenet(checkpoint_file(checkpoint))
    return net.to(device_for(device)).eval()


def export_weights(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the bare state dict of a checkpoint (the layout of ``79999_iter.pth``) to ``path``."""
    net = load_model(checkpoint)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(net.state_dict(), out)
    return out


__all__ = [
    "TrainingHeads",
    "build_model",
    "export_weights",
    "forward_heads",
    "load_model",
    "param_groups",
]
