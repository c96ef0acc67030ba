"""MTCNN (Zhang et al. 2016): P-Net, R-Net and O-Net with facenet-pytorch's module names, their
released weights and the strict loader. The cascade (pyramid, NMS, refinement) is the backend's."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..weights import load_strict, register_weights

_COMMIT = "787da06156087cd6b616fe6608213722bddc30cd"
_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
for _net, _sha in _SHA256.items():
    register_weights(
        f"mtcnn_{_net}",
        f"https://raw.githubusercontent.com/timesler/facenet-pytorch/{_COMMIT}/data/{_net}.pt",
        _sha,
        filename=f"{_net}.pt",
        description=f"facenet-pytorch MTCNN {_net.upper()} state dict (MIT)",
        licence="MIT",
        colour="RGB",
        mean=(127.5, 127.5, 127.5),  # (x - 127.5) * 0.0078125
        std=(128.0, 128.0, 128.0),
        input_size=None if _net == "pnet" else ((24, 24) if _net == "rnet" else (48, 48)),
    )


class PNet(nn.Module):
    """Proposal network (fully convolutional, 12x12 receptive field, stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(
        self, x: torch.Tensor, valid_hw: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(box regression (N,4,h,w), face probability (N,h,w)).

        ``valid_hw`` (N, 2): each image's own height and width on a padded canvas; conv1
        outputs that touch padding are set to -inf so the ceil-mode max-pool ignores them,
        exactly as it ignores the missing border of an unpadded image.
        """
        x = self.prelu1(self.conv1(x))
        if valid_hw is not None:
            rows = torch.arange(x.shape[2], device=x.device)
            cols = torch.arange(x.shape[3], device=x.device)
            ok = (rows[None, :, None] < (valid_hw[:, 0, None, None] - 2)) & (
                cols[None, None, :] < (valid_hw[:, 1, None, None] - 2)
            )
            x = x.masked_fill(~ok[:, None], float("-inf"))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return self.conv4_2(x), prob


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(box regression (N,4), face probability (N,))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).flatten(1)  # the Caffe weights' (w, h, c) order
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 crops: box regression, 5 landmarks, face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(box regression (N,4), landmarks (N,10) as x1..x5 y1..y5 in [0,1], probability (N,))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


# ---------------------------------------------------------------- box helpers (torch, (N, k))


def load_weights(net: nn.Module, source: str | os.PathLike | dict) -> nn.Module:
    """Load a facenet-pytorch state dict (file or dict) into ``net`` strictly."""
    return load_strict(net, source, f"facenet-pytorch MTCNN {type(net).__name__}", optional=())
