"""The bridge to training: a torch Dataset over extracted crops, splits, and dataset readers.

>>> faces = faceetl.read_faces("faces.parquet")
>>> train_df, val_df = stratified_split(faces, by="race", group="path")
>>> train = FaceDataset(train_df, label_columns=["race", "gender"])
>>> val = FaceDataset(val_df, label_columns=["race", "gender"], classes=train.classes)

Crops are kept as one contiguous byte buffer (plus offsets) and decoded lazily in
``__getitem__``, so the dataset pickles cheaply to DataLoader workers and holds no file handles
nor millions of Python objects (which copy-on-write would duplicate in every worker).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from . import schema
from .images import decode_png

log = logging.getLogger(__name__)

#: label value of a missing label (NaN / None) in an encoded column; ``cross_entropy`` ignores it
IGNORE_INDEX = -100

FAIRFACE_LABEL_COLUMNS = ("age", "gender", "race", "service_test")


def _natural_key(v: Any) -> tuple:
    """Sort key comparing the digit runs of strings as numbers: '3-9' < '10-19' < 'more than 70'."""
    parts = re.split(r"(\d+)", str(v))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "")


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float) and math.isnan(v)


def _to_python(v: Any) -> Any:
    """numpy scalars to Python ones (checkpoints and JSON want plain values)."""
    return v.item() if isinstance(v, np.generic) else v


def _to_pandas(source: Any) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, (str, os.PathLike)):
        return schema.read_faces(os.fspath(source))
    try:
        import dask.dataframe as dd

        if isinstance(source, dd.DataFrame):
            return source.compute()
    except ImportError:  # pragma: no cover - dask is a dependency
        pass
    raise TypeError(
        f"expected a parquet path, a pandas or a Dask DataFrame, got {type(source).__name__}"
    )


def encode_labels(
    values: pd.Series, classes: Sequence[Any] | None = None
) -> tuple[np.ndarray, list[Any] | None]:
    """Encode one label column: ``(codes, classes)``.

    Strings (and categoricals, booleans) become integer indices into ``classes`` (given, the
    categorical's order, or the values sorted with numbers compared as numbers). Integer columns
    stay as they are (their classes are ``0 .. max``), float columns stay floats (classes None:
    a regression target). Missing labels, and labels not in given ``classes``, become
    :data:`IGNORE_INDEX`.
    """
    s = values.reset_index(drop=True)
    numeric_int = (
        pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)
    ) and classes is None
    if numeric_int:
        if (s.dropna() < 0).any():
            raise ValueError(
                f"integer label column {values.name!r} has negative values; "
                "class indices must be >= 0 (use strings to have them encoded)"
            )
        codes = s.to_numpy(np.int64, na_value=IGNORE_INDEX)
        top = int(codes.max()) if len(codes) and (codes >= 0).any() else -1
        return codes, list(range(top + 1))
    if classes is None and pd.api.types.is_float_dtype(s.dtype):
        return s.to_numpy(np.float32, na_value=np.nan), None
    if classes is None:
        if isinstance(s.dtype, pd.CategoricalDtype):
            classes = [_to_python(c) for c in s.dtype.categories]
        else:
            uniq = {_to_python(v) for v in s if not _is_missing(v)}
            classes = sorted(uniq, key=_natural_key)
    classes = [_to_python(c) for c in classes]
    lookup: dict[Hashable, int] = {c: i for i, c in enumerate(classes)}
    # numeric vocabularies also match values that came back as floats or strings of them
    codes = np.full(len(s), IGNORE_INDEX, np.int64)
    unknown = set()
    for i, v in enumerate(s):
        if _is_missing(v):
            continue
        v = _to_python(v)
        k = lookup.get(v)
        if k is None:
            unknown.add(v)
            continue
        codes[i] = k
    if unknown:
        log.warning(
            "column %r: %d label(s) not in the vocabulary are ignored: %s",
            values.name,
            len(unknown),
            sorted(map(str, unknown))[:10],
        )
    return codes, list(classes)


class FaceDataset(Dataset):
    """A torch Dataset of face crops from a face table (parquet path, pandas or Dask DataFrame).

    Keeps the rows whose ``status`` equals ``status`` (``None``: every row with a crop) and
    returns ``(image, labels)``: the crop as a float CHW tensor in [0, 1] (or ``transform`` of
    the crop as a PIL image, or as an RGB uint8 array with ``transform_input="numpy"``) and a dict
    of label values per column in ``label_columns`` (class indices for string columns, encoded
    with the vocabulary in ``classes[col]``; numeric columns as they are). Pass ``classes`` (e.g.
    ``train.classes``) so a validation set uses the training vocabulary.
    """

    def __init__(
        self,
        source: str | os.PathLike | pd.DataFrame | Any,
        label_columns: Sequence[str] | str | None = None,
        transform: Callable[[Any], Any] | None = None,
        status: str | None = schema.STATUS_OK,
        classes: Mapping[str, Sequence[Any] | None] | None = None,
        transform_input: str = "pil",
    ) -> None:
        if transform_input not in ("pil", "numpy"):
            raise ValueError("transform_input must be 'pil' or 'numpy'")
        df = _to_pandas(source)
        if isinstance(label_columns, str):
            label_columns = [label_columns]
        self.label_columns: list[str] = list(label_columns or [])
        missing = [c for c in self.label_columns if c not in df.columns]
        if missing:
            raise KeyError(f"label columns {missing} are not in the table ({list(df.columns)})")
        has_crop = df["crop"].notna() if "crop" in df.columns else pd.Series(False, df.index)
        has_path = (
            df["crop_path"].notna() if "crop_path" in df.columns else pd.Series(False, df.index)
        )
        if "crop" not in df.columns and "crop_path" not in df.columns:
            raise KeyError("the table has neither a 'crop' nor a 'crop_path' column")
        keep = (has_crop | has_path).to_numpy(bool)
        if status is not None:
            if "status" not in df.columns:
                raise KeyError("the table has no 'status' column (pass status=None)")
            keep = keep & (df["status"] == status).fillna(False).to_numpy(bool)
        df = df.loc[keep]
        crops = df["crop"] if "crop" in df.columns else pd.Series([None] * len(df), df.index)
        paths = (
            df["crop_path"] if "crop_path" in df.columns else pd.Series([None] * len(df), df.index)
        )
        blobs = [b"" if _is_missing(c) else bytes(c) for c in crops]
        lengths = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
        self._offsets = np.zeros(len(blobs) + 1, np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(blobs), np.uint8) if blobs else np.zeros(0, np.uint8)
        del blobs
        # fixed-width unicode: no per-row Python objects; "" where the bytes are in the buffer
        self._paths = np.array(
            [
                "" if _is_missing(p) or n > 0 else os.fspath(p)
                for p, n in zip(paths, lengths, strict=True)
            ],
            dtype=str,
        )
        self._frame = df.drop(columns=[c for c in ("crop",) if c in df.columns]).reset_index(
            drop=True
        )
        self.classes: dict[str, list[Any] | None] = {}
        self._labels: dict[str, np.ndarray] = {}
        given = dict(classes or {})
        for col in self.label_columns:
            codes, vocab = encode_labels(df[col], given.get(col))
            self._labels[col] = codes
            self.classes[col] = vocab
        self.transform = transform
        self.transform_input = transform_input

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def frame(self) -> pd.DataFrame:
        """The kept rows (index 0..len-1, same order as the dataset) without the crop bytes."""
        return self._frame

    @property
    def num_classes(self) -> dict[str, int | None]:
        """Classes per label column (None for a float / regression column)."""
        return {c: None if v is None else len(v) for c, v in self.classes.items()}

    def labels(self, column: str) -> np.ndarray:
        """The encoded labels of ``column`` for every row (a copy)."""
        return self._labels[column].copy()

    def crop_bytes(self, index: int) -> bytes:
        """The encoded (PNG) crop of row ``index``, from the table or from its ``crop_path``."""
        a, b = self._offsets[index], self._offsets[index + 1]
        if b > a:
            return self._buffer[a:b].tobytes()
        path = str(self._paths[index])
        if not path:
            raise ValueError(f"row {index} has no crop")
        with open(path, "rb") as f:
            return f.read()

    def image(self, index: int) -> np.ndarray:
        """The crop of row ``index`` as an RGB uint8 array (H, W, 3)."""
        return decode_png(self.crop_bytes(index))

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} faces")
        rgb = self.image(index)
        if self.transform is not None:
            if self.transform_input == "pil":
                from PIL import Image

                x = self.transform(Image.fromarray(rgb))
            else:
                x = self.transform(rgb)
        else:
            x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)
        labels = {c: self._labels[c][index].item() for c in self.label_columns}
        return x, labels

    def with_classes(self, classes: Mapping[str, Sequence[Any] | None]) -> FaceDataset:
        """A copy of this dataset with its labels re-encoded in the vocabularies ``classes``."""
        import copy

        out = copy.copy(self)
        out.classes = dict(self.classes)
        out._labels = dict(self._labels)
        for col in self.label_columns:
            if col not in classes or classes[col] == self.classes[col]:
                continue
            old = self.classes[col]
            codes = self._labels[col]
            if old is None or classes[col] is None:
                raise ValueError(f"column {col!r}: cannot map between numeric and class labels")
            values = pd.Series(
                [None if k == IGNORE_INDEX else old[k] for k in codes], dtype=object, name=col
            )
            out._labels[col], out.classes[col] = encode_labels(values, classes[col])
        return out

    def __repr__(self) -> str:
        return (
            f"FaceDataset({len(self)} faces, labels={self.num_classes}, "
            f"transform={self.transform!r})"
        )


def stratified_split(
    df: pd.DataFrame | Any,
    by: str | Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    group: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into ``(train_df, val_df)`` stratified on the column(s) ``by``.

    About ``val_fraction`` of each class goes to validation; every class of every ``by`` column
    with at least 2 rows is on both sides (with ``group``, where its groups allow it). With
    ``group`` (e.g. ``"path"``) all rows sharing a value of that column land on the same side,
    so faces of one photo never leak across. Deterministic for a ``seed``; row order and index
    are kept.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    df = _to_pandas(df)
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise ValueError("stratify 'by' at least one column")
    missing = [c for c in [*by, *([group] if group else [])] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the frame")
    if len(df) == 0:
        return df.iloc[:0], df.iloc[:0]
    rng = np.random.default_rng(seed)
    codes = np.stack(
        [pd.factorize(df[c], use_na_sentinel=False, sort=False)[0] for c in by], axis=1
    ).astype(np.int64)
    if group is None:
        val = _split_rows(codes, val_fraction, rng)
    else:
        gcodes = pd.factorize(df[group], use_na_sentinel=False)[0]
        val = _split_groups(codes, gcodes, val_fraction, rng)
    return df.iloc[np.flatnonzero(~val)], df.iloc[np.flatnonzero(val)]


def _split_rows(codes: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Row-level split: each stratum (combination of classes) shuffled and cut at ``frac``."""
    n = len(codes)
    val = np.zeros(n, bool)
    strata = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)
    pool = []  # rows of single-row strata (combinations seen once), split together below
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        if len(idx) < 2:
            pool.extend(idx.tolist())
            continue
        rng.shuffle(idx)
        nv = min(len(idx) - 1, max(1, int(round(frac * len(idx)))))
        val[idx[:nv]] = True
    if pool:
        # a row holding a class seen once in some column stays in train (it cannot be learnt
        # from validation); the others are cut at the same fraction
        singles = np.zeros(n, bool)
        for j in range(codes.shape[1]):
            _, inv, cnt = np.unique(codes[:, j], return_inverse=True, return_counts=True)
            singles |= cnt[inv.reshape(-1)] == 1
        free = np.array([i for i in pool if not singles[i]], np.int64)
        rng.shuffle(free)
        val[free[: int(round(frac * len(free)))]] = True
    _repair_rows(codes, val, rng)
    return val


