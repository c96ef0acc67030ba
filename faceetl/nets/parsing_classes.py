"""The 19 CelebAMask-HQ classes of the face-parsing models, in the released model's output order
(background first), without torch: the architecture and the data set both name them."""

from __future__ import annotations

CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
