"""Which face goes where: a survey of the faces to write, computed on the workers without crops,
then the split, the classes and the shards decided on the driver.

The survey holds, per ok face, its partition, its position there, its sample key and the
label and split columns: small values only. From it the driver knows every count before a
worker writes, so shards are numbered contiguously from the start and each is written once,
under its final name.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import schema
from ..pipeline.names import HASH_HEX, fit

#: the two sides of a split, as folders and in ``index.json``
TRAIN, VAL = "train", "val"
ALL = "all"  # the one side of an export without a split (its files at the folder's root)
#: characters of a file name kept in a sample key; the rest become '-'
_SLUG = re.compile(r"[^0-9A-Za-z]+")
#: a sample key: an optional slug of the file name, 16 hex digits of the path's sha256, the face
KEY_RE = r"(?:[0-9A-Za-z-]+_)?[0-9a-f]{16}_[0-9]+"
#: what a label value escapes as %XX in a folder name (urllib.parse.unquote reverses it)
_UNSAFE = re.compile(r"[%/\\\x00-\x1f\x7f]")
FOLDER_MAX = 200  # bytes of a label folder's name: room below NAME_MAX for the atomic temporary


def sample_key(path: str, face: int) -> str:
    """The sample key of face ``face`` of input ``path``: stable across runs, unique per
    (path, face), and a plain name (letters, digits, '-', '_'; no '.', which WebDataset reads
    as the start of the extension): ``<file stem>_<16 hex of sha256(path)>_<face>``."""
    stem = os.path.basename(str(path).replace("\\", "/").rstrip("/")).split(".")[0]
    slug = _SLUG.sub("-", stem).strip("-")[:40]
    digest = hashlib.sha256(str(path).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{slug}_{digest}_{int(face)}" if slug else f"{digest}_{int(face)}"


def missing(value: Any) -> bool:
    """Whether a label value is absent: null, NaN or the empty string."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and value == ""


def folder_name(value: Any) -> str:
    """A label value as a safe folder (and class) name: its text with ``%``, ``/``, ``\\`` and
    control characters escaped as ``%XX`` and a leading ``.`` as ``%2E`` (so no value names a
    hidden folder, ``.`` or ``..``); whole floats print as integers (a nullable integer column
    read as floats). ``urllib.parse.unquote`` gives the text back. Names over 200 bytes keep
    their start and end around a ``…`` and a hash of the whole."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value)
    # not urllib.parse.quote: it escapes spaces and every non-ASCII letter too, and names like
    # "José Ortega" should stay readable; only what a folder name cannot hold is escaped
    name = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", text)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name.encode("utf-8", "surrogatepass")) > FOLDER_MAX:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
        name = f"{fit(name, FOLDER_MAX - HASH_HEX - 1)}.{digest}"
    return name


@dataclass(frozen=True)
class Split:
    """How faces are split into train and val: stratified on ``by``; with ``group``, all faces
    sharing its value on one side (:func:`faceetl.stratified_split`). ``by`` the group column
    itself (``"identity"``: by and group) stratifies on nothing: whole groups go to val until
    about ``val_fraction`` of the faces are there."""

    by: tuple[str, ...]
    group: str | None = None
    val_fraction: float = 0.1
    seed: int = 0

    @classmethod
    def parse(cls, split: str | Mapping[str, Any] | Split | None) -> Split | None:
        """``"identity"`` (by and group), ``{"by": ..., "group": ..., "val_fraction": ...,
        "seed": ...}``, a :class:`Split`, or None (no split)."""
        if split is None or isinstance(split, Split):
            return split
        if isinstance(split, str):
            return cls((split,), split)
        if not isinstance(split, Mapping):
            raise TypeError(f"split= takes a column name or a dict, not {type(split).__name__}")
        unknown = sorted(set(split) - {"by", "group", "val_fraction", "seed"})
        if unknown or "by" not in split:
            raise TypeError(f"split= needs 'by' and takes group, val_fraction, seed; got {unknown}")
        by = (split["by"],) if isinstance(split["by"], str) else tuple(split["by"])
        made = cls(by, split.get("group"), float(split.get("val_fraction", 0.1)),
                   int(split.get("seed", 0)))  # fmt: skip
        if not 0.0 < made.val_fraction < 1.0:
            raise ValueError("split's val_fraction must be between 0 and 1")
        return made

    @property
    def columns(self) -> list[str]:
        return [*self.by, *([self.group] if self.group else [])]

    def record(self) -> dict[str, Any]:
        return {"by": list(self.by), "group": self.group, "val_fraction": self.val_fraction,
                "seed": self.seed}  # fmt: skip


def check_columns(columns: Sequence[str], label: str | None, split: Split | None) -> None:
    """The frame has what an export reads (before any worker starts)."""
    need = ["path", "face", "status", *([label] if label else []), *(split.columns if split else [])]
    lacking = [c for c in need if c not in columns]
    if lacking:
        raise KeyError(f"the face frame has no column {lacking[0]!r} (columns: {list(columns)})")
    if "crop" not in columns and "crop_path" not in columns:
        raise KeyError("the face frame has neither 'crop' nor 'crop_path': nothing to export")


def survey_part(
    part: pd.DataFrame,
    number: int,
    label: str | None,
    split: Split | None,
    measure: Callable[[pd.DataFrame], np.ndarray] | None,
) -> pd.DataFrame:
    """Partition ``number``'s ok faces: partition, position, key, label and split columns (as
    ``_label``, ``_by<i>``, ``_group``) and, with ``measure``, each sample's size in bytes."""
    pos = np.flatnonzero(part["status"].astype(str).to_numpy() == schema.STATUS_OK)
    got = part.iloc[pos]
    out = pd.DataFrame({
        "_part": np.full(len(pos), number, np.int64),
        "_pos": pos.astype(np.int64),
        "key": pd.Series([sample_key(p, f) for p, f in zip(got["path"], got["face"], strict=True)],
                         dtype=object),
    })  # fmt: skip
    extra = {"_label": label} if label else {}
    if split is not None:
        extra.update({f"_by{i}": c for i, c in enumerate(split.by)})
        if split.group:
            extra["_group"] = split.group
    for name, column in extra.items():
        out[name] = got[column].reset_index(drop=True)
    if measure is not None:
        out["_size"] = np.asarray(measure(got), np.int64) if len(got) else np.zeros(0, np.int64)
    return out


