"""RetinaFace (Deng et al. 2019) in torch, loading the biubug6/Pytorch_Retinaface weights.

Two bodies: MobileNet-0.25 (default, ``mobilenet0.25_Final.pth``) and ResNet-50
(``Resnet50_Final.pth``). Module names follow the released state dicts so they load with
``strict=True``. Images of mixed sizes run as one batch on a shared canvas padded with the
training mean colour (zeros after mean subtraction, like the convolutions' own zero padding);
detections centred in another image's padding are dropped and boxes map back to input pixels.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceetl.backends.base import Detections, box_iou, register_backend
from faceetl.nets import ResNet
from faceetl.ops import batched_nms
from faceetl.weights import (
    WeightsError,
    fetch,
    load_state_dict,
    register_weights,
    sha256sum,
    weights_info,
)

log = logging.getLogger(__name__)

MOBILENET_WEIGHTS = "retinaface_mobilenet0.25"
RESNET50_WEIGHTS = "retinaface_resnet50"

register_weights(
    MOBILENET_WEIGHTS,
    "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
    "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
    "mobilenet0.25_Final.pth",
    "RetinaFace MobileNet-0.25 (biubug6/Pytorch_Retinaface release, MIT)",
)
register_weights(
    RESNET50_WEIGHTS,
    "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
    "Resnet50_Final.pth",
    "RetinaFace ResNet-50 (biubug6/Pytorch_Retinaface release, MIT; 109497761 bytes)",
)

#: per-body settings of the released models (biubug6 cfg_mnet / cfg_re50)
CONFIGS: dict[str, dict[str, Any]] = {
    "mobilenet0.25": {"in_channel": 32, "out_channel": 64, "weights": MOBILENET_WEIGHTS},
    "resnet50": {"in_channel": 256, "out_channel": 256, "weights": RESNET50_WEIGHTS},
}
_ALIASES = {"mobile0.25": "mobilenet0.25", "mobilenet": "mobilenet0.25", "resnet": "resnet50"}
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
MEAN_BGR = (104, 117, 123)
LARGE_FACE = 400  # network pixels: faces beyond the largest anchors (512) come out doubled
REDETECT_SIDE = 256  # ... so they are detected again with the largest face at this size
MIN_REDETECTED = 64  # faces the second pass finds at least this large replace the first's


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
        cfg = CONFIGS[network]
        self.body = MobileNetBody() if network == "mobilenet0.25" else ResNet50Body()
        c, out = cfg["in_channel"], cfg["out_channel"]
        self.fpn = FPN([c * 2, c * 4, c * 8], out)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out, out), SSH(out, out), SSH(out, out)
        self.ClassHead = nn.ModuleList([_Head(out, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(out, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(out, 10) for _ in range(3)])

        # valid (h, w) of each image on a padded canvas; None: every image fills the canvas
        self._valid: torch.Tensor | None = None
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self._canvas: tuple[int, int] = (0, 0)
        # the mask state lives on the module: one forward at a time per model
        self._lock = threading.Lock()
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1:
                m.register_forward_pre_hook(self._mask_padding)

    def _mask_padding(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
        """Zero the features outside each image's own area before a spatial conv.

        A conv on a zero-padded canvas then computes, inside each image, exactly what it
        computes on the image alone (whose borders the conv pads with zeros): padding an image
        into a batch does not change its detections.
        """
        if self._valid is None:
            return None
        x = args[0]
        h, w = x.shape[-2:]
        mask = self._masks.get((h, w))
        if mask is None:
            # feature stride relative to the (multiple of 32) canvas
            vh = torch.ceil(self._valid[:, 0] / round(self._canvas[0] / h))
            vw = torch.ceil(self._valid[:, 1] / round(self._canvas[1] / w))
            rows = torch.arange(h, device=x.device)[None, :, None] < vh[:, None, None]
            cols = torch.arange(w, device=x.device)[None, None, :] < vw[:, None, None]
            mask = (rows & cols)[:, None].to(x.dtype)
            self._masks[(h, w)] = mask
        return (x * mask.to(x.dtype),)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(box deltas (B,P,4), face probability softmax (B,P,2), landmark deltas (B,P,10)).

        ``valid`` (B, 2): the height and width of each image placed top-left on the canvas
        ``x`` (zeros elsewhere); features outside them are kept at zero (see ``_mask_padding``).
        """
        with self._lock:
            self._valid = None if valid is None else valid.to(x.device, torch.float32)
            self._canvas = (int(x.shape[-2]), int(x.shape[-1]))
            self._masks = {}
            try:
                return self._forward(x)
            finally:
                self._valid, self._masks = None, {}

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, F.softmax(conf, dim=-1), ldm


