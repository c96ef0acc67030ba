"""RetinaFace (Deng et al. 2019) in torch, loading the biubug6/Pytorch_Retinaface weights.

Two bodies: MobileNet-0.25 (default, ``mobilenet0.25_Final.pth``) and ResNet-50
(``Resnet50_Final.pth``). Module names follow the released state dicts so they load with
``strict=True``. Images of mixed sizes run as one batch on a shared canvas padded with the
training mean colour (zeros after mean subtraction, like the convolutions' own zero padding);
detections centred in another image's padding are dropped and boxes map back to input pixels.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..boxes import box_iou
from ..extras import EXPORT, Need
from ..nets.nms import batched_nms
from ..nets.retinaface import CONFIGS, MEAN_BGR, RetinaFace, load_weights, network_name
from ..nets.retinaface_priors import (
    MIN_SIZES,
    STEPS,
    decode_boxes,
    decode_landmarks,
    priors_for,
)
from ..onnx_graph import DEFAULT_OPSET, cached_export, cached_session
from ..weights import resolve
from .base import BaseDetector, Detections, register_backend
from .params import renamed

log = logging.getLogger(__name__)

LARGE_FACE = 400  # network pixels: faces beyond the largest anchors (512) come out doubled
REDETECT_SIDE = 256  # ... so they are detected again with the largest face at this size
MIN_REDETECTED = 64  # faces the second pass finds at least this large replace the first's
#: only boxes at least this confident (the default extraction threshold) start the second pass:
#: at the WIDER setting (0.02) spurious large boxes of 0.03-0.07 would start it and move faces
LARGE_FACE_SCORE = 0.5
#: share of the device's free memory one canvas may take when ``batch_pixels`` is automatic
FREE_MEMORY_SHARE = 0.5
#: automatic canvases hold at least this many pixels (one 1-MP photo) and at most this many
AUTO_PIXELS_RANGE = (1 << 20, 256 << 20)


@torch.inference_mode()
def activation_bytes_per_pixel(model: nn.Module, side: int = 256) -> float:
    """Bytes of all layer outputs of one forward pass per input pixel (fp32).

    Summed over every leaf module's output, as if all stayed alive at once: an upper bound of
    the activation memory (inference frees most as it goes), so canvases sized from it fit.
    Measured here rather than tabulated, so it holds for any body and weights.
    """
    total = 0

    def count(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * 4

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        dev = next(model.parameters()).device
        model(torch.zeros(1, 3, side, side, device=dev))
    finally:
        for h in hooks:
            h.remove()
    return total / (side * side)


def _resize(image: Any, size: tuple[int, int], area: bool = False) -> Any:
    """``image`` (H, W, 3) uint8, numpy or a torch tensor, resized to ``size`` (w, h) where it is:
    cv2's linear (or area) resize on the host, torch's bilinear (or area) one on a tensor's device
    (the same half-pixel convention; they differ by cv2's fixed-point rounding)."""
    if not isinstance(image, torch.Tensor):
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
    x = image.permute(2, 0, 1)[None].float()
    mode = "area" if area else "bilinear"
    y = F.interpolate(
        x, size=(size[1], size[0]), mode=mode, **({} if area else {"align_corners": False})
    )
    return y[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


def batch_pixels_for(free_bytes: float, bytes_per_pixel: float, half: bool = False) -> int:
    """Canvas pixels (batch x height x width) that fit in ``FREE_MEMORY_SHARE`` of free memory."""
    per_pixel = bytes_per_pixel / (2 if half else 1)
    lo, hi = AUTO_PIXELS_RANGE
    return int(min(hi, max(lo, FREE_MEMORY_SHARE * free_bytes / per_pixel)))


class PaddingMask:
    """Keeps the padding of a zero-padded canvas at zero before every spatial conv of ``net``.

    A conv on the canvas then computes, inside each image, exactly what it computes on the image
    alone (whose borders the conv pads with zeros): padding an image into a batch does not change
    its detections. The hooks stay on ``net`` and do nothing outside ``with mask(valid, canvas)``;
    the state is per call, so one masked forward runs at a time.
    """

    def __init__(self, net: nn.Module) -> None:
        self._valid: torch.Tensor | None = None
        self._canvas: tuple[int, int] = (0, 0)
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self.lock = threading.Lock()
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1:
                m.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
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

    @contextlib.contextmanager
    def __call__(self, valid: torch.Tensor | None, canvas: tuple[int, int]) -> Iterator[None]:
        """Within: forwards on a canvas of ``canvas`` (h, w) keep outside ``valid`` (B, 2) zero."""
        with self.lock:
            self._valid = None if valid is None else valid.float()
            self._canvas = canvas
            self._masks = {}
            try:
                yield
            finally:
                self._valid, self._masks = None, {}


# ----------------------------------------------------------------------------- ONNX graph

#: outputs of RetinaFace's ONNX graph (input ``"input"``: BGR minus the mean, NCHW)
ONNX_OUTPUTS = ("loc", "conf", "landmarks")
#: its dynamic input axes
ONNX_AXES = {0: "batch", 2: "height", 3: "width"}
#: version of the graph in the cached file names (bump when the graph changes)
ONNX_VERSION = 1
#: images larger than this (longest side) are downscaled for the check, as ``max_side``
_CHECK_MAX_SIDE = 2048


class OnnxGraph(nn.Module):
    """RetinaFace as exported: box deltas, softmaxed (background, face) and landmark deltas.

    No padding masks (hooks cannot be exported): run mixed sizes one by one for exact results.
    """

    def __init__(self, net: RetinaFace) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, logits, ldm = self.net(x)
        return loc, torch.softmax(logits, dim=-1), ldm


def onnx_inputs(images: list[np.ndarray]) -> list[np.ndarray]:
    """Graph inputs from RGB uint8 images for a check: one batch per image (as the detector runs
    them alone, longest side capped at 2048) and a batch of 2 (the first image and its mirror)."""
    mean = np.array(MEAN_BGR, np.float32)
    batches = []
    for img in images:
        s = min(1.0, _CHECK_MAX_SIDE / max(img.shape[:2]))
        if s < 1.0:
            size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        x = (img[:, :, ::-1].astype(np.float32) - mean).transpose(2, 0, 1)
        batches.append(np.ascontiguousarray(x[None]))
    first = batches[0][0]
    batches.append(np.ascontiguousarray(np.stack([first, first[:, :, ::-1]])))
    return batches


def onnx_metadata(network: str) -> dict[str, str]:
    """What an ONNX file of the graph says about itself."""
    return {
        "faceetl.kind": "retinaface",
        "faceetl.network": network,
        "faceetl.input": "BGR float32 minus mean (104, 117, 123), NCHW, any height and width",
        "faceetl.outputs": "loc (B,P,4) deltas; conf (B,P,2) softmax [background, face]; "
        "landmarks (B,P,10) deltas; priors: faceetl.backends.retinaface.priors_for, "
        "variances (0.1, 0.2)",
    }


def onnx_file(net: RetinaFace, weights_sha256: str, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX graph of a loaded RetinaFace, exported (and checked against torch) once into
    ``$FACEETL_HOME/onnx``, keyed by the weights' sha256, the network and the opset."""
    return cached_export(
        OnnxGraph(net), f"retinaface_{net.network}", weights_sha256,
        outputs=ONNX_OUTPUTS, dynamic=ONNX_AXES, example=torch.zeros(2, 3, 480, 640),
        prepare=onnx_inputs, metadata=onnx_metadata(net.network), opset=opset,
        version=ONNX_VERSION,
    )  # fmt: skip


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


@register_backend(
    "retinaface",
    workers=2,
    gpu=True,
    evaluation={"score_threshold": 0.02, "max_side": None},  # the WIDER FACE evaluation setting
)
class RetinaFaceDetector(BaseDetector):
    """RetinaFace face detector with 5 landmarks, batched over mixed-size images."""

    name = "retinaface"
    # one instance per process is shared by threads: torch inference is thread-safe, the padding
    # masks hold their own lock, onnxruntime sessions may be run from several threads
    thread_safe = True

    @staticmethod
    def needs(params: dict[str, Any]) -> list[Need]:
        """What ``params`` need installed: the export extra for ``runtime="onnx"``."""
        if params.get("runtime") != "onnx":
            return []
        return [(m, "export", "the retinaface backend's runtime='onnx'") for m in EXPORT]

    @renamed(conf_threshold="score_threshold", max_size="max_side")
    def __init__(
        self,
        *,
        network: str = "mobilenet0.25",
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        top_k: int = 5000,
        keep_top_k: int = 750,
        max_side: int | None = 2048,
        large_face_pass: bool = True,
        exact_padding: bool = True,
        batch_pixels: int | None = None,
        pad_waste: float = 1.5,
        device: str | None = None,
        half: bool = True,
        weights: str | None = None,
        runtime: str = "torch",
        tensor_inputs: bool | None = None,
    ) -> None:
        """Build and load the network.

        ``score_threshold=0.02`` with ``max_side=None`` is the WIDER FACE evaluation setting.
        ``max_side`` caps the longest side (images are downscaled, boxes still come back in
        input pixels); ``None`` runs every image at its original scale. ``large_face_pass``:
        RetinaFace finds faces larger than its largest anchors (512 px) twice, the second box
        shifted; where a face that large is found, the image is detected again downscaled so
        that face is 256 px, and the faces found there replace those they overlap (``False``:
        the reference pipeline's output as it is). Mixed-size images share a zero-padded
        canvas; with ``exact_padding`` the padding is kept out of every image's features so
        that an image gives the same detections alone or in any batch (``False``: a little
        faster, faces at the right/bottom edges may move). A batch is split into several
        canvases where one canvas (batch x height x width) would exceed ``batch_pixels`` or the
        canvases would hold more than ``pad_waste`` times the images' own pixels.
        ``batch_pixels=None`` sizes canvases from the device's free memory on CUDA (half of what
        is free when the batch runs, over :func:`activation_bytes_per_pixel`; a batch that still
        runs out of memory is halved and retried by the pipeline) and is 0 on CPU (each image
        runs alone: measured faster on CPU than padded batches); ``pad_waste=inf`` with a large ``batch_pixels``
        gives one canvas per batch. ``weights`` is an optional local state-dict path used
        instead of the registered release file. ``half`` enables fp16 autocast on CUDA.

        ``runtime="onnx"`` runs the network in onnxruntime (CUDAExecutionProvider first when
        available) on a graph exported once into ``$FACEETL_HOME/onnx`` (keyed by the weights'
        sha256, the network and the opset); priors, decoding, NMS and the large-face pass are
        the same code. The graph cannot mask padding, so with ``exact_padding`` every image runs
        alone (a batch of one); without it mixed sizes share the mean-colour canvas unmasked.

        ``tensor_inputs``: take images as torch tensors on ``device`` (:attr:`input_device`), so
        the pipeline decodes (nvjpeg) and aligns them there; ``None``: on CUDA with the torch
        runtime. Images are then resized by torch instead of cv2 (boxes within a pixel).
        """
        network = network_name(network)
        if max_side is not None and max_side < 32:
            raise ValueError("max_side must be >= 32 or None")
        self.network = network
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.keep_top_k = int(keep_top_k)
        self.max_side = None if max_side is None else int(max_side)
        self.large_face_pass = bool(large_face_pass)
        self.exact_padding = bool(exact_padding)
        self.pad_waste = float(pad_waste)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.auto_batch = batch_pixels is None and self.device.type == "cuda"
        self.batch_pixels = 0 if batch_pixels is None else int(batch_pixels)
        if runtime not in ("torch", "onnx"):
            raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")
        self.runtime = runtime
        self.half = bool(half) and self.device.type == "cuda" and runtime == "torch"
        if tensor_inputs is None:
            tensor_inputs = self.device.type == "cuda" and runtime == "torch"
        self.tensor_inputs = bool(tensor_inputs)
        self.input_device = str(self.device) if self.tensor_inputs else None

        resolved = resolve(weights, CONFIGS[network]["weights"], f"RetinaFace {network}")
        self._weights = resolved.provenance()
        self.model = load_weights(RetinaFace(network), resolved.path)
        self._mask = PaddingMask(self.model)
        self.model.eval()
        self._session: Any = None
        if runtime == "onnx":
            self._session = cached_session(onnx_file(self.model, resolved.sha256), device)
        self.model.to(self.device)
        self._mean = torch.tensor(MEAN_BGR, dtype=torch.float32, device=self.device).view(
            1, 3, 1, 1
        )
        self._priors: dict[tuple[int, int], torch.Tensor] = {}
        self._bytes_per_pixel = activation_bytes_per_pixel(self.model) if self.auto_batch else 0.0
        # channels-last canvases for torch on the CPU: ~15% less time a photo on one core
        # (mobilenet0.25, the 16 shared photos: 111 -> 95 ms; same faces, boxes within 3e-4 px);
        # CUDA and the ONNX session keep the default layout
        cpu_torch = self.device.type == "cpu" and self._session is None
        self._layout = torch.channels_last if cpu_torch else torch.contiguous_format
        log.debug("RetinaFace %s loaded on %s", network, self.device)

    # -- helpers

    def _scale_for(self, h: int, w: int) -> float:
        if self.max_side is None or max(h, w) <= self.max_side:
            return 1.0
        return self.max_side / max(h, w)

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

    def _budget(self) -> int:
        """Most pixels one canvas may hold now."""
        if not self.auto_batch:
            return self.batch_pixels
        free, _ = torch.cuda.mem_get_info(self.device)
        # blocks torch's allocator holds but no tensor uses are free for this batch as well
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return batch_pixels_for(free, self._bytes_per_pixel, self.half)

    def _groups(self, shapes: list[tuple[int, int]]) -> list[list[int]]:
        """Indices of the images that share one canvas (sorted by size, bounded padding)."""
        budget = self._budget()
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
            too_big = total > budget
            if cur and (too_big or total > self.pad_waste * own):
                groups.append(cur)
                cand = [i]
            cur = cand
        groups.append(cur)
        return groups

    # -- detection

    @torch.inference_mode()
    def _detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Boxes, scores and 5 landmarks in input pixels, images grouped onto shared canvases."""
        scaled, scales = [], []
        for img in images:
            h, w = (int(v) for v in img.shape[:2])
            s = self._scale_for(h, w)
            if s != 1.0:
                img = _resize(img, (max(1, round(w * s)), max(1, round(h * s))))
            scaled.append(img)
            scales.append(s)
        out: list[Detections | None] = [None] * len(images)
        for group in self._groups([tuple(int(v) for v in img.shape[:2]) for img in scaled]):
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
        shapes = [tuple(int(v) for v in img.shape[:2]) for img in images]
        ch, cw = self._canvas(shapes)
        # canvas in BGR filled with the training mean: zeros once the mean is subtracted
        if isinstance(images[0], torch.Tensor):  # built where the images already are
            x = torch.empty((len(images), ch, cw, 3), dtype=torch.uint8, device=self.device)
            x[...] = torch.tensor(MEAN_BGR, dtype=torch.uint8, device=self.device)
            for k, img in enumerate(images):
                x[k, : img.shape[0], : img.shape[1]] = img.to(self.device).flip(-1)
        else:
            canvas = np.empty((len(images), ch, cw, 3), np.uint8)
            canvas[...] = np.array(MEAN_BGR, np.uint8)
            for k, img in enumerate(images):
                canvas[k, : img.shape[0], : img.shape[1]] = img[:, :, ::-1]
            x = torch.from_numpy(canvas).to(self.device, non_blocking=True)
        x = (x.permute(0, 3, 1, 2).float() - self._mean).contiguous(memory_format=self._layout)
        padded = any(s != (ch, cw) for s in shapes)
        valid = torch.tensor(shapes, device=self.device) if padded and self.exact_padding else None
        if self._session is not None:
            outs = self._session.run(list(ONNX_OUTPUTS), {"input": x.cpu().numpy()})
            loc, conf, ldm = (torch.from_numpy(o).to(self.device) for o in outs)
        else:
            with (
                self._mask(valid, (ch, cw)),
                torch.autocast("cuda", dtype=torch.float16, enabled=self.half),
            ):
                loc, logits, ldm = self.model(x)
            conf = F.softmax(logits.float(), dim=-1)
        loc, scores, ldm = loc.float(), conf[..., 1].float(), ldm.float()
        priors = self._priors_for(ch, cw)

        boxes_l, scores_l, lms_l, groups_l = [], [], [], []
        for k, (h, w) in enumerate(shapes):
            ok = scores[k] > self.score_threshold
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
        trigger = side[det.scores >= max(self.score_threshold, LARGE_FACE_SCORE)]
        if len(trigger) == 0 or trigger.max() * scale <= LARGE_FACE:
            return det
        h, w = (int(v) for v in image.shape[:2])
        s2 = scale * REDETECT_SIDE / (trigger.max() * scale)
        size = (max(32, round(w * s2)), max(32, round(h * s2)))
        if isinstance(image, torch.Tensor):
            # rare (a face over 400 px): cv2's area resize on a host copy, whose output matches
            # the CPU path exactly (torch's area mode averages other pixels for such factors)
            small: Any = torch.from_numpy(_resize(image.cpu().numpy(), size, area=True))
        else:
            small = _resize(image, size, area=True)
        (d2,) = self._detect_canvas([small])
        sx, sy = small.shape[1] / w, small.shape[0] / h
        factor = np.array([sx, sy], np.float32)
        d2 = Detections(d2.boxes / np.tile(factor, 2), d2.scores, d2.landmarks / factor).clip(w, h)
        side2 = np.maximum(d2.boxes[:, 2] - d2.boxes[:, 0], d2.boxes[:, 3] - d2.boxes[:, 1])
        big = d2.select(side2 * sx >= MIN_REDETECTED)
        if len(big) == 0:
            return det
        overlap = box_iou(det.boxes, big.boxes).max(axis=1)
        merged = Detections.concat([big, det.select(overlap < 0.2)])
        order = np.argsort(-merged.scores, kind="stable")[: self.keep_top_k]
        return merged.select(order)  # best first, and never more than keep_top_k

    def _device(self) -> str:
        return self.device.type

    def _parameters(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "top_k": self.top_k,
            "keep_top_k": self.keep_top_k,
            "max_side": self.max_side,
            "large_face_pass": self.large_face_pass,
            "exact_padding": self.exact_padding,
            "batch_pixels": "free memory" if self.auto_batch else self.batch_pixels,
            "pad_waste": self.pad_waste if math.isfinite(self.pad_waste) else None,
            "fp16": self.half,
            "runtime": self.runtime,
            "tensor_inputs": self.tensor_inputs,
        }
