"""Model predictions on the face DataFrame: the same rows, new columns. Never knows which model.

``predict(faces, model="fairface")`` maps each partition of faces to the predictor's columns. The
predictor says which crop it wants: the ``crop`` column as it is, or its own alignment (e.g.
FairFace's 300 px dlib chip) made from each face's landmarks in the original image, which is then
read once per image. Rows without a face get empty predictions and stay in place. A predictor
that says ``uses_rows`` (quality: landmarks, box, image size) also gets its crops' rows.

Crop files (``crop_path``) and originals (``path``) may be local paths or fsspec URLs
(``s3://``, ``gs://``, ``memory://``, ...), read with ``storage_options``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import config, schema, storage
from ..align import crop_face, estimate_transform
from ..images import decode_png, load_image
from ..predictors.base import REGISTRY, get_predictor, output_columns, uses_rows
from .cluster import one_model_thread
from .progress import images_planned, remember_images

if TYPE_CHECKING:  # dask.dataframe loads on first use: it is most of faceetl's import time
    import dask.dataframe as dd


def _crops_for(
    part: pd.DataFrame,
    rows: np.ndarray,
    spec: Any,
    storage_options: dict[str, Any] | None = None,
    images: dict[str, np.ndarray] | None = None,
) -> dict[int, np.ndarray | Exception]:
    """RGB crops for the ok rows of ``part`` (by position), as the predictor wants them.

    The stored crop is the ``crop`` bytes, else the file at ``crop_path``; an aligned crop is
    made from the original at ``path`` (on the face's native ``shape`` where the frame has one),
    unless the stored crop was made with the same geometry (template, size, padding) and is
    lossless: then it is used as it is and the original is not read again. ``images``: originals
    already in memory (the fused form of :func:`faceetl.extract_faces`). Paths may be URLs,
    read with ``storage_options``.
    """
    out: dict[int, np.ndarray | Exception] = {}
    if spec is not None and images is None:
        same = [i for i in rows if _stored_crop_fits(part, int(i), spec)]
        if same:
            out.update(_crops_for(part, np.asarray(same), None, storage_options))
            rows = np.asarray([i for i in rows if int(i) not in out])
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
            if images is not None and path in images:
                image = images[path]
            else:
                image = load_image(path, storage_options=storage_options)
        except Exception as e:
            out.update({int(i): e for i in idx})
            continue
        for i in idx:
            lm = part["landmarks"].iloc[i]
            box = schema.boxes_array(part.iloc[[i]])[0]
            lm = None if lm is None else np.asarray(lm, np.float64).reshape(5, 2)
            # the backend's native shape (dlib's 68 or 5 points): dlib chips are fitted on it
            shape = part["shape"].iloc[i] if "shape" in part.columns else None
            m, _ = estimate_transform(lm, box, spec, shape)
            out[int(i)] = crop_face(image, m, spec)
    return out


def _stored_crop_fits(part: pd.DataFrame, i: int, spec: Any) -> bool:
    """True when row ``i``'s stored crop was made with ``spec``'s geometry and is lossless PNG."""
    if "provenance" not in part.columns:
        return False
    crop = part["crop"].iloc[i] if "crop" in part.columns else None
    has_bytes = crop is not None and crop is not pd.NA and not isinstance(crop, float)
    if has_bytes:
        if not bytes(crop[:4]).startswith(b"\x89PNG"):
            return False
    else:
        path = part["crop_path"].iloc[i] if "crop_path" in part.columns else None
        if not isinstance(path, str) or not path.endswith(".png"):
            return False
    try:
        made = json.loads(part["provenance"].iloc[i] or "{}").get("align", {})
    except (TypeError, ValueError):
        return False
    want = {"template": spec.template, "size": spec.size, "padding": spec.padding}
    return {k: made.get(k) for k in want} == want


def predict_rows(
    frame: pd.DataFrame,
    models: list[tuple[str, dict[str, Any]]],
    images: dict[str, np.ndarray],
    batch_size: int = 32,
    plugins: list[Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """``frame`` with every model's columns, the crops made from ``images`` in memory (the
    originals of the frame's paths): one decode per image for detection and all predictions."""
    for k, (model, params) in enumerate(models):
        plugin = None if plugins is None else plugins[k]
        frame = _predict_partition(
            frame, model, params, batch_size, plugin, storage_options, images=images
        )
    return frame


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
    with config.applied(settings), one_model_thread():
        return _predict_partition(part, model, params, batch_size, plugin, storage_options)


def _predict_partition(
    part: pd.DataFrame,
    model: str,
    params: dict[str, Any],
    batch_size: int,
    plugin: Any,
    storage_options: dict[str, Any] | None,
    images: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    REGISTRY.ensure(plugin)
    cols = output_columns(model, **params)
    values: dict[str, list] = {c: [None] * len(part) for c in cols}
    model_cols = [c for c in cols if c != f"{model}_provenance"]
    ok = np.flatnonzero((part["status"] == schema.STATUS_OK).to_numpy())
    if len(ok):
        predictor = get_predictor(model, **params)
        prov = json.dumps(predictor.provenance(), sort_keys=True, default=str)
        crops = _crops_for(part, ok, predictor.align, storage_options, images)
        good = [i for i in ok if not isinstance(crops[i], Exception)]  # unreadable: left empty
        for s in range(0, len(good), batch_size):
            chunk = good[s : s + batch_size]
            # a predictor that measures more than the crop gets the crops' rows too
            extra = {"rows": part.iloc[chunk]} if uses_rows(predictor) else {}
            res = predictor.predict_batch([crops[i] for i in chunk], **extra)
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
