"""FairFace: race, gender and age of a face (Kärkkäinen & Joo, WACV 2021; dchen236/FairFace).

The released models are torchvision ResNet-34s whose ``fc`` has 18 outputs: ``[:7]`` race,
``[7:9]`` gender, ``[9:18]`` age (FairFace's ``predict.py``). The 4-race models have the same
18-output head, of which FairFace uses only ``[:4]``; so ``races=4`` gives the race columns only.

Input: the dlib face chip FairFace was trained on (``dlib.get_face_chips(size=300,
padding=0.25)`` of dlib's 5-point shapes), which faceetl makes with dlib's own geometry and
extraction (``align``: the dlib template, see :mod:`faceetl.align`): from the frame's ``shape``
where the backend gave one (the dlib backend: its 68- or 5-point shape; with ``landmarks="5"``
the chip is FairFace's own, bit for bit), else from the 5 ArcFace landmarks placed on dlib's mean
face. The chip is resized to 224x224 the way torchvision's ``Resize((224, 224))`` does it on a
PIL image (PIL bilinear, which antialiases when shrinking), scaled to [0, 1] and normalised with
the ImageNet mean/std. Each head's logits go through a softmax, the label is its argmax.

Release files (Google Drive folder linked from FairFace's README; none are on GitHub):

- ``res34_fair_align_multi_7_20190809.pt`` / ``res34_fair_align_multi_4_20190809.pt``
  (``release="20190809"``, the default): the files FairFace's README and current predict.py load.
- ``fairface_alldata_20191111.pt`` / ``fairface_alldata_4race_20191111.pt``
  (``release="20191111"``): the files an earlier predict.py loaded (commit 64d012bf); the
  repo's ``test_outputs.csv`` takes its ``race4`` column from ``fairface_alldata_4race_20191111.pt``
  (predict.py at commit dd0f2886).

No sha256 of these files is published anywhere we could find. The default file
(``res34_fair_align_multi_7_20190809.pt``, the one the authors' README once linked directly) is
downloaded on first use and trusted on first use (:mod:`faceetl.nets.fairface`,
:mod:`faceetl.weights`): its sha256 is recorded in ``FACEETL_HOME`` and any different file is
refused afterwards; the recorded hash is in the provenance. The other three have no direct link:
put the file in ``FACEETL_HOME`` (or pass ``weights=`` a path) and its sha256 is computed, logged
and written to the provenance. Filling in ``sha256`` below registers a file with
:mod:`faceetl.weights` and from then on it is fetched and verified like any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from ..align import AlignSpec
from ..nets.fairface import load_model
from ..weights import WeightsError, home, register_weights, registered_weights, resolve
from .base import check_crops, default_device, register_predictor

log = logging.getLogger(__name__)

RACES_7 = (
    "White",
    "Black",
    "Latino_Hispanic",
    "East Asian",
    "Southeast Asian",
    "Indian",
    "Middle Eastern",
)
RACES_4 = ("White", "Black", "Asian", "Indian")
GENDERS = ("Male", "Female")
AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")

#: the model's input: torchvision ``Resize((224, 224))`` then ImageNet normalisation
INPUT_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: the Google Drive folder FairFace's README links for its models (the only official source)
DRIVE_FOLDER = "https://drive.google.com/drive/folders/1B2gAnEpJ6oC9sMkcwS8v5Wk8PtHycHOV"

FLOATS = pd.ArrowDtype(pa.list_(pa.float32()))
STRING = "string[pyarrow]"


@dataclass(frozen=True)
class Release:
    """One released FairFace weight file."""

    name: str
    filename: str
    races: int
    sha256: str | None = None  # None: no published hash found (not pinned; see the docstring)
    url: str = DRIVE_FOLDER


RELEASES: dict[tuple[str, int], Release] = {
    ("20190809", 7): Release(
        "fairface_res34_race7_20190809", "res34_fair_align_multi_7_20190809.pt", 7
    ),
    ("20190809", 4): Release(
        "fairface_res34_race4_20190809", "res34_fair_align_multi_4_20190809.pt", 4
    ),
    ("20191111", 7): Release("fairface_alldata_race7_20191111", "fairface_alldata_20191111.pt", 7),
    ("20191111", 4): Release(
        "fairface_alldata_race4_20191111", "fairface_alldata_4race_20191111.pt", 4
    ),
}
for _r in RELEASES.values():
    if _r.sha256:
        register_weights(_r.name, _r.url, _r.sha256, _r.filename, description="FairFace ResNet-34")


def release_for(races: int = 7, release: str = "20190809") -> Release:
    """The :class:`Release` of ``races`` (7 or 4) and ``release`` ("20190809" or "20191111")."""
    try:
        return RELEASES[(str(release), int(races))]
    except (KeyError, ValueError):
        known = sorted({k[0] for k in RELEASES})
        raise ValueError(
            f"FairFace has no release {release!r} with races={races!r}: races is 7 or 4, "
            f"release one of {known}"
        ) from None


def downloadable(rel: Release) -> bool:
    """Whether ``rel`` has a weights record (pinned, or trusted on first use) to fetch it by."""
    return any(wf.name == rel.name for wf in registered_weights())


def weights_path(rel: Release) -> Path:
    """Local path of a release file: fetched and verified where it has a weights record (pinned
    or trusted on first use), else looked up in FACEETL_HOME."""
    if downloadable(rel):
        return resolve(None, rel.name).path
    path = home() / rel.filename
    if not path.is_file():
        raise WeightsError(
            f"FairFace weights {rel.filename} are not in {path.parent}. faceetl does not download "
            f"this file (the authors link their folder, not the file): get {rel.filename} from "
            f"the FairFace models folder {rel.url} and put it at {path}, point FACEETL_HOME at a "
            f"folder that holds it, or pass weights='/path/to/{rel.filename}'."
        )
    return path


# --------------------------------------------------------------------------------------------
# preprocessing


def resize_224(crop: np.ndarray) -> np.ndarray:
    """``crop`` resized to 224x224 as torchvision's PIL ``Resize((224, 224))``: PIL bilinear."""
    im = Image.fromarray(np.ascontiguousarray(crop, dtype=np.uint8), "RGB")
    return np.asarray(im.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR), dtype=np.uint8)