# ----------------------------------------------------------------------------- anchors


def priors_for(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Anchors (P, 4) as cx, cy, w, h in canvas PIXELS, in the order of the heads' outputs."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy, cx = torch.meshgrid(
            (torch.arange(fh, dtype=torch.float32) + 0.5) * step,
            (torch.arange(fw, dtype=torch.float32) + 0.5) * step,
            indexing="ij",
        )
        per = []
        for s in sizes:
            wh = torch.full_like(cx, float(s))
            per.append(torch.stack([cx, cy, wh, wh], dim=-1))
        out.append(torch.stack(per, dim=2).reshape(-1, 4))  # (fh, fw, anchors, 4)
    return torch.cat(out).to(device)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Box deltas -> x1 y1 x2 y2 (same units as ``priors``)."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Landmark deltas (N, 10) -> points (N, 5, 2) (same units as ``priors``)."""
    pts = pre.reshape(-1, 5, 2)
    return priors[:, None, :2] + pts * VARIANCE[0] * priors[:, None, 2:]


# ----------------------------------------------------------------------------- loading


def load_weights(model: nn.Module, path: str | Path, network: str) -> None:
    """Load a state dict strictly; a clear :class:`WeightsError` when it does not fit."""
    try:
        sd = load_state_dict(path)
    except Exception as e:
        raise WeightsError(f"cannot read RetinaFace weights {path}: {e}") from e
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise WeightsError(
            f"{path} is not a RetinaFace {network} state dict (biubug6/Pytorch_Retinaface layout): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(shapes)} shape mismatches {shapes[:3]}"
        )
    model.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------- backend

#: canvases are padded to a multiple of the coarsest feature stride
CANVAS_MULTIPLE = 32


def _valid_priors(height: int, width: int, canvas: tuple[int, int]) -> np.ndarray:
    """Bool (P,) over the canvas priors: those of the feature cells an image of this size has.

    These are exactly the priors the image gets when run alone, in the same order.
    """
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        fh, fw = math.ceil(canvas[0] / step), math.ceil(canvas[1] / step)
        cell = np.zeros((fh, fw, len(sizes)), bool)
        cell[: math.ceil(height / step), : math.ceil(width / step)] = True
        out.append(cell.ravel())
    return np.concatenate(out)


