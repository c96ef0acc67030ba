"""The device path: a batch decoded where its backend takes its images (nvjpeg on a GPU) and its
faces aligned and encoded there, for backends whose ``input_device`` is set.

What differs from the host path and nothing else: the rows, the error rows and the crops' bytes
(up to the device's resampling) are the host path's. Every step falls back to the host, per
image or for the batch, when the device refuses (a format nvjpeg does not read, a failing or
full device).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..align import AlignSpec
from ..batched import decode_jpegs
from ..images import decode_image, parse_crop_format

log = logging.getLogger(__name__)

#: a crop's bytes, made now or on demand (encoding may still run in the I/O threads)
Crop = Callable[[], bytes]


def decode_batch(datas: list[bytes], device: str, max_pixels: int | None) -> list[Any]:
    """Each file's image as an (H, W, 3) uint8 tensor on ``device``, or the exception that
    decoding it raised: nvjpeg for JPEGs, the CPU decoder for the rest and for what nvjpeg
    refuses, and for the whole batch when the device itself fails (memory, driver)."""
    if not datas:
        return []
    try:
        decoded = decode_jpegs(datas, device, max_pixels)  # (3, H, W) tensors or exceptions
    except Exception as e:
        log.warning("device decode failed (%s: %s); decoding on the host", type(e).__name__, e)
        decoded = [_host_decode(data, max_pixels) for data in datas]
    return [t if isinstance(t, Exception) else t.permute(1, 2, 0) for t in decoded]


def _host_decode(data: bytes, max_pixels: int | None) -> Any:
    """One file decoded on the host as a (3, H, W) CPU tensor, or the decoder's exception."""
    import torch

    try:
        rgb = decode_image(data, max_pixels=max_pixels)
    except Exception as e:
        return e
    # a read-only array (some decoders give one) is copied: torch wants writable memory
    return torch.from_numpy(np.require(rgb, requirements="W")).permute(2, 0, 1)


def device_crops(
    images: list[Any],
    fits: list[Any],
    spec: AlignSpec,
    crop_format: str,
    encode_later: Callable[[np.ndarray, str], Crop],
) -> list[list[Crop] | None]:
    """Per image, its faces' encoded crops, aligned where the images are (one batched warp per
    image on their device, :func:`faceetl.batched.warp_faces`); JPEG crops are encoded there
    too where torchvision can (nvjpeg), the others from the host by ``encode_later``. None for
    an image whose crops the host makes (failed detection or fit, or the dlib template, whose
    chips follow dlib's own resampling on the host). ``fits``: per image its transforms, or
    None / the exception where there are none."""
    from ..batched import encode_jpegs, warp_faces

    out: list[list[Crop] | None] = [None] * len(images)
    if spec.template == "dlib":
        return out
    name, quality = parse_crop_format(crop_format)
    for n, (image, fit) in enumerate(zip(images, fits, strict=True)):
        if not isinstance(fit, list) or not fit:
            continue
        mats = [m for m, _ in fit]
        try:
            chw = image.permute(2, 0, 1)[None]
            faces = warp_faces(chw, [0] * len(mats), mats, spec.size)  # (F, 3, S, S) uint8
        except Exception as e:  # e.g. out of device memory: this image's crops come from the host
            log.warning(
                "device alignment failed (%s: %s); aligning on the host", type(e).__name__, e
            )
            continue
        encoded = encode_jpegs(faces, quality) if name == "jpeg" else None
        if encoded is not None:
            out[n] = [(lambda b=b: b) for b in encoded]
        else:
            host = faces.permute(0, 2, 3, 1).cpu().numpy()
            out[n] = [encode_later(host[k], crop_format) for k in range(len(host))]
    return out


def to_host(image: Any) -> np.ndarray:
    """An image as a host numpy array (a device tensor is copied over)."""
    return image if isinstance(image, np.ndarray) else image.cpu().numpy()
