"""The bridge to training: a torch Dataset over the crops of a face table.

>>> faces = faceetl.read_faces("faces.parquet")
>>> train_df, val_df = stratified_split(faces, by="race", group="path")
>>> train = FaceDataset(train_df, label_columns=["race", "gender"])
>>> val = FaceDataset(val_df, label_columns=["race", "gender"], classes=train.classes)

Crops are kept as one contiguous byte buffer (plus offsets) and decoded lazily in
``__getitem__``, so the dataset pickles cheaply to DataLoader workers and holds no file handles
nor millions of Python objects (which copy-on-write would duplicate in every worker).

The table, and the crop files its ``crop_path`` names, may be local or at fsspec URLs
(``s3://``, ``gs://``, ``memory://``, ...): ``FaceDataset("s3://bucket/faces.parquet",
storage_options={...})``. Only the ``storage_options`` dict is kept (it pickles to workers;
fsspec makes, and caches, the filesystem in each process).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .. import schema, storage
from ..images import decode_png
from .table import IGNORE_INDEX, _is_missing, as_pandas, encode_labels


class FaceDataset(Dataset):
    """A torch Dataset of face crops from a face table (parquet path, pandas or Dask DataFrame).

    Keeps the rows whose ``status`` equals ``status`` (``None``: every row with a crop) and
    returns ``(image, labels)``: the crop as a float CHW tensor in [0, 1] (or ``transform`` of
    the crop as a PIL image, or as an RGB uint8 array with ``transform_input="numpy"``) and a dict
    of label values per column in ``label_columns`` (class indices for string columns, encoded
    with the vocabulary in ``classes[col]``; numeric columns as they are). Pass ``classes`` (e.g.
    ``train.classes``) so a validation set uses the training vocabulary.

    ``source`` and the ``crop_path`` files may be fsspec URLs, read with ``storage_options``.
    """

    def __init__(
        self,
        source: str | os.PathLike | pd.DataFrame | Any,
        label_columns: Sequence[str] | str | None = None,
        transform: Callable[[Any], Any] | None = None,
        status: str | None = schema.STATUS_OK,
        classes: Mapping[str, Sequence[Any] | None] | None = None,
        transform_input: str = "pil",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if transform_input not in ("pil", "numpy"):
            raise ValueError("transform_input must be 'pil' or 'numpy'")
        self.storage_options: dict[str, Any] | None = (
            None if storage_options is None else dict(storage_options)
        )
        df = as_pandas(source, storage_options=self.storage_options)
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
        """The encoded (PNG) crop of row ``index``, from the table or from its ``crop_path``
        (a local path or a URL, read with the dataset's ``storage_options``)."""
        a, b = self._offsets[index], self._offsets[index + 1]
        if b > a:
            return self._buffer[a:b].tobytes()
        path = str(self._paths[index])
        if not path:
            raise ValueError(f"row {index} has no crop")
        return storage.read_bytes(path, self.storage_options)

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


__all__ = ["FaceDataset"]
