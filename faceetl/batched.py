"""Batched image operations on torch tensors, on any device: the device side of the data path.

- :func:`warp_faces`: every face of a batch aligned by one ``grid_sample`` call, from the same
  2x3 image-to-crop similarity transforms as :func:`faceetl.align.warp` (cv2) uses, with the
  same pixel-centre convention and zero border, so the crops agree with cv2's to within its
  fixed-point rounding (measured and held in ``tests/test_batched.py``).
- :func:`decode_jpegs`: JPEGs decoded in one nvjpeg batch (``torchvision.io.decode_jpeg`` on
  CUDA) with EXIF orientation applied afterwards; an image nvjpeg refuses (CMYK, some
  progressive or corrupt files) is decoded by the CPU decoder instead, never lost.

torch is imported lazily, so importing this module costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .images import ImageError, decode_image, max_pixels_limit


def pad_batch(images: Sequence[Any], device: Any = None) -> tuple[Any, Any]:
    """RGB uint8 images (numpy HWC or torch HWC/CHW tensors) on one zero-padded (N, 3, H, W)
    uint8 canvas, and their (N, 2) heights and widths."""
    import torch

    chw = []
    for im in images:
        t = (
            im
            if isinstance(im, torch.Tensor)
            else torch.from_numpy(np.require(im, requirements=["C", "W"]))
        )
        if t.ndim != 3:
            raise ValueError(f"expected an RGB image, got shape {tuple(t.shape)}")
        if t.shape[-1] == 3 and t.shape[0] != 3:
            t = t.permute(2, 0, 1)
        chw.append(t.to(device) if device is not None else t)
    sizes = torch.tensor([[t.shape[1], t.shape[2]] for t in chw], dtype=torch.long)
    h, w = (int(v) for v in sizes.max(0).values) if len(chw) else (0, 0)
    canvas = torch.zeros(
        (len(chw), 3, h, w), dtype=torch.uint8, device=chw[0].device if chw else device
    )
    for k, t in enumerate(chw):
        canvas[k, :, : t.shape[1], : t.shape[2]] = t
    return canvas, sizes


def warp_faces(
    canvas: Any, image_index: Sequence[int] | Any, matrices: Any, size: int, chunk: int = 512
) -> Any:
    """Aligned ``size`` x ``size`` crops (F, 3, size, size) uint8 of the faces of a batch.

    ``canvas``: (N, 3, H, W) images (uint8 or float, zero-padded: see :func:`pad_batch`);
    ``image_index[f]``: the image of face f; ``matrices[f]``: its 2x3 image-to-crop transform
    (as :func:`faceetl.align.estimate_transform` gives). Pixel (u, v) of a crop samples the
    image at ``M^-1 (u, v)`` with bilinear weights and zeros outside, as ``cv2.warpAffine``
    does with ``BORDER_CONSTANT``. ``chunk`` faces are sampled at a time (memory).
    """
    import torch
    import torch.nn.functional as F

    device = canvas.device
    n_faces = len(image_index)
    out = torch.empty((n_faces, canvas.shape[1], size, size), dtype=torch.uint8, device=device)
    if n_faces == 0:
        return out
    m = torch.as_tensor(np.asarray(matrices, np.float64).reshape(-1, 2, 3), device=device)
    full = torch.cat([m, m.new_tensor([0.0, 0.0, 1.0]).expand(len(m), 1, 3)], dim=1)
    inv = torch.linalg.inv(full)[:, :2, :]  # crop -> image, in pixel-centre coordinates
    idx = np.asarray(image_index, np.int64).reshape(-1)
    h, w = canvas.shape[2], canvas.shape[3]
    v, u = torch.meshgrid(
        torch.arange(size, dtype=torch.float64, device=device),
        torch.arange(size, dtype=torch.float64, device=device),
        indexing="ij",
    )
    uv1 = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)  # (S*S, 3)
    scale = uv1.new_tensor([2.0 / w, 2.0 / h])
    # per image, its faces' sampling grids stacked into one tall grid: one grid_sample reads the
    # image once (as float) however many faces it has, never a copy of the image per face
    for k in np.unique(idx):
        faces = np.flatnonzero(idx == k)
        src = canvas[int(k) : int(k) + 1].float()
        for s in range(0, len(faces), chunk):
            sel = torch.as_tensor(faces[s : s + chunk], device=device)
            xy = torch.einsum("fij,pj->fpi", inv[sel], uv1)  # image pixel coordinates
            grid = ((xy + 0.5) * scale - 1.0).reshape(1, -1, size, 2)  # align_corners=False
            crops = F.grid_sample(
                src, grid.to(src.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
            )  # (1, C, F*S, S)
            crops = crops.reshape(canvas.shape[1], len(sel), size, size).permute(1, 0, 2, 3)
            out[sel] = crops.round_().clamp_(0, 255).to(torch.uint8)
    return out


def encode_jpegs(crops: Any, quality: int | None = None) -> list[bytes] | None:
    """JPEG bytes of (F, 3, S, S) uint8 crops encoded on their CUDA device (nvjpeg, one batch),
    or None where that cannot be done (a CPU tensor, or a torchvision without it): the caller
    then encodes on the host."""
    if not getattr(crops, "is_cuda", False) or len(crops) == 0:
        return None
    try:
        from torchvision.io import encode_jpeg

        out = encode_jpeg(list(crops), quality=95 if quality is None else int(quality))
    except Exception:  # torchvision < 0.19 (no device encode), or nvjpeg refused
        return None
    return [bytes(t.cpu().numpy().tobytes()) for t in out]


# -- decode ---------------------------------------------------------------------------------------

_ORIENT_OPS = {  # EXIF orientation -> (rot90 quarter turns counter-clockwise, then flip left-right)
    1: (0, False), 2: (0, True), 3: (2, False), 4: (2, True),
    5: (3, True), 6: (3, False), 7: (1, True), 8: (1, False),
}  # fmt: skip


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of encoded image bytes (1 when absent); reads the header only."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def _orient(t: Any, orientation: int) -> Any:
    """Apply EXIF ``orientation`` to a (3, H, W) tensor, as PIL's ``exif_transpose`` does."""
    import torch

    turns, flip = _ORIENT_OPS.get(orientation, (0, False))
    if turns:
        t = torch.rot90(t, turns, dims=(1, 2))
    if flip:
        t = torch.flip(t, dims=(2,))
    return t


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size if im.format == "JPEG" and im.mode in ("RGB", "L") else None
    except Exception:
        return None


