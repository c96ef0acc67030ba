"""Face parsing: BiSeNet trained on CelebAMask-HQ (zllrunning/face-parsing.PyTorch), 19 classes.

The network is written here with the module names of the official ``model.py``/``resnet.py`` so
the released ``79999_iter.pth`` loads with ``strict=True``: a ResNet-18 context path with two
attention-refinement modules, the 1/8 ResNet feature in place of the spatial path, a feature
fusion module and three output heads (``conv_out`` is the main one; ``conv_out16``/``conv_out32``
were auxiliary training heads, loaded but not run). Inputs are prepared as the repository's
``test.py`` does: 512x512 (PIL bilinear), ``ToTensor``, ImageNet mean/std; the label of a pixel is
the argmax of the main head.

Crop geometry: the model was trained on CelebAMask-HQ images, which show the whole head (hair,
ears, neck, some shoulders). A dlib face chip of 512 px with padding 0.75 keeps the top of the head,
both ears and the neck on typical photos; padding ~0.62 reproduces the face scale of the repo's
sample ``makeup/116_ori.png`` but cuts the top of the hair of many faces (see the module tests).
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from ..align import AlignSpec
from ..weights import WeightsError, fetch, load_state_dict, register_weights, sha256sum
from .base import default_device, register_predictor

log = logging.getLogger(__name__)

#: the 19 CelebAMask-HQ labels in the model's output order (index = label value in the mask)
parsing_classes: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
N_CLASSES = len(parsing_classes)
INPUT_SIZE = 512
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
#: default crop: a 512 px dlib face chip, loose enough for hair, ears and neck
DEFAULT_PADDING = 0.75

WEIGHTS_NAME = "parsing_bisenet"
WEIGHTS_FILE = "79999_iter.pth"
# The official file is a Google Drive download (id 154JgKpzCPW82qINcVieuPH3fZ2e0P812, linked from
# the repository README). This is a commit-pinned Hugging Face mirror of it (used by MuseTalk's
# download script); the sha256 and size (53,289,463 bytes) are pinned by several public projects
# for 79999_iter.pth, and the same hash is that of CodeFormer/facexlib's parsing_bisenet.pth.
register_weights(
    WEIGHTS_NAME,
    "https://huggingface.co/ManyOtherFunctions/face-parse-bisent/resolve/"
    "0073b233a5a3c4b1377d4dbf49245017938a72b5/79999_iter.pth",
    "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
    WEIGHTS_FILE,
    "BiSeNet face parsing (CelebAMask-HQ, 19 classes), zllrunning/face-parsing.PyTorch",
)

# a fixed palette for colorize(): background black, then one distinct colour per class
_PALETTE = np.array(
    [
        (0, 0, 0),  # background
        (230, 180, 150),  # skin
        (120, 60, 20),  # l_brow
        (160, 90, 40),  # r_brow
        (0, 200, 255),  # l_eye
        (0, 120, 255),  # r_eye
        (200, 200, 200),  # eye_g
        (255, 140, 0),  # l_ear
        (255, 200, 0),  # r_ear
        (255, 0, 255),  # ear_r
        (0, 255, 0),  # nose
        (255, 255, 255),  # mouth
        (220, 20, 60),  # u_lip
        (150, 0, 40),  # l_lip
        (255, 220, 180),  # neck
        (180, 0, 255),  # neck_l
        (0, 90, 160),  # cloth
        (90, 50, 20),  # hair
        (100, 100, 0),  # hat
    ],
    np.uint8,
)


def preprocess(crops: list[np.ndarray]) -> np.ndarray:
    """(N, 3, 512, 512) float32 network input from RGB uint8 crops, as the repo's test.py."""
    out = np.empty((len(crops), 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    for i, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
            raise ValueError(f"crops must be RGB uint8 (H, W, 3), got {crop.dtype} {crop.shape}")
        if crop.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            im = Image.fromarray(crop).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
            crop = np.asarray(im)
        x = crop.astype(np.float32) / 255.0
        out[i] = ((x - MEAN) / STD).transpose(2, 0, 1)
    return out


def class_fractions(mask: np.ndarray) -> np.ndarray:
    """(19,) float32 share of the mask's pixels in each class (sums to 1)."""
    counts = np.bincount(np.asarray(mask, np.uint8).ravel(), minlength=N_CLASSES)[:N_CLASSES]
    return (counts / max(mask.size, 1)).astype(np.float32)


def encode_mask(mask: np.ndarray) -> bytes:
    """Lossless 8-bit grayscale PNG bytes of a (H, W) uint8 label mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a label mask is (H, W) uint8, got {mask.dtype} {mask.shape}")
    ok, buf = cv2.imencode(".png", mask)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_mask(data: bytes) -> np.ndarray:
    """The (H, W) uint8 label mask of a ``parsing_mask`` cell."""
    a = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None or a.ndim != 2:
        raise ValueError("not a single-channel PNG label mask")
    return a


def colorize(mask: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) picture of a label mask (or ``parsing_mask`` PNG bytes), for notebooks."""
    if isinstance(mask, (bytes, bytearray, memoryview)):
        mask = decode_mask(bytes(mask))
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a label mask is (H, W), got shape {mask.shape}")
    return _PALETTE[np.clip(mask, 0, N_CLASSES - 1).astype(np.intp)]


def build_bisenet(n_classes: int = N_CLASSES) -> Any:
    """BiSeNet (torch module) with the official module names; untrained."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class ConvBNReLU(nn.Module):
        def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class BasicBlock(nn.Module):
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

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    class Resnet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = stage(64, 64, 1)
            self.layer2 = stage(64, 128, 2)
            self.layer3 = stage(128, 256, 2)
            self.layer4 = stage(256, 512, 2)

        def forward(self, x):
            x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
            feat8 = self.layer2(self.layer1(x))
            feat16 = self.layer3(feat8)
            return feat8, feat16, self.layer4(feat16)

    class AttentionRefinement(nn.Module):
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
        def __init__(self, cin: int, mid: int, n: int):
            super().__init__()
            self.conv = ConvBNReLU(cin, mid, 3, 1, 1)
            self.conv_out = nn.Conv2d(mid, n, 1, bias=False)

        def forward(self, x):
            return self.conv_out(self.conv(x))

    class BiSeNet(nn.Module):
        """Main-head logits at the input resolution (the auxiliary heads are not run)."""

        def __init__(self, n: int):
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

    return BiSeNet(n_classes)


def load_bisenet(path: str | os.PathLike) -> Any:
    """BiSeNet with the weights of ``path`` (the official key layout), in eval mode.

    Raises :class:`WeightsError` naming the missing, unexpected or mis-shaped keys when the file
    is not a face-parsing.PyTorch BiSeNet state dict.
    """
    sd = load_state_dict(path)
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    net = build_bisenet()
    own = net.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(sd) - optional)
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(sd[k].shape)} != model {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

        parts = [
            f"{name}: {few(keys)}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if keys
        ]
        raise WeightsError(
            f"{path} is not a face-parsing.PyTorch BiSeNet (19-class {WEIGHTS_FILE}) state dict; "
            + "; ".join(parts)
        )
    # a plain dict carries no version metadata, so BatchNorm fills a missing num_batches_tracked
    net.load_state_dict(sd, strict=True)
    return net.eval()


@register_predictor("parsing", gpu=True)
class ParsingPredictor:
    """BiSeNet face parsing: a 512x512 label mask and per-class pixel fractions per face."""

    name = "parsing"
    align: ClassVar[AlignSpec | None] = AlignSpec("dlib", INPUT_SIZE, DEFAULT_PADDING)
    columns: ClassVar[dict[str, Any]] = {
        "parsing_mask": pd.ArrowDtype(pa.binary()),
        "parsing_fractions": pd.ArrowDtype(pa.list_(pa.float32())),
    }
    classes: ClassVar[tuple[str, ...]] = parsing_classes

    def __init__(
        self,
        *,
        device: str | None = None,
        padding: float = DEFAULT_PADDING,
        weights: str | os.PathLike | None = None,
    ) -> None:
        """``padding``: dlib-chip padding of the 512 px crop; ``weights``: a local file to use
        instead of the registered (hash-checked) ``79999_iter.pth``."""
        import torch

        self.device = default_device(device)
        self.padding = float(padding)
        if self.padding != DEFAULT_PADDING:
            self.align = AlignSpec("dlib", INPUT_SIZE, self.padding)  # instance override
        path = fetch(WEIGHTS_NAME) if weights is None else os.fspath(weights)
        self.weights_file = os.path.basename(path)
        self.sha256 = sha256sum(path)
        self.net = load_bisenet(path).to(self.device)
        self._torch = torch
        log.debug("parsing: BiSeNet loaded from %s on %s", path, self.device)

    def masks(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, 512, 512) uint8 label masks of RGB uint8 crops."""
        torch = self._torch
        if not crops:
            return np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
        x = torch.from_numpy(preprocess(crops)).to(self.device)
        cuda = self.device.startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=cuda):
            labels = self.net(x).argmax(dim=1)
        return labels.to(torch.uint8).cpu().numpy()

    def predict_batch(self, crops: list[np.ndarray]) -> dict[str, list]:
        masks = self.masks(crops)
        return {
            "parsing_mask": [encode_mask(m) for m in masks],
            "parsing_fractions": [class_fractions(m).tolist() for m in masks],
        }

    def provenance(self) -> dict[str, Any]:
        a = self.align
        return {
            "model": "parsing",
            "arch": "BiSeNet ResNet-18 (zllrunning/face-parsing.PyTorch), CelebAMask-HQ",
            "classes": list(parsing_classes),
            "input_size": INPUT_SIZE,
            "align": {"template": a.template, "size": a.size, "padding": a.padding},
            "device": self.device,
            "weights": {self.weights_file: self.sha256},
        }