@register_backend("retinaface", workers=2, gpu=True)
class RetinaFaceDetector:
    """RetinaFace face detector with 5 landmarks, batched over mixed-size images."""

    name = "retinaface"

    def __init__(
        self,
        *,
        network: str = "mobilenet0.25",
        conf_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        top_k: int = 5000,
        keep_top_k: int = 750,
        max_size: int | None = 2048,
        large_face_pass: bool = True,
        exact_padding: bool = True,
        batch_pixels: int | None = None,
        pad_waste: float = 1.5,
        device: str | None = None,
        half: bool = True,
        weights: str | None = None,
        runtime: str = "torch",
    ) -> None:
        """Build and load the network.

        ``conf_threshold=0.02`` is the WIDER FACE evaluation setting. ``max_size`` caps the
        longest side (images are downscaled, boxes still come back in input pixels); ``None``
        runs every image at its original scale. ``large_face_pass``: RetinaFace finds faces
        larger than its largest anchors (512 px) twice, the second box shifted; where a face
        that large is found, the image is detected again downscaled so that face is 256 px, and
        the faces found there replace those they overlap (``False``: the reference pipeline's
        output as it is). Mixed-size images share a zero-padded canvas;
        with ``exact_padding`` the padding is kept out of every image's features so that an
        image gives the same detections alone or in any batch (``False``: a little faster,
        faces at the right/bottom edges may move). A batch is split into several canvases where
        one canvas (batch x height x width) would exceed ``batch_pixels`` or the canvases would
        hold more than ``pad_waste`` times the images' own pixels. ``batch_pixels=None`` picks
        16M on CUDA and 0 on CPU (each image runs alone: measured faster on CPU than padded
        batches); ``pad_waste=inf`` with a large ``batch_pixels`` gives one canvas per batch. ``weights``
        is an optional local state-dict path used instead of the registered release file.
        ``half`` enables fp16 autocast on CUDA.

        ``runtime="onnx"`` runs the network in onnxruntime (CUDAExecutionProvider first when
        available) on a graph exported once into ``$FACEETL_HOME/onnx`` (keyed by the weights'
        sha256, the network and the opset); priors, decoding, NMS and the large-face pass are
        the same code. The graph cannot mask padding, so with ``exact_padding`` every image runs
        alone (a batch of one); without it mixed sizes share the mean-colour canvas unmasked.
        """
        network = _ALIASES.get(network, network)
        if network not in CONFIGS:
            raise ValueError(
                f"unknown RetinaFace network {network!r}; choose one of {sorted(CONFIGS)}"
            )
        if max_size is not None and max_size < 32:
            raise ValueError("max_size must be >= 32 or None")
        self.network = network
        self.conf_threshold = float(conf_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.keep_top_k = int(keep_top_k)
        self.max_size = None if max_size is None else int(max_size)
        self.large_face_pass = bool(large_face_pass)
        self.exact_padding = bool(exact_padding)
        self.pad_waste = float(pad_waste)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if batch_pixels is None:
            batch_pixels = 16_000_000 if self.device.type == "cuda" else 0
        self.batch_pixels = int(batch_pixels)
        if runtime not in ("torch", "onnx"):
            raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
        self.runtime = runtime
        self.half = bool(half) and self.device.type == "cuda" and runtime == "torch"

        if weights is None:
            info = weights_info(CONFIGS[network]["weights"])
            path = fetch(info.name)
            self._weights = {info.filename: info.sha256}
        else:
            path = Path(weights)
            if not path.is_file():
                raise WeightsError(f"RetinaFace weights file {path} does not exist")
            self._weights = {path.name: sha256sum(path)}
        self.model = RetinaFace(network)
        load_weights(self.model, path, network)
        self.model.eval()
        self._session: Any = None
        if runtime == "onnx":
            from faceetl.export import onnx_session, retinaface_onnx_cached

            sha = next(iter(self._weights.values()))
            onnx_path = retinaface_onnx_cached(self.model, network, sha)
            self._session = onnx_session(onnx_path, device)
        self.model.to(self.device)
        self._mean = torch.tensor(MEAN_BGR, dtype=torch.float32, device=self.device).view(
            1, 3, 1, 1
        )
        self._priors: dict[tuple[int, int], torch.Tensor] = {}
        log.debug("RetinaFace %s loaded on %s", network, self.device)

    # -- helpers

    def _scale_for(self, h: int, w: int) -> float:
        if self.max_size is None or max(h, w) <= self.max_size:
            return 1.0
        return self.max_size / max(h, w)

    def _priors_for(self, h: int, w: int) -> torch.Tensor:
        key = (h, w)
        if key not in self._priors:
            if len(self._priors) > 32:
                self._priors.clear()
            self._priors[key] = priors_for(h, w, self.device)
        return self._priors[key]

    @staticmethod
    def _canvas(shapes: list[tuple[int, int]]) -> tuple[int, int]:
        if len(shapes) == 1:  # alone: no padding at all, as the reference pipeline runs
            return shapes[0]
        m = CANVAS_MULTIPLE
        return (-(-max(h for h, _ in shapes) // m) * m, -(-max(w for _, w in shapes) // m) * m)

    def _groups(self, shapes: list[tuple[int, int]]) -> list[list[int]]:
        """Indices of the images that share one canvas (sorted by size, bounded padding)."""
        order = sorted(range(len(shapes)), key=lambda i: (shapes[i][0] * shapes[i][1], shapes[i]))
        if self._session is not None and self.exact_padding:  # onnx cannot mask: one by one
            return [[i] for i in order]
        groups: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            cand = cur + [i]
            ch, cw = self._canvas([shapes[j] for j in cand])
            total = ch * cw * len(cand)
            own = sum(shapes[j][0] * shapes[j][1] for j in cand)
            too_big = total > self.batch_pixels
            if cur and (too_big or total > self.pad_waste * own):
                groups.append(cur)
                cand = [i]
            cur = cand
        groups.append(cur)
        return groups

    # -- the Detector protocol

    @torch.inference_mode()
    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """One :class:`Detections` per RGB uint8 image (boxes, scores, 5 landmarks in input pixels)."""
        scaled, scales = [], []
        for img in images:
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}"
                )
            s = self._scale_for(*img.shape[:2])
            if s != 1.0:
                size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
                img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            scaled.append(img)
            scales.append(s)
        if not images:
            return []
        out: list[Detections | None] = [None] * len(images)
        for group in self._groups([img.shape[:2] for img in scaled]):
            dets = self._detect_canvas([scaled[i] for i in group])
            for i, det in zip(group, dets, strict=True):
                det = Detections(det.boxes / scales[i], det.scores, det.landmarks / scales[i])
                det = det.clip(images[i].shape[1], images[i].shape[0])
                if self.large_face_pass:
                    det = self._redetect_large(images[i], det, scales[i])
                out[i] = det
        return out  # type: ignore[return-value]

    def _detect_canvas(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections (in the given images' pixels, unclipped) from one forward pass."""
        shapes = [img.shape[:2] for img in images]
        ch, cw = self._canvas(shapes)
        # canvas in BGR filled with the training mean: zeros once the mean is subtracted
        canvas = np.empty((len(images), ch, cw, 3), np.uint8)
        canvas[...] = np.array(MEAN_BGR, np.uint8)
        for k, img in enumerate(images):
            canvas[k, : img.shape[0], : img.shape[1]] = img[:, :, ::-1]
        x = torch.from_numpy(canvas).to(self.device, non_blocking=True)
        x = (x.permute(0, 3, 1, 2).float() - self._mean).contiguous()
        padded = any(s != (ch, cw) for s in shapes)
        valid = torch.tensor(shapes) if padded and self.exact_padding else None
        if self._session is not None:
            outs = self._session.run(["loc", "conf", "landmarks"], {"input": x.cpu().numpy()})
            loc, conf, ldm = (torch.from_numpy(o).to(self.device) for o in outs)
        else:
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
                loc, conf, ldm = self.model(x, valid)
        loc, scores, ldm = loc.float(), conf[..., 1].float(), ldm.float()
        priors = self._priors_for(ch, cw)

        boxes_l, scores_l, lms_l, groups_l = [], [], [], []
        for k, (h, w) in enumerate(shapes):
            ok = scores[k] > self.conf_threshold
            if padded:  # only the priors this image has when run alone
                ok &= torch.from_numpy(_valid_priors(h, w, (ch, cw))).to(self.device)
            idx = torch.nonzero(ok).squeeze(1)
            if idx.numel() > self.top_k:
                idx = idx[torch.topk(scores[k, idx], self.top_k).indices]
            boxes_l.append(decode_boxes(loc[k, idx], priors[idx]))
            scores_l.append(scores[k, idx])
            lms_l.append(decode_landmarks(ldm[k, idx], priors[idx]))
            groups_l.append(torch.full((len(idx),), k, dtype=torch.long, device=self.device))
        boxes, sc = torch.cat(boxes_l), torch.cat(scores_l)
        lms, groups = torch.cat(lms_l), torch.cat(groups_l)
        keep = batched_nms(boxes, sc, groups, self.nms_threshold)  # kept, by decreasing score
        boxes_np, sc_np = boxes[keep].cpu().numpy(), sc[keep].cpu().numpy()
        lms_np, groups_np = lms[keep].cpu().numpy(), groups[keep].cpu().numpy()
        out = []
        for k in range(len(images)):
            sel = np.flatnonzero(groups_np == k)[: self.keep_top_k]
            out.append(Detections(boxes_np[sel], sc_np[sel].clip(0, 1), lms_np[sel]))
        return out

    def _redetect_large(self, image: np.ndarray, det: Detections, scale: float) -> Detections:
        """Faces too large for the anchors, found again at a scale where they fit."""
        if len(det) == 0:
            return det
        side = np.maximum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
        if side.max() * scale <= LARGE_FACE:
            return det
        h, w = image.shape[:2]
        s2 = scale * REDETECT_SIDE / (side.max() * scale)
        small = cv2.resize(
            image, (max(32, round(w * s2)), max(32, round(h * s2))), interpolation=cv2.INTER_AREA
        )
        (d2,) = self._detect_canvas([small])
        sx, sy = small.shape[1] / w, small.shape[0] / h
        factor = np.array([sx, sy], np.float32)
        d2 = Detections(d2.boxes / np.tile(factor, 2), d2.scores, d2.landmarks / factor).clip(w, h)
        side2 = np.maximum(d2.boxes[:, 2] - d2.boxes[:, 0], d2.boxes[:, 3] - d2.boxes[:, 1])
        big = d2.select(side2 * sx >= MIN_REDETECTED)
        if len(big) == 0:
            return det
        overlap = box_iou(det.boxes, big.boxes).max(axis=1)
        return Detections.concat([big, det.select(overlap < 0.2)])

    def provenance(self) -> dict[str, Any]:
        """Parameters and the sha256 of the weight file."""
        return {
            "backend": self.name,
            "network": self.network,
            "conf_threshold": self.conf_threshold,
            "nms_threshold": self.nms_threshold,
            "top_k": self.top_k,
            "keep_top_k": self.keep_top_k,
            "max_size": self.max_size,
            "large_face_pass": self.large_face_pass,
            "exact_padding": self.exact_padding,
            "batch_pixels": self.batch_pixels,
            "pad_waste": self.pad_waste if math.isfinite(self.pad_waste) else None,
            "device": self.device.type,
            "fp16": self.half,
            "runtime": self.runtime,
            "weights": dict(self._weights),
        }