def decode_jpegs(
    datas: Sequence[bytes], device: Any = "cuda", max_pixels: int | None = None
) -> list[Any]:
    """Decode encoded images to upright (3, H, W) uint8 tensors on ``device``.

    Baseline RGB/grey JPEGs go through one ``torchvision.io.decode_jpeg`` batch (nvjpeg on
    CUDA); any image it refuses, and every other format, is decoded by
    :func:`faceetl.images.decode_image` on the CPU and copied over. An undecodable image gives
    its :class:`ImageError` in its place (the caller makes its error row).
    """
    import torch

    out: list[Any] = [None] * len(datas)
    limit = max_pixels_limit(max_pixels)
    batch = []
    for k, data in enumerate(datas):
        size = _jpeg_size(data)
        if size is not None and (not limit or size[0] * size[1] <= limit):
            batch.append(k)
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        batch = []
    if batch:
        tensors = [torch.frombuffer(bytearray(datas[k]), dtype=torch.uint8) for k in batch]
        try:
            decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        except Exception:  # one bad file fails the batch: decode one by one
            decoded = []
            for t in tensors:
                try:
                    decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except Exception:
                    decoded.append(None)
        for k, t in zip(batch, decoded, strict=True):
            if t is not None:
                out[k] = _orient(t, exif_orientation(datas[k]))
    for k, data in enumerate(datas):
        if out[k] is None:
            try:
                rgb = decode_image(data, max_pixels=max_pixels)
                out[k] = (
                    torch.from_numpy(np.require(rgb, requirements=["W"]))
                    .permute(2, 0, 1)
                    .contiguous()
                    .to(device)
                )
            except ImageError as e:
                out[k] = e
    return out
