"""Model predictions on the face DataFrame: the same rows, new columns. Never knows which model.

``predict(faces, model="fairface")`` maps each partition of faces to the predictor's columns. The
predictor says which crop it wants: the ``crop`` column as it is, or its own alignment (e.g.
FairFace's 300 px dlib chip) made from each face's landmarks in the original image, which is then
read once per image. Rows without a face get empty predictions and stay in place.

Crop files (``crop_path``) and originals (``path``) may be local paths or fsspec URLs
(``s3://``, ``gs://``, ``memory://``, ...), read with ``storage_options``.
"""

from __future__ import annotations

import json
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from .. import config, schema, storage
from ..align import estimate_transform, warp
from ..images import decode_png, load_image
from ..predictors.base import REGISTRY, get_predictor, output_columns
from .progress import images_planned, remember_images


def _crops_for(
    part: pd.DataFrame,
    rows: np.ndarray,
    spec: Any,
    storage_options: dict[str, Any] | None = None,
) -> dict[int, np.ndarray | Exception]:
    """RGB crops for the ok rows of ``part`` (by position), as the predictor wants them.

    The stored crop is the ``crop`` bytes, else the file at ``crop_path``; an aligned crop is
    made from the original at ``path``. Both may be URLs, read with ``storage_options``.
    """
    out: dict[int, np.ndarray | Exception] = {}
    if spec is None:
        for i in rows:
            try:
                data = part["crop"].iloc[i]
                if data is None or data is pd.NA or (isinstance(data, float) and np.isnan(data)):
                    data = storage.read_bytes(part["crop_path"].iloc[i], storage_options)
                out[i] = decode_png(bytes(data))
            except Exception as e:
                out[i] = e
        return out
    paths = part["path"].iloc[rows]
    for path, idx in pd.Series(rows, index=paths.values).groupby(level=0, sort=False):
        try:
            image = load_image(path, storage_options=storage_options)
        except Exception as e:
            out.update({int(i): e for i in idx})
            continue
        for i in idx:
            lm = part["landmarks"].iloc[i]
            box = schema.boxes_array(part.iloc[[i]])[0]
            lm = None if lm is None else np.asarray(lm, np.float64).reshape(5, 2)
            m, _ = estimate_transform(lm, box, spec)
            out[int(i)] = warp(image, m, spec.size)
    return out


def predict_partition(
    part: pd.DataFrame,
    model: str,
    params: dict[str, Any],
    batch_size: int = 32,
    plugin: Any = None,
    storage_options: dict[str, Any] | None = None,
    settings: config.Settings | None = None,
) -> pd.DataFrame:
    """``part`` with the predictor's columns appended (one partition of a face DataFrame).

    ``plugin``: the registry entry of a predictor registered outside faceetl, for workers.
    ``storage_options``: those of the ``crop_path`` and ``path`` URLs the crops are read from.
    ``settings``: faceetl's settings captured on the driver (weights mirror, offline, pixel
    limit), in force while the partition runs.
    """
    with config.applied(settings):
        return _predict_partition(part, model, params, batch_size, plugin, storage_options)


def _predict_partition(
    part: pd.DataFrame,
    model: str,
    params: dict[str, Any],
    batch_size: int,
    plugin: Any,
    storage_options: dict[str, Any] | None,
) -> pd.DataFrame:
    REGISTRY.ensure(plugin)
    cols = output_columns(model, **params)
    values: dict[str, list] = {c: [None] * len(part) for c in cols}
    model_cols = [c for c in cols if c != f"{model}_provenance"]
    ok = np.flatnonzero((part["status"] == schema.STATUS_OK).to_numpy())
    if len(ok):
        predictor = get_predictor(model, **params)
        prov = json.dumps(predictor.provenance(), sort_keys=True, default=str)
        crops = _crops_for(part, ok, predictor.align, storage_options)
        good = [i for i in ok if not isinstance(crops[i], Exception)]  # unreadable: left empty
        for s in range(0, len(good), batch_size):
            chunk = good[s : s + batch_size]
            res = predictor.predict_batch([crops[i] for i in chunk])
            for c in model_cols:
                for i, v in zip(chunk, res[c], strict=True):
                    values[c][i] = v
        for i in ok:
            values[f"{model}_provenance"][i] = prov
    out = part.copy()
    for c, dtype in cols.items():
        out[c] = pd.Series(values[c], index=part.index, dtype=dtype)
    return out


def predict(
    faces: dd.DataFrame | pd.DataFrame,
    model: str,
    batch_size: int = 32,
    storage_options: dict[str, Any] | None = None,
    **params: Any,
):
    """Add predictor ``model``'s columns to a face DataFrame (lazy for Dask, eager for pandas).

    ``params`` go to the predictor's constructor. ``storage_options`` are those of the
    ``crop_path`` / ``path`` URLs crops are read from (for fsspec; never passed to the model).
    """
    REGISTRY.check(model, params)  # unknown models and parameters fail here, not on workers
    if isinstance(faces, pd.DataFrame):
        return predict_partition(faces, model, params, batch_size, storage_options=storage_options)
    cols = output_columns(model, **params)
    clash = sorted(set(cols) & set(faces.columns))
    if clash:
        raise ValueError(
            f"columns {clash} exist already: predictions of {model!r} were added before"
        )
    meta = faces._meta.copy()
    for c, dtype in cols.items():
        meta[c] = pd.Series([], dtype=dtype)
    out = faces.map_partitions(
        predict_partition,
        model,
        dict(params),
        batch_size,
        REGISTRY.plugin(model),
        storage_options=storage_options,
        settings=config.capture(),
        meta=meta,
    )
    return remember_images(out, images_planned(faces))
