"""FairFace's classifier (Karkkainen & Joo 2021): torchvision's ResNet-34 with ``fc`` 512 -> 18
(7 race, 2 gender, 9 age logits), so the released state dicts load strictly; its release record.

The authors publish their models in a Google Drive folder and no hash of them, so the record is
trust on first use (:mod:`faceetl.weights`): the first file downloaded has its sha256 recorded in
FACEETL_HOME, and any other file is refused afterwards.
"""

from __future__ import annotations

import os

from ..weights import load_strict, register_weights
from .resnet import ResNet

N_OUTPUTS = 18

#: the 7-race model of 2019-08-09, ``res34_fair_align_multi_7_20190809.pt`` (FairFace's default)
FAIRFACE_RACE7_WEIGHTS = "fairface_res34_race7_20190809"
#: Google Drive file id of that file, as the authors' README linked it directly (dchen236/FairFace
#: commit ca92c03, 2021-11-03; the README links the folder holding it before and after). The
#: README does not name the file behind the id; public scripts that fetch it save and load it as
#: this state dict (torch.hub.load_state_dict_from_url, fc 512->18). The other released files
#: (4-race, 2019-11-11) have no direct link from the authors: not downloaded.
_DRIVE_ID_RACE7 = "113QMzQzkBDmYMs9LwzvD-jxEZdBQ5J4X"

register_weights(
    FAIRFACE_RACE7_WEIGHTS,
    # Drive's direct download; confirm=t skips the "cannot scan for viruses" page of large files
    f"https://drive.usercontent.google.com/download?id={_DRIVE_ID_RACE7}&export=download&confirm=t",
    None,  # no hash published anywhere we could find
    filename="res34_fair_align_multi_7_20190809.pt",
    description="FairFace ResNet-34, 7 races + gender + age (18 logits), 2019-08-09",
    trust_on_first_use=True,
    licence="not stated (dchen236/FairFace has no licence file; the dataset is CC BY 4.0)",
    colour="RGB",
    mean=(0.485, 0.456, 0.406),  # ImageNet normalisation of [0, 1] pixels (predict.py)
    std=(0.229, 0.224, 0.225),
    input_size=(224, 224),
)


def build_resnet34(num_outputs: int = N_OUTPUTS) -> ResNet:
    """torchvision's ``resnet34()`` with ``fc = Linear(512, num_outputs)``, same state-dict keys."""
    return ResNet(34, num_classes=num_outputs)


def load_model(source: str | os.PathLike | dict) -> ResNet:
    """A FairFace ResNet-34 from a state dict in the released layout (strict), in eval mode.

    Files saved by torch < 0.4.1 lack BatchNorm's (unused in eval) batch counters: allowed.
    """
    what = f"FairFace ResNet-34 (torchvision resnet34 keys with fc 512->{N_OUTPUTS})"
    return load_strict(build_resnet34(N_OUTPUTS), source, what).eval()