def _repair_rows(codes: np.ndarray, val: np.ndarray, rng: np.random.Generator) -> None:
    """Move single rows so every class with >= 2 rows of every column is on both sides."""
    for _ in range(3):
        changed = False
        for j in range(codes.shape[1]):
            col = codes[:, j]
            for c in np.unique(col):
                idx = np.flatnonzero(col == c)
                if len(idx) < 2:
                    continue
                nv = int(val[idx].sum())
                if nv == 0 or nv == len(idx):
                    side = val[idx[0]]  # the side that holds them all
                    # move the row whose own classes are most plentiful on that side
                    best, best_score = None, -1
                    for i in rng.permutation(idx)[:50]:
                        score = min(
                            int(((codes[:, m] == codes[i, m]) & (val == side)).sum())
                            for m in range(codes.shape[1])
                        )
                        if score > best_score:
                            best, best_score = i, score
                    val[best] = not side
                    changed = True
        if not changed:
            return


def _split_groups(
    codes: np.ndarray, gcodes: np.ndarray, frac: float, rng: np.random.Generator
) -> np.ndarray:
    """Group-level split: whole groups assigned greedily to match each class's target share."""
    ncols = codes.shape[1]
    ngroups = int(gcodes.max()) + 1 if len(gcodes) else 0
    # per column, a (groups, classes) count matrix
    counts = []
    for j in range(ncols):
        m = np.zeros((ngroups, int(codes[:, j].max()) + 1), np.int64)
        np.add.at(m, (gcodes, codes[:, j]), 1)
        counts.append(m)
    totals = [m.sum(0) for m in counts]
    targets = [frac * t for t in totals]
    total_rows = len(codes)
    sizes = np.bincount(gcodes, minlength=ngroups)

    def cost(cs: list[np.ndarray], rows: float) -> float:
        c = sum(
            float((((x - t) / np.maximum(tot, 1)) ** 2).sum())
            for x, t, tot in zip(cs, targets, totals, strict=True)
        )
        return c + ((rows - frac * total_rows) / max(total_rows, 1)) ** 2

    def greedy(order: np.ndarray) -> tuple[float, np.ndarray]:
        chosen = np.zeros(ngroups, bool)
        cur = [np.zeros_like(t, dtype=np.float64) for t in totals]
        rows = 0.0
        for g in order:
            with_g = [x + m[g] for x, m in zip(cur, counts, strict=True)]
            if cost(with_g, rows + sizes[g]) < cost(cur, rows):
                chosen[g] = True
                cur = with_g
                rows += sizes[g]
        return cost(cur, rows), chosen

    # greedy placement, big groups first (random order among equals), then a few random orders
    # (few groups: one big group first can overshoot the fraction); the best assignment wins
    first = rng.permutation(ngroups)
    orders = [first[np.argsort(-sizes[first], kind="stable")]]
    restarts = 32 if ngroups <= 500 else (4 if ngroups <= 20_000 else 0)
    orders += [rng.permutation(ngroups) for _ in range(restarts)]
    best_cost, in_val = math.inf, np.zeros(ngroups, bool)
    for order in orders:
        c, chosen = greedy(order)
        if c < best_cost - 1e-12:
            best_cost, in_val = c, chosen
    # repair: each class with >= 2 rows and >= 2 groups on both sides, if some group can move
    for _ in range(3):
        changed = False
        for m in counts:
            for c in range(m.shape[1]):
                holders = np.flatnonzero(m[:, c] > 0)
                if m[:, c].sum() < 2 or len(holders) < 2:
                    continue
                nv = int(in_val[holders].sum())
                if 0 < nv < len(holders):
                    continue
                side = bool(in_val[holders[0]])
                # move the holder group whose departure leaves its other classes still covered
                best, best_score = None, None
                for g in rng.permutation(holders)[:50]:
                    ok = True
                    for mm in counts:
                        same_side = in_val == side
                        left = mm[same_side].sum(0) - mm[g]
                        lost = (mm[g] > 0) & (left == 0) & (mm.sum(0) >= 2)
                        if lost.any():
                            ok = False
                            break
                    score = (0 if ok else 1, sizes[g])
                    if best_score is None or score < best_score:
                        best, best_score = g, score
                in_val[best] = not side
                changed = True
        if not changed:
            break
    return in_val[gcodes]


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


__all__ = [
    "FAIRFACE_LABEL_COLUMNS",
    "IGNORE_INDEX",
    "FaceDataset",
    "encode_labels",
    "read_fairface",
    "stratified_split",
]
