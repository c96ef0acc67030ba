"""OpenCV's res10 face SSD (ResNet-10 body, 300x300 input) as a torch module.

The released file is a TensorFlow graph (``opencv_face_detector_uint8.pb``: weights stored as
uint8) that OpenCV's DNN module runs. :func:`from_opencv` reads it with OpenCV's own importer
(which dequantises the weights), copies every layer's weights into :class:`Res10SSD` (batch
norms and scales folded into the convolutions they follow) and takes the prior boxes from the
graph's own PriorBox layers. Why a second runtime for the same file: on one CPU core torch's
channels-last convolutions run this network in about half of OpenCV DNN's time (20 against
40 ms a 300x300 image), with the same boxes to ~1e-7 of the image side (tested against
OpenCV's forward).

The graph is a pre-activation ResNet: each block's input goes through a batch norm, a scale and
a ReLU (``pre_*``: a per-channel affine here) before both its 3x3 branch and its 1x1 shortcut.
Class scores come out softmaxed; :func:`detect` decodes and suppresses as the graph's
DetectionOutput layer does (centre-size coding, variances 0.1/0.2, confidence > 0.01, top 400,
NMS 0.45, at most 200 boxes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nms import batched_nms
from .retinaface_priors import VARIANCE, decode_boxes

INPUT_SIZE = 300
#: the TF graph's FusedBatchNorm epsilon
BN_EPS = 1.001e-5
#: DetectionOutput's settings in the released graph
CONF_MIN, TOP_K, NMS_IOU, KEEP_TOP_K = 0.01, 400, 0.45, 200


class Affine(nn.Module):
    """``x * weight + bias`` per channel (a folded batch norm and scale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.weight)


def _conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, dil: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, pad, dilation=dil)