def survey(
    source: Any, label: str | None, split: Split | None,
    measure: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> pd.DataFrame:  # fmt: skip
    """The survey of a :class:`faceetl.sinks.base.Source`, computed on the workers (on the
    active distributed client, else Dask's local scheduler): only the columns it needs are read
    (all of them with ``measure``, which sizes each sample)."""
    import dask

    cols = None if measure is not None else list(dict.fromkeys(
        ["path", "face", "status", *([label] if label else []), *(split.columns if split else [])]
    ))  # fmt: skip
    tasks = [dask.delayed(survey_part, pure=True)(p, i, label, split, measure)
             for i, p in enumerate(source.parts(cols))]  # fmt: skip
    found = list(dask.compute(*tasks))
    if not found:
        found = [survey_part(source.meta, 0, label, split, measure)]
    return pd.concat(found, ignore_index=True)


@dataclass
class Layout:
    """Where each surveyed face goes: ``rows`` (the survey less the skipped faces, with
    ``side``, ``_cls`` and ``_folder``), the class names, and what was skipped and why."""

    rows: pd.DataFrame
    classes: list[str] | None
    skipped: dict[str, int]


def lay_out(found: pd.DataFrame, label: str | None, split: Split | None) -> Layout:
    """Skip faces without a label (counted), check keys are unique, assign the split's sides
    (:func:`faceetl.stratified_split` on the label and group columns only) and the classes
    (sorted folder names: torchvision's ImageFolder rule, used by every format)."""
    from ..datasets.split import stratified_split

    skipped: dict[str, int] = {}
    rows = found
    if label:
        absent = rows["_label"].map(missing).to_numpy(bool)
        if absent.any():
            skipped[f"no {label} (null or empty)"] = int(absent.sum())
        rows = rows[~absent].reset_index(drop=True)
    dup = rows["key"].duplicated(keep=False)
    if dup.any():
        raise ValueError(
            f"{int(dup.sum())} rows share a (path, face) with another row (key "
            f"{rows['key'][dup].iloc[0]!r}): each face must be in the frame once"
        )
    rows = rows.assign(side=TRAIN if split else "")
    if split is not None and len(rows):
        # a class that is its own group cannot be on both sides: stratifying on the group
        # column itself would keep every group in train, so only the other columns stratify
        by = [f"_by{i}" for i, c in enumerate(split.by) if c != split.group]
        if not by:
            rows["_by"] = 0
            by = ["_by"]
        _, val = stratified_split(rows, by=by, val_fraction=split.val_fraction, seed=split.seed,
                                  group="_group" if split.group else None)  # fmt: skip
        rows.loc[val.index, "side"] = VAL
    classes = None
    if label:
        rows["_folder"] = rows["_label"].map(folder_name)
        classes = sorted(set(rows["_folder"]))
        index = {name: i for i, name in enumerate(classes)}
        rows["_cls"] = rows["_folder"].map(index).astype(np.int64)
    return Layout(rows, classes, skipped)


def sides(split: Split | None) -> list[str]:
    """The sides an export writes: train and val with a split, else one ("": the root)."""
    return [TRAIN, VAL] if split is not None else [""]


def shard_numbers(
    sizes: np.ndarray | None, n: int, shard_size: int | None, shard_bytes: int | None,
    overhead: Callable[[int], int] = lambda total: total,
) -> np.ndarray:  # fmt: skip
    """The shard of each of ``n`` samples in order: a new shard every ``shard_size`` samples,
    or before a sample that would take the shard's ``overhead(total bytes)`` past
    ``shard_bytes`` (a sample larger than that alone gets a shard of its own)."""
    if shard_bytes is None:
        return np.arange(n, dtype=np.int64) // int(shard_size or n or 1)
    out = np.empty(n, np.int64)
    shard = count = total = 0
    for i, size in enumerate(np.asarray(sizes, np.int64).tolist()):
        full = shard_size is not None and count >= shard_size
        if count and (full or overhead(total + size) > shard_bytes):
            shard, count, total = shard + 1, 0, 0
        out[i] = shard
        count, total = count + 1, total + size
    return out
