"""MTCNN (P-, R-, O-Net cascade) in torch, loading facenet-pytorch's weights, batched over
mixed-size images.

The cascade follows facenet-pytorch's ``detect_face``: an image pyramid (min face 20 px,
factor 0.709) scored by P-Net, NMS per image and scale (0.5) then per image (0.7), box
regression and squaring; R-Net on 24x24 crops (threshold 0.7, NMS 0.7); O-Net on 48x48 crops
(threshold 0.7), landmarks, box regression and a final "Min"-overlap NMS (0.7). Inputs are RGB,
normalised as ``(x - 127.5) / 128``; resampling is torch's "area" mode. The O-Net probability
is the face's score, so the O-Net threshold is ``score_threshold``; the P- and R-Net ones are
``stage_thresholds`` (the three were ``thresholds`` before).

Batching: every area resample (the pyramid levels and the face crops) is read from per-image
integral images, so images of any size share one gather per scale / stage. On a GPU, pyramid
levels of similar size are padded onto a shared canvas (on the CPU only images of one size
share a call: padding there costs what it pads); P-Net masks each image's padding after its first
convolution so that every kept cell sees exactly what it would see unpadded, and cells outside
an image's own output map are dropped. ``batched=False`` runs a plain per-image reference path
(``F.interpolate`` per level and per crop) used to check the batched one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nets.mtcnn import ONet, PNet, RNet, load_weights
from ..nets.nms import batched_nms_chunked, nms_min_overlap
from ..weights import fetch, weights_info
from .base import BaseDetector, Detections, register_backend
from .params import renamed

log = logging.getLogger(__name__)


def _bbreg(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply R-/O-Net box regression (offsets in units of box size + 1)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * torch.stack([w, h, w, h], dim=1)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes made square about their centre, side = the longer side."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _crop_window(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Integer crop rows/cols [y0, y1) x [x0, x1) of each box, truncated and cut to its image.

    ``sizes`` (N, 2) is each box's image (h, w). Boxes are in MTCNN's 1-based convention.
    """
    b = boxes.trunc().long()
    x0 = b[:, 0].clamp(min=1) - 1
    y0 = b[:, 1].clamp(min=1) - 1
    x1 = torch.minimum(b[:, 2], sizes[:, 1])
    y1 = torch.minimum(b[:, 3], sizes[:, 0])
    return torch.stack([y0, y1, x0, x1], dim=1)


