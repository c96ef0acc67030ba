"""Face embeddings (identity descriptors): dlib's ResNet (default) or FaceNet (facenet-pytorch).

``network="dlib"``: ``dlib.face_recognition_model_v1`` with
``dlib_face_recognition_resnet_model_v1.dat`` from the ``face_recognition_models`` package (located,
not imported). Input is dlib's face chip, 150 px with padding 0.25 (what ``dlib.get_face_chip``
gives by default and what the model was trained on), made as dlib makes it (the dlib template of
:mod:`faceetl.align`): from the frame's dlib ``shape`` the chip is ``face_recognition``'s own, bit
for bit; from another backend's 5 landmarks, their places on dlib's mean face are fitted.
Output: dlib's raw 128-d descriptor, NOT normalised (its norm is about 1 but varies): dlib compares
descriptors by Euclidean distance, two faces being the same person below 0.6.

``network="facenet"``: facenet-pytorch's InceptionResnetV1 trained on VGGFace2
(``20180402-114759-vggface2.pt``, David Sandberg's TF model ported by facenet-pytorch), rebuilt here
so that the released state dict loads with ``strict=True``. Input 160 px RGB standardised as
facenet-pytorch's ``fixed_image_standardization``, ``(x - 127.5) / 128``; output 512-d,
L2-normalised (compare by cosine similarity / Euclidean distance of unit vectors).

FaceNet crop: facenet-pytorch crops the MTCNN box (plus a margin, commonly 14 px of 160) and
resizes it to 160x160 without rotating. faceetl aligns with a similarity transform to a template
instead; the ArcFace template cannot make 160 px crops (multiples of 112/128 only), so the dlib
template is used at 160 px with padding 0.25. Measured on 66 MTCNN faces of the shared photos
(emulating ``MTCNN(image_size=160, margin=14)``), that padding matches the scale of facenet crops
(best least-squares padding 0.24), but the dlib chip places the face higher than an MTCNN crop
(mean eyes at y 49 vs 64, nose 82 vs 93, mouth 110 vs 117 of 160) and MTCNN crops are stretched
(the box is ~1.34x taller than wide, resized to a square): an approximation of facenet-pytorch's
input, whose effect on accuracy could not be measured here without the released weights.

Columns: ``embedding_vector`` (list<float32>, the network's own output: raw for dlib, unit for
facenet), ``embedding_vector_normalized`` (the same vector L2-normalised, for cosine similarity
as a dot product; equal to the raw one for facenet) and ``embedding_network`` ("dlib" /
"facenet"). :func:`faceetl.compare` and :func:`faceetl.verify` compare them as each model's
authors do (dlib: Euclidean distance of the raw descriptors, same person at most 0.6).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from ..align import AlignSpec
from ..compare import l2_normalize
from ..extras import Need
from ..weights import cached_sha256, packaged_model, resolve
from .base import check_crops, default_device, register_predictor

log = logging.getLogger(__name__)

DLIB_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
#: dlib's recognition model: 150 px chip, padding 0.25 (get_face_chip's defaults)
DLIB_ALIGN = AlignSpec("dlib", 150, 0.25)
#: FaceNet: 160 px; the dlib template stands in for an MTCNN crop (see the module docstring)
FACENET_ALIGN = AlignSpec("dlib", 160, 0.25)
NETWORKS: dict[str, dict[str, Any]] = {
    "dlib": {"align": DLIB_ALIGN, "dim": 128, "normalized": False},
    "facenet": {"align": FACENET_ALIGN, "dim": 512, "normalized": True},
}
VECTOR = pd.ArrowDtype(pa.list_(pa.float32()))
COLUMNS: dict[str, Any] = {
    "embedding_vector": VECTOR,
    "embedding_vector_normalized": VECTOR,
    "embedding_network": "string[pyarrow]",
}


def _check_network(network: str) -> str:
    if network not in NETWORKS:
        raise ValueError(f"unknown embedding network {network!r}; choose one of {sorted(NETWORKS)}")
    return network


def dlib_model_path() -> Path:
    """Path of dlib's ResNet face descriptor in the face_recognition_models package."""
    return packaged_model(DLIB_MODEL_FILE)


