"""Five landmarks for another detector's boxes: MTCNN's O-Net run once on each face box.

Detectors that give boxes only (OpenCV's Haar cascade, the res10 SSD) need landmarks for the
ArcFace alignment, and MediaPipe's BlazeFace places its keypoints coarsely on small faces. The
Haar eye search found eyes in 63 of 79 SSD faces of the shared photos at ~200 ms a photo, 4x
the SSD itself; O-Net (MTCNN's last stage, already in the base install) gives eyes, nose and
mouth corners for every box at ~0.5-1 ms a face on one core (crop 0.1-0.5 ms, network 0.4-0.7
ms channels-last in a pass of 5-80 faces). Each box is made square about its centre
(``box_scale`` times its larger side), cut out (zero past the image's borders, so the square is
never stretched), area-resampled to 48x48, and all faces of a batch go through the network at
once.

Accuracy against dlib's 68-point eyes on the 16 shared group/single/PASCAL photos (median eye
error, fraction of the eye distance): SSD boxes 0.032 at box_scale 0.8 (0.043 at 1.0; Haar eyes
0.029, on 63 of 79 faces), Haar face boxes 0.034 at 0.85 (Haar eyes 0.031). A second pass on
O-Net's own regressed box, and averaging each crop with its mirror, did not help.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import numpy as np

from ..align import square_crop
from ..weights import weights_info
from .base import N_LANDMARKS

#: O-Net's input side
ONET_SIZE = 48
#: what a box-only detector's ``landmarks=`` takes: O-Net's five points, Haar eyes, none
LANDMARK_METHODS = ("onet", "haar", None)


class LandmarkStage(Protocol):
    """Points for boxes already found: ``stage(images, boxes) -> [(N_i, 5, 2)]``."""

    weights: dict[str, str]

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
    ) -> list[np.ndarray]: ...

    def parameters(self) -> dict[str, Any]: ...


def eyes_to_landmarks(eyes: bool) -> dict[str, Any]:
    """The deprecated ``eyes=`` as ``landmarks=``: True kept its meaning (the Haar eye search)."""
    return {"landmarks": "haar" if eyes else None}


def landmark_stage(method: str | None, box_scale: float = 1.0) -> LandmarkStage | None:
    """The landmark stage a box-only detector runs after its boxes (``None``: boxes only)."""
    if method not in LANDMARK_METHODS:
        raise ValueError(f"landmarks must be one of {LANDMARK_METHODS}, got {method!r}")
    if method == "onet":
        return ONetLandmarks(box_scale=box_scale)
    if method == "haar":
        return HaarEyes()
    return None


class HaarEyes:
    """The Haar eye search in each box (:func:`faceetl.backends.haar.find_eyes`): eyes only."""

    def __init__(self) -> None:
        from .haar import EYE_CASCADE, _eye_cascade, cascade_sha256

        _eye_cascade()  # fails here, not in the first batch, if the cascade cannot load
        self.weights = {EYE_CASCADE: cascade_sha256(EYE_CASCADE)}

    def parameters(self) -> dict[str, Any]:
        return {"method": "haar eye cascade"}

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        from .haar import find_eyes

        out = []
        for im, b in zip(images, boxes, strict=True):
            if len(b) == 0:
                out.append(np.zeros((0, N_LANDMARKS, 2), np.float32))
                continue
            out.append(find_eyes(cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY), b))
        return out


def onet_crops(
    image: np.ndarray, boxes: np.ndarray, box_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """O-Net inputs of each box of one RGB uint8 image, squares of ``box_scale`` times the
    box's larger side.

    Returns the crops (N, 48, 48, 3) uint8 and each crop's square in image pixels (N, 3: x0, y0,
    side), from which O-Net's relative points are mapped back.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    crops = np.zeros((len(boxes), ONET_SIZE, ONET_SIZE, 3), np.uint8)
    squares = np.zeros((len(boxes), 3), np.float64)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        side = max(1, int(round(box_scale * max(x2 - x1, y2 - y1))))
        x0 = int(np.floor((x1 + x2) / 2 - side / 2))
        y0 = int(np.floor((y1 + y2) / 2 - side / 2))
        squares[i] = (x0, y0, side)
        crops[i] = square_crop(image, x0, y0, side, ONET_SIZE)
    return crops, squares


class ONetLandmarks:
    """MTCNN's O-Net (facenet-pytorch's weights) as a landmark stage: boxes in, 5 points out.

    Thread-safe once built (the network is only read). ``weights``: file name -> sha256, for
    the detector's provenance. ``box_scale``: the square's side as a fraction of the box's
    larger side (the detector's boxes against MTCNN's tighter ones); ``batch``: the most faces
    per forward pass. torch is imported here, not with the detector's module.
    """

    def __init__(self, box_scale: float = 1.0, device: str = "cpu", batch: int = 512) -> None:
        import torch

        from ..nets.mtcnn import ONet, load_weights
        from .mtcnn import _weight_path  # the facenet_pytorch copy or the verified cache

        if not box_scale > 0:
            raise ValueError(f"box_scale must be > 0, got {box_scale!r}")
        self.box_scale = float(box_scale)
        self.device = torch.device(device)
        self.batch = int(batch)
        self.weights = {"onet.pt": weights_info("mtcnn_onet").sha256}
        self.net = ONet()
        load_weights(self.net, _weight_path("onet"))
        # channels-last on the CPU: 0.44 against 1.7 ms a face on one core (79 real crops in
        # one pass; 0.7 against 2.0 at 5 a pass), as for MTCNN's own stages
        cpu = self.device.type == "cpu"
        self._layout = torch.channels_last if cpu else torch.contiguous_format
        self.net.to(self.device, memory_format=self._layout).eval()

    def parameters(self) -> dict[str, Any]:
        """What decides the points (for provenance)."""
        return {"method": "mtcnn onet", "input": ONET_SIZE, "box_scale": self.box_scale}

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """(N_i, 5, 2) float32 points of each image's boxes: eyes (image order), nose, mouth."""
        import torch

        pairs = [onet_crops(im, b, self.box_scale) for im, b in zip(images, boxes, strict=True)]
        if not pairs:
            return []
        crops, squares = zip(*pairs, strict=True)
        counts = [len(c) for c in crops]
        allc, sq = np.concatenate(crops), np.concatenate(squares)
        pts = np.zeros((len(allc), 10), np.float32)
        with torch.inference_mode():
            for s in range(0, len(allc), self.batch):
                x = torch.from_numpy(allc[s : s + self.batch]).to(self.device)
                x = (x.permute(0, 3, 1, 2).float() - 127.5) * 0.0078125
                _, p, _ = self.net(x.contiguous(memory_format=self._layout))
                pts[s : s + len(x)] = p.float().cpu().numpy()
        xy = np.stack([pts[:, :5], pts[:, 5:]], axis=2) * sq[:, None, 2:3] + sq[:, None, :2]
        out = np.full((len(allc), N_LANDMARKS, 2), np.nan, np.float32)
        out[:, :5] = xy
        # eyes and mouth corners in image order (smaller x first), as every backend gives them
        for a, b in ((0, 1), (3, 4)):
            swap = out[:, a, 0] > out[:, b, 0]
            out[swap, a], out[swap, b] = out[swap, b], out[swap, a].copy()
        return np.split(out, np.cumsum(counts)[:-1])
