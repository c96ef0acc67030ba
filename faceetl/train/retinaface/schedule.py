"""The published RetinaFace training settings and learning-rate schedule (biubug6
``data/config.py`` and ``train.py``): SGD at ``lr`` divided by ten at 76 % and 88 % of the epochs,
after an optional linear warm-up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: the published training settings (biubug6 data/config.py cfg_mnet / cfg_re50)
PUBLISHED: dict[str, dict[str, Any]] = {
    "mobilenet0.25": {"image_size": 640, "batch_size": 32, "epochs": 250, "decay": (190, 220)},
    "resnet50": {"image_size": 840, "batch_size": 24, "epochs": 100, "decay": (70, 90)},
}


def learning_rate(
    iteration: int,
    lr: float,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_iterations: int = 0,
) -> float:
    """The reference schedule: linear warm-up from 1e-6, then ``lr * gamma ** k`` after the
    ``k``-th milestone (iterations)."""
    if warmup_iterations > 0 and iteration < warmup_iterations:
        return 1e-6 + (lr - 1e-6) * iteration / warmup_iterations
    return lr * gamma ** sum(iteration >= m for m in milestones)


def default_milestones(network: str, epochs: int) -> tuple[float, float]:
    """The published decay epochs scaled to ``epochs`` (mobilenet 190/220 of 250, resnet50
    70/90 of 100)."""
    pub = PUBLISHED[network]
    return tuple(d / pub["epochs"] * epochs for d in pub["decay"])  # type: ignore[return-value]


__all__ = ["PUBLISHED", "default_milestones", "learning_rate"]