class Res10SSD(nn.Module):
    """The res10 SSD: a blob (B, 3, 300, 300) BGR minus the mean in, per prior box out.

    ``forward`` returns ``loc`` (B, P, 4), the encoded offsets, and ``conf`` (B, P), the face
    probability, for the graph's 8,892 prior boxes in its order (see :func:`from_opencv`).
    """

    #: (source feature, priors per location) of each head, in the graph's concat order
    HEADS = (("conv4_3_norm", 128, 4), ("fc7", 256, 6), ("conv6_2", 256, 6),
             ("conv7_2", 128, 6), ("conv8_2", 128, 4), ("conv9_2", 128, 4))  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.data = Affine(3)
        self.conv1 = _conv(3, 32, 7, 2, 3)
        self.b64_conv1, self.b64_conv2 = _conv(32, 32, 3, 1, 1), _conv(32, 32, 3, 1, 1)
        self.pre128 = Affine(32)
        self.b128_conv1, self.b128_conv2 = _conv(32, 128, 3, 2, 1), _conv(128, 128, 3, 1, 1)
        self.b128_expand = _conv(32, 128, 1, 2)
        self.pre256 = Affine(128)
        self.b256_conv1, self.b256_conv2 = _conv(128, 256, 3, 2, 1), _conv(256, 256, 3, 1, 1)
        self.b256_expand = _conv(128, 256, 1, 2)
        self.norm4_3 = Affine(128)  # the L2 normalisation's learnt scale
        self.pre512 = Affine(256)
        self.b512_conv1 = _conv(256, 128, 3, 1, 1)
        self.b512_conv2 = _conv(128, 256, 3, 1, 2, dil=2)
        self.b512_expand = _conv(256, 256, 1)
        self.last = Affine(256)
        self.conv6_1, self.conv6_2 = _conv(256, 128, 1), _conv(128, 256, 3, 2, 1)
        self.conv7_1, self.conv7_2 = _conv(256, 64, 1), _conv(64, 128, 3, 2, 1)
        self.conv8_1, self.conv8_2 = _conv(128, 64, 1), _conv(64, 128, 3, 1, 1)
        self.conv9_1, self.conv9_2 = _conv(128, 64, 1), _conv(64, 128, 3, 1, 1)
        self.loc = nn.ModuleList(_conv(c, 4 * n, 3, 1, 1) for _, c, n in self.HEADS)
        self.conf = nn.ModuleList(_conv(c, 2 * n, 3, 1, 1) for _, c, n in self.HEADS)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six feature maps the heads read, from a mean-subtracted BGR blob."""
        relu = F.relu
        # TF's SAME max pool pads at the end only: ceil mode takes the same windows
        x = F.max_pool2d(relu(self.conv1(self.data(x))), 3, 2, ceil_mode=True)
        x = x + self.b64_conv2(relu(self.b64_conv1(x)))
        y = relu(self.pre128(x))
        x = self.b128_conv2(relu(self.b128_conv1(y))) + self.b128_expand(y)
        y = relu(self.pre256(x))
        conv4_3 = self.norm4_3(F.normalize(y, dim=1, eps=1e-12))
        x = self.b256_conv2(relu(self.b256_conv1(y))) + self.b256_expand(y)
        y = relu(self.pre512(x))
        x = self.b512_conv2(relu(self.b512_conv1(y))) + self.b512_expand(y)
        fc7 = relu(self.last(x))
        c6 = relu(self.conv6_2(relu(self.conv6_1(fc7))))
        c7 = relu(self.conv7_2(relu(self.conv7_1(c6))))
        c8 = relu(self.conv8_2(relu(self.conv8_1(c7))))
        c9 = relu(self.conv9_2(relu(self.conv9_1(c8))))
        return [conv4_3, fc7, c6, c7, c8, c9]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        n = len(x)

        def flat(heads: nn.ModuleList, k: int) -> torch.Tensor:
            # the graph flattens each head in NHWC order
            outs = [
                h(f).permute(0, 2, 3, 1).reshape(n, -1, k)
                for h, f in zip(heads, feats, strict=True)
            ]
            return torch.cat(outs, 1)

        loc, conf = flat(self.loc, 4), flat(self.conf, 2)
        return loc, conf.softmax(-1)[..., 1]


def _blobs(net: Any, name: str) -> list[np.ndarray]:
    return [np.asarray(b, np.float32) for b in net.getLayer(net.getLayerId(name)).blobs]


def _affine(net: Any, bn: str | None, scale: str | None, channels: int) -> tuple[np.ndarray, ...]:
    """(a, b) of ``x * a + b`` for a FusedBatchNorm followed by a Mul/BiasAdd scale."""
    a, b = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    if bn is not None:
        mean, var, gamma, beta = (v.reshape(-1) for v in _blobs(net, bn))
        a = gamma / np.sqrt(var + BN_EPS)
        b = beta - mean * a
    if scale is not None:
        (m,), (c,) = _blobs(net, f"{scale}/Mul"), _blobs(net, f"{scale}/BiasAdd")
        a, b = a * m.reshape(-1), b * m.reshape(-1) + c.reshape(-1)
    return a, b


def _set_affine(mod: Affine, ab: tuple[np.ndarray, ...]) -> None:
    mod.weight.data = torch.from_numpy(ab[0]).view(1, -1, 1, 1).clone()
    mod.bias.data = torch.from_numpy(ab[1]).view(1, -1, 1, 1).clone()


def _set_conv(conv: nn.Conv2d, net: Any, name: str, after: tuple[np.ndarray, ...] | None = None):
    """A graph convolution's weights (and bias, zero if it has none), with a per-channel
    affine that follows it folded in."""
    blobs = _blobs(net, name)
    w = blobs[0]
    b = blobs[1].reshape(-1) if len(blobs) > 1 else np.zeros(w.shape[0], np.float32)
    if tuple(w.shape) != tuple(conv.weight.shape):
        raise ValueError(f"{name}: weights {w.shape}, expected {tuple(conv.weight.shape)}")
    if after is not None:
        w, b = w * after[0][:, None, None, None], b * after[0] + after[1]
    conv.weight.data = torch.from_numpy(np.ascontiguousarray(w, np.float32))
    conv.bias.data = torch.from_numpy(np.ascontiguousarray(b, np.float32))


#: module attribute -> (graph convolution, the batch norm and scale folded after it)
_CONVS = {
    "conv1": ("conv1_h/Conv2D", ("conv1_bn_h/FusedBatchNorm", "conv1_scale_h")),
    "b64_conv1": ("layer_64_1_conv1_h/Conv2D", (None, "layer_64_1_scale2_h")),
    "b64_conv2": ("layer_64_1_conv2_h/Conv2D", None),
    "b128_conv1": ("layer_128_1_conv1_h/Conv2D", (None, "layer_128_1_scale2")),
    "b128_conv2": ("layer_128_1_conv2/Conv2D", None),
    "b128_expand": ("layer_128_1_conv_expand_h/Conv2D", None),
    "b256_conv1": ("layer_256_1_conv1/Conv2D", (None, "layer_256_1_scale2")),
    "b256_conv2": ("layer_256_1_conv2/Conv2D", None),
    "b256_expand": ("layer_256_1_conv_expand/Conv2D", None),
    "b512_conv1": ("layer_512_1_conv1_h/Conv2D", (None, "layer_512_1_scale2_h")),
    "b512_conv2": ("layer_512_1_conv2_h/convolution", None),
    "b512_expand": ("layer_512_1_conv_expand_h/Conv2D", None),
    **{f"conv{i}_{j}": (f"conv{i}_{j}_h/Conv2D", None) for i in (6, 7, 8, 9) for j in (1, 2)},
}
#: module attribute -> (batch norm, scale) of each per-channel affine
_AFFINES = {
    "data": ("data_bn/FusedBatchNorm", "data_scale"),
    "pre128": ("layer_128_1_bn1_h/FusedBatchNorm", "layer_128_1_scale1_h"),
    "pre256": ("layer_256_1_bn1/FusedBatchNorm", "layer_256_1_scale1"),
    "pre512": ("layer_512_1_bn1/FusedBatchNorm", "layer_512_1_scale1"),
    "last": ("last_bn_h/FusedBatchNorm", "last_scale_h"),
}
_HEAD_NAMES = ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")


def from_opencv(model: str, config: str) -> tuple[Res10SSD, torch.Tensor]:
    """The network and its prior boxes (P, 4: cx cy w h in units of the input side) read from
    the released TensorFlow graph ``model`` with its text ``config``."""
    import cv2

    net = cv2.dnn.readNetFromTensorflow(str(model), str(config))
    ssd = Res10SSD()
    for attr, (bn, scale) in _AFFINES.items():
        mod = getattr(ssd, attr)
        _set_affine(mod, _affine(net, bn, scale, mod.weight.shape[1]))
    for attr, (name, after) in _CONVS.items():
        conv = getattr(ssd, attr)
        _set_conv(
            conv, net, name, None if after is None else _affine(net, *after, conv.out_channels)
        )
    (m,) = _blobs(net, "conv4_3_norm/mul_1")
    _set_affine(ssd.norm4_3, (m.reshape(-1), np.zeros(m.size, np.float32)))
    for i, head in enumerate(_HEAD_NAMES):
        _set_conv(ssd.loc[i], net, f"{head}_mbox_loc/Conv2D")
        _set_conv(ssd.conf[i], net, f"{head}_mbox_conf/Conv2D")
    net.setInput(np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32))
    corners, variances = net.forward("mbox_priorbox").reshape(2, -1, 4)
    # the graph's coder is SSD's centre-size one, which RetinaFace's decode_boxes implements
    # with these variances (checked: a graph with others would be decoded wrongly)
    want = [VARIANCE[0], VARIANCE[0], VARIANCE[1], VARIANCE[1]]
    if not np.allclose(variances, want):
        raise ValueError(f"{model}: prior variances {np.unique(variances)}, expected {want}")
    c = torch.from_numpy(corners.astype(np.float32))
    return ssd.eval(), torch.cat([(c[:, :2] + c[:, 2:]) / 2, c[:, 2:] - c[:, :2]], 1)


def detect(
    loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor, score_threshold: float = CONF_MIN
) -> list[np.ndarray]:
    """Each image's detections (K, 5: x1 y1 x2 y2 normalised, score) as the graph's
    DetectionOutput gives them (scores above 0.01, the best 400 of them suppressed at IoU 0.45,
    at most 200 kept, by decreasing score), those scored under ``score_threshold`` left out."""
    out = []
    for lo, sc in zip(loc, conf, strict=True):
        # suppressing only the boxes over the caller's threshold keeps the same of them: a box
        # is suppressed only by better-scored ones
        keep = torch.nonzero((sc > CONF_MIN) & (sc >= score_threshold)).flatten()
        if len(keep) > TOP_K:
            keep = keep[torch.topk(sc[keep], TOP_K).indices]
        boxes, s = decode_boxes(lo[keep], priors[keep]), sc[keep]
        kept = batched_nms(boxes, s, torch.zeros_like(s, dtype=torch.long), NMS_IOU)[:KEEP_TOP_K]
        out.append(torch.cat([boxes[kept], s[kept, None]], 1).cpu().numpy())
    return out