@register_predictor("embedding", gpu=True)
class EmbeddingPredictor:
    """Identity embeddings of face crops: dlib ResNet (128-d, raw) or FaceNet (512-d, unit)."""

    name = "embedding"
    align: ClassVar[AlignSpec | None] = DLIB_ALIGN
    columns: ClassVar[dict[str, Any]] = COLUMNS

    @classmethod
    def output_columns(cls, network: str = "dlib", **params: Any) -> dict[str, Any]:
        """The columns added (the same for both networks; the vector length differs)."""
        _check_network(network)
        return dict(COLUMNS)

    @classmethod
    def align_for(cls, network: str = "dlib") -> AlignSpec:
        """The crop geometry ``network`` wants."""
        return NETWORKS[_check_network(network)]["align"]

    @staticmethod
    def needs(params: dict[str, Any]) -> list[Need]:
        """What ``params`` need installed: dlib and its models for the dlib network."""
        if params.get("network", "dlib") != "dlib":
            return []
        return [("dlib", "dlib", "the embedding predictor's dlib network"),
                ("face_recognition_models", "dlib", "the dlib network's model file")]  # fmt: skip

    def __init__(
        self,
        *,
        network: str = "dlib",
        device: str | None = None,
        num_jitters: int = 0,
        half: bool = True,
        weights: str | None = None,
    ) -> None:
        """Load ``network``. ``num_jitters`` (dlib only): dlib's averaging over that many random
        jitters of each chip (slower). ``half``: fp16 autocast on CUDA (facenet). ``weights``
        (facenet only): a local state-dict path used instead of the registered release file."""
        self.network = _check_network(network)
        self.align = NETWORKS[network]["align"]
        self.dim = int(NETWORKS[network]["dim"])
        self.num_jitters = int(num_jitters)
        if self.num_jitters < 0:
            raise ValueError("num_jitters must be >= 0")
        if self.num_jitters and network != "dlib":
            raise ValueError("num_jitters is a dlib option")
        if network == "dlib":
            import dlib

            if weights is not None:
                raise ValueError("weights= is for network='facenet'; dlib's model is packaged")
            path = dlib_model_path()
            self._model = dlib.face_recognition_model_v1(str(path))
            self._weights = {path.name: cached_sha256(str(path))}
            self.device = "cpu"  # dlib-bin is built without CUDA
            self.half = False
            self._version = str(getattr(dlib, "__version__", "unknown"))
        else:
            import torch

            from ..nets.inception_resnet_v1 import FACENET_WEIGHTS, load_facenet

            resolved = resolve(weights, FACENET_WEIGHTS, "FaceNet")
            path, self._weights = resolved.path, resolved.provenance()
            self.device = default_device(device)
            self.half = bool(half) and self.device.startswith("cuda")
            self._model = load_facenet(path).to(self.device)
            self._version = str(torch.__version__)
        log.debug("embedding network %s loaded on %s", network, self.device)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 embeddings of RGB uint8 crops of the ``align`` size."""
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        check_crops(crops, self.align, f"{self.network} embedding")
        if self.network == "dlib":
            chips = [np.ascontiguousarray(c) for c in crops]
            vecs = self._model.compute_face_descriptor(chips, self.num_jitters)
            return np.asarray([np.asarray(v) for v in vecs], np.float32).reshape(-1, self.dim)
        import torch

        x = torch.from_numpy(np.stack(crops)).to(self.device)
        x = (x.permute(0, 3, 1, 2).float() - 127.5) / 128.0  # fixed_image_standardization
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self.half):
            y = self._model(x)
        y = torch.nn.functional.normalize(y.float(), dim=1)  # exact unit norm after fp16
        return y.cpu().numpy().astype(np.float32)

    def predict_batch(self, crops: list[np.ndarray]) -> dict[str, list]:
        """``embedding_vector`` (one float32 vector per crop), ``embedding_vector_normalized``
        (it divided by its L2 norm) and ``embedding_network``."""
        emb = self.embed(crops)
        return {
            "embedding_vector": [v for v in emb],
            "embedding_vector_normalized": [v for v in l2_normalize(emb)],
            "embedding_network": [self.network] * len(crops),
        }

    def provenance(self) -> dict[str, Any]:
        """Model, parameters, crop geometry, output convention and weights sha256."""
        a = self.align
        return {
            "model": self.name,
            "network": self.network,
            "dim": self.dim,
            "l2_normalized": bool(NETWORKS[self.network]["normalized"]),
            "metric": "euclidean of embedding_vector, same person <= 0.6"
            if self.network == "dlib"
            else "euclidean of unit vectors, no published threshold",
            "align": {"template": a.template, "size": a.size, "padding": a.padding},
            "num_jitters": self.num_jitters,
            "device": self.device,
            "half": self.half,
            "library_version": self._version,
            "weights": dict(self._weights),
        }