def preprocess(crops: Sequence[np.ndarray]) -> Any:
    """RGB uint8 crops -> float32 tensor (N, 3, 224, 224): ToTensor then ImageNet Normalize."""
    import torch

    if len(crops) == 0:
        return torch.zeros((0, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.float32)
    for c in crops:
        if c.ndim != 3 or c.shape[2] != 3:
            raise ValueError(f"FairFace wants RGB crops (H, W, 3), got shape {c.shape}")
    x = torch.from_numpy(np.stack([resize_224(c) for c in crops]))
    x = x.permute(0, 3, 1, 2).to(torch.float32).div(255)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous()


# --------------------------------------------------------------------------------------------
# the predictor


def _columns(races: int) -> dict[str, Any]:
    cols: dict[str, Any] = {"fairface_race": STRING, "fairface_race_probs": FLOATS}
    if int(races) == 7:
        cols.update(
            {
                "fairface_gender": STRING,
                "fairface_gender_probs": FLOATS,
                "fairface_age": STRING,
                "fairface_age_probs": FLOATS,
            }
        )
    return cols


@register_predictor("fairface", gpu=True)
class FairFacePredictor:
    """FairFace ResNet-34: race (7 or 4 groups), gender and age group with softmax scores."""

    name = "fairface"
    align: ClassVar[AlignSpec | None] = AlignSpec("dlib", 300, 0.25)
    columns: ClassVar[dict[str, Any]] = _columns(7)

    @classmethod
    def output_columns(cls, races: int = 7, **_: Any) -> dict[str, Any]:
        """The columns added: race with ``races=4``, race, gender and age with ``races=7``."""
        release_for(races)  # validates races
        return _columns(races)

    def __init__(
        self,
        *,
        races: int = 7,
        release: str = "20190809",
        weights: str | os.PathLike | None = None,
        device: str | None = None,
    ) -> None:
        import torch

        self.release = release_for(races, release)
        self.races = self.release.races
        self.labels = RACES_7 if self.races == 7 else RACES_4
        rel = self.release
        # a release with a record is fetched and verified; one without is looked up in FACEETL_HOME
        source = weights if weights is not None or downloadable(rel) else weights_path(rel)
        self.weights = resolve(source, rel.name, "FairFace")
        self.weights_file, self.weights_sha256 = self.weights.path.name, self.weights.sha256
        if self.weights.release is None:
            log.info(
                "FairFace weights %s (not pinned) have sha256 %s", self.weights.path,
                self.weights_sha256,
            )  # fmt: skip
        self.device = default_device(device)
        self.model = self.weights.load(load_model).to(self.device)
        self._torch = torch

    def logits(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The model's raw (N, 18) float32 outputs for RGB uint8 crops."""
        torch = self._torch
        x = preprocess(crops).to(self.device)
        with torch.inference_mode():
            if self.device.startswith("cuda"):
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self.model(x)
            else:
                out = self.model(x)
        return out.float().cpu().numpy()

    def predict_batch(self, crops: list[np.ndarray]) -> dict[str, list]:
        """One label and one softmax vector per crop (300 px dlib chips) for every head."""
        check_crops(crops, self.align, "FairFace")
        out = self.logits(crops) if crops else np.zeros((0, 18), np.float32)
        heads = [("race", slice(0, self.races), self.labels)]
        if self.races == 7:
            heads += [("gender", slice(7, 9), GENDERS), ("age", slice(9, 18), AGES)]
        res: dict[str, list] = {}
        for head, sl, labels in heads:
            probs = softmax(out[:, sl])
            res[f"fairface_{head}"] = [labels[i] for i in probs.argmax(axis=1)]
            res[f"fairface_{head}_probs"] = [p.astype(np.float32).tolist() for p in probs]
        return res

    def provenance(self) -> dict[str, Any]:
        """Model name, parameters and the sha256 of the weight file loaded (for a file trusted on
        first use, the hash recorded then)."""
        pinned = self.weights.release
        return {
            "model": self.name,
            "architecture": "torchvision resnet34, fc 512->18",
            "races": self.races,
            "release": next(k[0] for k, r in RELEASES.items() if r == self.release),
            "align": {
                "template": "dlib",
                "size": 300,
                "padding": 0.25,
                "geometry": "dlib get_face_chip_details + extract_image_chip",
            },
            "resize": "PIL bilinear 224x224",
            "weights": self.weights.provenance(),
            "weights_pinned": pinned is not None and pinned.sha256 is not None,
            "weights_trust_on_first_use": pinned is not None and pinned.trust_on_first_use,
            "device": self.device,
        }


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise float32 softmax: FairFace's ``np.exp(x) / np.sum(np.exp(x))``, max subtracted."""
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fairface_table(
    crops: Sequence[np.ndarray],
    weights7: str | os.PathLike | None = None,
    weights4: str | os.PathLike | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """FairFace's ``test_outputs.csv`` columns for 300 px dlib chips, from the given weight files.

    ``weights7`` gives ``race``, ``gender``, ``age`` and their ``*_scores_fair``; ``weights4``
    gives ``race4`` and ``race_scores_fair_4``. A file not given leaves its columns out.
    """
    table: dict[str, list] = {}
    if weights7 is not None:
        r7 = FairFacePredictor(races=7, weights=weights7, device=device).predict_batch(list(crops))
        table["race"] = r7["fairface_race"]
        table["gender"] = r7["fairface_gender"]
        table["age"] = r7["fairface_age"]
        table["race_scores_fair"] = r7["fairface_race_probs"]
        table["gender_scores_fair"] = r7["fairface_gender_probs"]
        table["age_scores_fair"] = r7["fairface_age_probs"]
    if weights4 is not None:
        r4 = FairFacePredictor(races=4, weights=weights4, device=device).predict_batch(list(crops))
        table["race4"] = r4["fairface_race"]
        table["race_scores_fair_4"] = r4["fairface_race_probs"]
    return pd.DataFrame(table, index=range(len(crops)))
