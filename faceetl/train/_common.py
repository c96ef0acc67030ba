"""Helpers every trainer shares: autocast, atomic checkpoints, checkpoint-safe values, progress."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"


def autocast(device: torch.device, amp: bool):
    """Mixed precision when ``amp``: float16 on CUDA, bfloat16 elsewhere."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp)


def save(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file, so a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def plain(v: Any) -> Any:
    """Checkpoint-safe (``weights_only``) Python values: numpy scalars, paths, containers."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def progress(it: Any, enabled: bool, desc: str, unit: str = "batch") -> Any:
    """``it`` wrapped in a tqdm bar (notebook-aware) when ``enabled``."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit=unit, leave=True)


def checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    """The checkpoint file: ``checkpoint`` itself, or ``last.pt`` inside a folder."""
    p = Path(checkpoint)
    return p / LAST if p.is_dir() else p
