"""FairFace (Karkkainen & Joo 2021): the image folders and label CSVs as a frame of paths."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

FAIRFACE_LABEL_COLUMNS = ("age", "gender", "race", "service_test")


def read_fairface(
    root: str | os.PathLike,
    split: str = "train",
    labels: str | os.PathLike | None = None,
    check_files: bool = True,
) -> pd.DataFrame:
    """The FairFace split ``"train"`` or ``"val"`` as a frame: absolute ``path`` plus the labels.

    Expects the FairFace layout: ``root/train/1.jpg ...``, ``root/val/...`` and the label files
    ``fairface_label_train.csv`` / ``fairface_label_val.csv`` (columns ``file, age, gender, race,
    service_test``) in ``root`` (or its parent; or give ``labels``). The result feeds
    :func:`faceetl.read_images` / :func:`faceetl.extract_faces`, which carry the labels through.
    The ``file`` column is kept as it is in the csv.
    """
    if split not in ("train", "val"):
        raise ValueError("split must be 'train' or 'val'")
    root = Path(root).expanduser().resolve()
    if labels is None:
        name = f"fairface_label_{split}.csv"
        candidates = [root / name, root.parent / name]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{name} not found in {root} or {root.parent}")
        labels = found[0]
    df = pd.read_csv(labels)
    if "file" not in df.columns:
        raise ValueError(f"{labels}: no 'file' column (columns: {list(df.columns)})")
    paths = [str(_fairface_path(root, split, f)) for f in df["file"].astype(str)]
    if check_files:
        absent = [p for p in paths if not os.path.exists(p)]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} of {len(paths)} FairFace images are missing, e.g. {absent[:3]}"
            )
    out = pd.DataFrame({"path": paths})
    for c in df.columns:
        out[c] = df[c].to_numpy()
    return out


def _fairface_path(root: Path, split: str, file: str) -> Path:
    p = Path(file)
    if p.is_absolute():
        return p
    if p.parts and p.parts[0] in ("train", "val"):
        return root / p
    return root / split / p


__all__ = ["FAIRFACE_LABEL_COLUMNS", "read_fairface"]