def _cells_to_boxes(
    reg: torch.Tensor, prob: torch.Tensor, scale: float, thr: float, valid_hw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net output map -> candidate boxes (x1,y1,x2,y2,score,reg*4) and their batch index.

    ``valid_hw`` (N, 2): the size of each image's own output map; cells beyond it are padding.
    """
    rows = torch.arange(prob.shape[1], device=prob.device)
    cols = torch.arange(prob.shape[2], device=prob.device)
    inside = (rows[None, :, None] < valid_hw[:, 0, None, None]) & (
        cols[None, None, :] < valid_hw[:, 1, None, None]
    )
    mask = (prob >= thr) & inside
    idx = mask.nonzero()
    img, yx = idx[:, 0], idx[:, 1:]
    xy = yx.flip(1).to(prob.dtype)
    q1 = torch.floor((2 * xy + 1) / scale)
    q2 = torch.floor((2 * xy + 12) / scale)
    r = reg.permute(0, 2, 3, 1)[mask]
    return torch.cat([q1, q2, prob[mask][:, None], r], dim=1), img


def _pnet_output_size(hw: torch.Tensor) -> torch.Tensor:
    """P-Net output map size for an input of size ``hw`` (conv3, ceil-pool 2, conv3, conv3)."""
    return torch.div(hw - 2 + 1, 2, rounding_mode="floor") - 4


# ------------------------------------------------------------- area resampling from integrals


class _Integrals:
    """Summed-area tables of a batch of images in one flat buffer, for exact area resampling.

    torch's ``interpolate(mode="area")`` (adaptive average pooling) averages, for output pixel
    ``a`` of ``n`` from an input of ``m``, the input rows ``floor(a*m/n)`` to
    ``ceil((a+1)*m/n)``; integer sums of uint8 pixels from the tables give the same means.
    """

    def __init__(self, images: list[np.ndarray], device: torch.device) -> None:
        big = any(im.shape[0] * im.shape[1] * 255 >= 2**31 for im in images)
        parts, offsets, sizes = [], [], []
        off = 0
        for im in images:
            if isinstance(im, torch.Tensor):  # on its device: the same integer sums as cv2's
                dtype = torch.int64 if big else torch.int32
                t = im.to(device)
                s = torch.zeros((t.shape[0] + 1, t.shape[1] + 1, 3), dtype=dtype, device=device)
                s[1:, 1:] = t.to(dtype).cumsum(0).cumsum(1)
            elif big:  # float64 sums of uint8 are exact far beyond int32's range
                s = torch.from_numpy(cv2.integral(np.ascontiguousarray(im), sdepth=cv2.CV_64F))
                s = s.long()
            else:
                s = torch.from_numpy(cv2.integral(np.ascontiguousarray(im), sdepth=cv2.CV_32S))
            # (H+1, W+1, 3) with a zero first row and column
            parts.append(s.reshape(-1, 3).to(device))
            offsets.append(off)
            sizes.append(im.shape[:2])
            off += s.shape[0] * s.shape[1]
        self.buf = torch.cat(parts)
        self.offsets = torch.tensor(offsets, dtype=torch.long, device=device)
        self.sizes = torch.tensor(sizes, dtype=torch.long, device=device).reshape(-1, 2)

    def resample(
        self,
        img: torch.Tensor,
        win: torch.Tensor,
        out_hw: torch.Tensor,
        canvas: tuple[int, int],
    ) -> torch.Tensor:
        """Area-resample windows ``win`` (N, 4: y0, y1, x0, x1) of images ``img`` (N,) to
        ``out_hw`` (N, 2), written top-left on a ``canvas`` (h, w): float (N, 3, h, w), 0 outside.
        """
        dev = self.buf.device
        ch, cw = canvas
        a = torch.arange(ch, device=dev)
        b = torch.arange(cw, device=dev)
        in_h = (win[:, 1] - win[:, 0])[:, None]
        in_w = (win[:, 3] - win[:, 2])[:, None]
        oh, ow = out_hw[:, 0:1], out_hw[:, 1:2]
        r0 = win[:, 0:1] + torch.div(a[None] * in_h, oh, rounding_mode="floor")
        r1 = win[:, 0:1] + torch.div((a[None] + 1) * in_h + oh - 1, oh, rounding_mode="floor")
        c0 = win[:, 2:3] + torch.div(b[None] * in_w, ow, rounding_mode="floor")
        c1 = win[:, 2:3] + torch.div((b[None] + 1) * in_w + ow - 1, ow, rounding_mode="floor")
        hmax = self.sizes[img, 0:1]
        wmax = self.sizes[img, 1:2]
        r0, r1 = r0.clamp(max=hmax), r1.clamp(max=hmax)
        c0, c1 = c0.clamp(max=wmax), c1.clamp(max=wmax)
        stride = (wmax + 1)[:, :, None]
        base = self.offsets[img][:, None, None]

        def at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return self.buf[base + r[:, :, None] * stride + c[:, None, :]]

        total = at(r1, c1)  # (N, ch, cw, 3); in place: two such tensors alive, not five
        total -= at(r0, c1)
        total -= at(r1, c0)
        total += at(r0, c0)
        count = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]).clamp(min=1)
        out = total.float() / count[..., None].float()
        inside = (a[None, :, None] < oh[:, :, None]) & (b[None, None, :] < ow[:, :, None])
        out = out * inside[..., None]
        return out.permute(0, 3, 1, 2)  # channels-last in memory; callers pick the layout


def _to_tensor(image: Any, device: torch.device) -> torch.Tensor:
    """RGB uint8 (H, W, 3), numpy or a tensor -> float (1, 3, H, W) on ``device``."""
    if isinstance(image, torch.Tensor):
        return image.to(device).permute(2, 0, 1)[None].float()
    t = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).to(device)
    return t.permute(2, 0, 1)[None].float()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _group_by_size(sizes: list[tuple[int, int]], slack: float = 1.5) -> list[list[int]]:
    """Indices grouped so that padding each group to its largest size wastes at most ``slack``."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1])
    groups: list[list[int]] = []
    cur: list[int] = []
    mh = mw = area = 0
    for i in order:
        h, w = sizes[i]
        nh, nw = max(mh, h), max(mw, w)
        if cur and nh * nw * (len(cur) + 1) > slack * (area + h * w):
            groups.append(cur)
            cur, mh, mw, area = [], 0, 0, 0
            nh, nw = h, w
        cur.append(i)
        mh, mw, area = nh, nw, area + h * w
    if cur:
        groups.append(cur)
    return groups


def _split_thresholds(thresholds: tuple[float, float, float]) -> dict[str, Any]:
    """The deprecated ``thresholds`` (P-, R-, O-Net) as the new parameters (O-Net: the score)."""
    t = tuple(thresholds)
    if len(t) != 3:
        raise ValueError(f"thresholds must be three numbers (P-, R-, O-Net), got {thresholds!r}")
    return {"stage_thresholds": t[:2], "score_threshold": t[2]}


@register_backend("mtcnn", workers=4, gpu=True)
class MTCNNDetector(BaseDetector):
    """MTCNN face detector with facenet-pytorch's weights; boxes, O-Net scores, 5 landmarks.

    ``score_threshold``: the least O-Net probability (the score); ``stage_thresholds``: the least
    P-Net and R-Net probabilities of a candidate; ``min_face_size``: the smallest face the image
    pyramid searches for, in pixels; ``nms_thresholds``: the overlaps of the NMS per scale, per
    image, after R-Net and (intersection over the smaller box) after O-Net.
    ``tensor_inputs``: take images as tensors on ``device`` (the pipeline decodes them there);
    ``None``: on CUDA. The summed-area tables are then built on the device (the same integers).
    Memory is bounded per call by ``crop_batch`` R-/O-Net crops and one P-Net canvas per
    pyramid level and size group (a 16-photo batch of 1 MP: 740 MB peak on the CPU, measured;
    960 MB before the levels were read from the summed-area tables).
    """

    # shared by threads: the networks are only read and every call keeps its state in locals
    thread_safe = True
    name = "mtcnn"

    @renamed(thresholds=_split_thresholds)
    def __init__(
        self,
        *,
        min_face_size: int = 20,
        score_threshold: float = 0.7,
        stage_thresholds: tuple[float, float] = (0.6, 0.7),
        factor: float = 0.709,
        nms_thresholds: tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7),
        device: str | None = None,
        batched: bool = True,
        crop_batch: int = 512,
        tensor_inputs: bool | None = None,
    ) -> None:
        if len(stage_thresholds) != 2:
            raise ValueError(f"stage_thresholds must be two numbers, got {stage_thresholds!r}")
        self.min_face_size = int(min_face_size)
        self.score_threshold = float(score_threshold)
        self.stage_thresholds = tuple(float(t) for t in stage_thresholds)
        self.factor = float(factor)
        self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # images as tensors on the device (decoded and aligned there by the pipeline): on CUDA
        self.tensor_inputs = self.device.type == "cuda" if tensor_inputs is None else tensor_inputs
        self.input_device = str(self.device) if self.tensor_inputs else None
        self.batched = bool(batched)
        self.crop_batch = int(crop_batch)
        self._paths = {n: _weight_path(n) for n in ("pnet", "rnet", "onet")}
        self._weights = {
            f"{n}.pt": weights_info(f"mtcnn_{n}").sha256 for n in ("pnet", "rnet", "onet")
        }
        # channels-last inputs on the CPU: its max-pool and small convolutions run 1.4-3x
        # faster that way (P-, R-, O-Net; same faces, boxes within 1e-3 px on the shared
        # photos). CUDA keeps the default layout until measured there.
        self._layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for n, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            load_weights(net, self._paths[n])
            net.to(self.device).eval()

    # ------------------------------------------------------------------ detection

    def _device(self) -> str:
        return str(self.device)

    def _parameters(self) -> dict[str, Any]:
        return {
            "min_face_size": self.min_face_size,
            "score_threshold": self.score_threshold,
            "stage_thresholds": list(self.stage_thresholds),
            "factor": self.factor,
            "nms_thresholds": list(self.nms_thresholds),
            "batched": self.batched,
            "tensor_inputs": self.tensor_inputs,
        }

    @torch.inference_mode()
    def _detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Boxes, O-Net scores and landmarks of each image (batched or per-image path)."""
        if self.batched and self.device.type == "cpu":
            # a CPU has no launches to amortise, and padding mixed sizes onto shared canvases
            # costs what it pads: each size through the batched path on its own (the 16
            # shared photos at once: 270 ms a photo this way, 405 on shared canvases; 16 of
            # one size still go together)
            raw: list[Any] = [None] * len(images)
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, im in enumerate(images):
                by_size.setdefault((int(im.shape[0]), int(im.shape[1])), []).append(i)
            for idx in by_size.values():
                for i, r in zip(idx, self._detect_batched([images[i] for i in idx]), strict=True):
                    raw[i] = r
        elif self.batched:
            raw = self._detect_batched(images)
        else:
            raw = [self._detect_reference(im) for im in images]
        return [Detections(boxes, scores, points) for boxes, scores, points in raw]

    # ------------------------------------------------------------------ internals

    def _scales(self, h: int, w: int) -> list[float]:
        scale = 12.0 / self.min_face_size
        minl = min(h, w) * scale
        scales = []
        while minl >= 12:
            scales.append(scale)
            scale *= self.factor
            minl *= self.factor
        return scales

    def _run_crops(
        self,
        net: nn.Module,
        img: torch.Tensor,
        win: torch.Tensor,
        size: int,
        crops_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        """``net`` on the ``size`` x ``size`` crops of windows ``win``, ``crop_batch`` at a time."""
        outs = []
        for i in range(0, len(img), self.crop_batch):
            sl = slice(i, i + self.crop_batch)
            x = _normalise(crops_fn(img[sl], win[sl], size))
            outs.append(net(x.contiguous(memory_format=self._layout)))
        return tuple(torch.cat(v) for v in zip(*outs, strict=True))

    def _refine(
        self,
        boxes: torch.Tensor,
        img: torch.Tensor,
        sizes: torch.Tensor,
        crops_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stages 2 and 3 on stage-1 boxes (x1,y1,x2,y2,score,reg*4) of images ``img``.

        ``crops_fn(img, windows, size)`` gives the area-resampled crops; returns the final
        boxes, O-Net scores, landmarks (N, 5, 2) and image indices.
        """
        t_r, t_o = self.stage_thresholds[1], self.score_threshold
        nms_img, nms_r, nms_o = self.nms_thresholds[1:]
        dev = self.device
        empty = (
            torch.zeros(0, 4, device=dev),
            torch.zeros(0, device=dev),
            torch.zeros(0, 5, 2, device=dev),
            torch.zeros(0, dtype=torch.long, device=dev),
        )
        if len(boxes) == 0:
            return empty
        keep = batched_nms_chunked(boxes[:, :4], boxes[:, 4], img, nms_img)
        boxes, img = boxes[keep], img[keep]
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        b = boxes[:, :4] + boxes[:, 5:9] * torch.stack([w, h, w, h], dim=1)
        b = _square(b)

        # R-Net
        win = _crop_window(b, sizes[img])
        ok = (win[:, 1] > win[:, 0]) & (win[:, 3] > win[:, 2])
        b, img, win = b[ok], img[ok], win[ok]
        if len(b) == 0:
            return empty
        reg, prob = self._run_crops(self.rnet, img, win, 24, crops_fn)
        ok = prob > t_r
        b, img, reg, prob = b[ok], img[ok], reg[ok], prob[ok]
        if len(b) == 0:
            return empty
        keep = batched_nms_chunked(b, prob, img, nms_r)
        b, img, reg, prob = b[keep], img[keep], reg[keep], prob[keep]
        b = _square(_bbreg(b, reg))

        # O-Net
        win = _crop_window(b, sizes[img])
        ok = (win[:, 1] > win[:, 0]) & (win[:, 3] > win[:, 2])
        b, img, win = b[ok], img[ok], win[ok]
        if len(b) == 0:
            return empty
        reg, pts, prob = self._run_crops(self.onet, img, win, 48, crops_fn)
        ok = prob > t_o
        b, img, reg, pts, prob = b[ok], img[ok], reg[ok], pts[ok], prob[ok]
        if len(b) == 0:
            return empty
        bw = (b[:, 2] - b[:, 0] + 1)[:, None]
        bh = (b[:, 3] - b[:, 1] + 1)[:, None]
        px = bw * pts[:, :5] + b[:, 0:1] - 1
        py = bh * pts[:, 5:] + b[:, 1:2] - 1
        points = torch.stack([px, py], dim=2)  # (N, 5, 2): eyes, nose, mouth corners
        b = _bbreg(b, reg)
        keep = nms_min_overlap(b, prob, img, nms_o)
        return b[keep], prob[keep], points[keep], img[keep]

    def _detect_batched(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
        """The whole cascade for a batch of images of any sizes at once."""
        dev = self.device
        integ = _Integrals(images, dev)
        sizes = torch.tensor([im.shape[:2] for im in images], dtype=torch.long, device=dev)
        whole = torch.cat([torch.zeros_like(sizes), sizes], 1)[:, [0, 2, 1, 3]]  # y0 y1 x0 x1
        scales_per = [self._scales(im.shape[0], im.shape[1]) for im in images]
        n_levels = max((len(s) for s in scales_per), default=0)
        cand, cand_img, cand_grp = [], [], []
        for k in range(n_levels):
            members = [i for i, s in enumerate(scales_per) if len(s) > k]
            scale = scales_per[members[0]][k]
            lvl = {
                i: (int(images[i].shape[0] * scale + 1), int(images[i].shape[1] * scale + 1))
                for i in members
            }
            for grp in _group_by_size([lvl[i] for i in members]):
                idx = [members[j] for j in grp]
                hw = torch.tensor([lvl[i] for i in idx], dtype=torch.long, device=dev)
                canvas = (int(hw[:, 0].max()), int(hw[:, 1].max()))
                img = torch.tensor(idx, dtype=torch.long, device=dev)
                # every member's level in one gather from the summed-area tables (the same
                # means as F.interpolate(mode="area"), read per output pixel, not per input one)
                x = integ.resample(img, whole[img], hw, canvas)
                x = _normalise(x).contiguous(memory_format=self._layout)
                reg, prob = self.pnet(x, valid_hw=hw)
                bx, bi = _cells_to_boxes(
                    reg, prob, scale, self.stage_thresholds[0], _pnet_output_size(hw)
                )
                cand.append(bx)
                cand_img.append(img[bi])
                cand_grp.append(img[bi] * n_levels + k)
        boxes = torch.cat(cand) if cand else torch.zeros(0, 9, device=dev)
        img = torch.cat(cand_img) if cand else torch.zeros(0, dtype=torch.long, device=dev)
        grp = torch.cat(cand_grp) if cand else torch.zeros(0, dtype=torch.long, device=dev)
        if len(boxes):
            keep = batched_nms_chunked(boxes[:, :4], boxes[:, 4], grp, self.nms_thresholds[0])
            boxes, img = boxes[keep], img[keep]

        def crops(ci: torch.Tensor, cw: torch.Tensor, size: int) -> torch.Tensor:
            out = torch.full((len(ci), 2), size, dtype=torch.long, device=dev)
            return integ.resample(ci, cw, out, (size, size))

        b, s, p, bi = self._refine(boxes, img, sizes, crops)
        return _split(b, s, p, bi, len(images))

    def _detect_reference(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        """Plain per-image cascade: ``F.interpolate(mode="area")`` per level and per crop."""
        dev = self.device
        t = _to_tensor(image, dev)
        h, w = image.shape[:2]
        sizes = torch.tensor([[h, w]], dtype=torch.long, device=dev)
        cand = []
        for scale in self._scales(h, w):
            hs, ws = int(h * scale + 1), int(w * scale + 1)
            x = _normalise(F.interpolate(t, size=(hs, ws), mode="area"))
            reg, prob = self.pnet(x.contiguous(memory_format=self._layout))
            out_hw = torch.tensor([[prob.shape[1], prob.shape[2]]], device=dev)
            bx, _ = _cells_to_boxes(reg, prob, scale, self.stage_thresholds[0], out_hw)
            zeros = torch.zeros(len(bx), dtype=torch.long, device=dev)
            keep = batched_nms_chunked(bx[:, :4], bx[:, 4], zeros, self.nms_thresholds[0])
            cand.append(bx[keep])
        boxes = torch.cat(cand) if cand else torch.zeros(0, 9, device=dev)
        img = torch.zeros(len(boxes), dtype=torch.long, device=dev)

        def crops(ci: torch.Tensor, cw: torch.Tensor, size: int) -> torch.Tensor:
            out = [
                F.interpolate(t[:, :, y0:y1, x0:x1], size=(size, size), mode="area")
                for y0, y1, x0, x1 in cw.tolist()
            ]
            return torch.cat(out)

        b, s, p, bi = self._refine(boxes, img, sizes, crops)
        return _split(b, s, p, bi, 1)[0]


def _split(
    boxes: torch.Tensor, scores: torch.Tensor, points: torch.Tensor, img: torch.Tensor, n: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-image numpy (boxes, scores, landmarks), faces in decreasing score."""
    boxes, scores = boxes.float().cpu().numpy(), scores.float().cpu().numpy()
    points, img = points.float().cpu().numpy(), img.cpu().numpy()
    out = []
    for i in range(n):
        sel = np.nonzero(img == i)[0]
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        out.append((boxes[sel], scores[sel], points[sel]))
    return out


def _weight_path(net: str) -> Path:
    """The verified weight file: a facenet_pytorch package copy if installed, else the cache."""
    name = f"mtcnn_{net}"
    want = weights_info(name).sha256
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "data" / f"{net}.pt"
            if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == want:
                log.debug("using %s from the installed facenet_pytorch", p)
                return p
    return fetch(name)  # raises WeightsError (file, URL, folder) when it cannot be had


__all__ = ["MTCNNDetector", "PNet", "RNet", "ONet"]
