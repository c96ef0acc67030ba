"""Compare face embeddings: distances (:func:`compare`) and same-person decisions (:func:`verify`).

Each model is compared the way its authors compare it:

- ``"dlib"`` (dlib's ResNet, 128-d): Euclidean distance of the raw descriptors, the same person
  when it is at most 0.6. dlib's ``dnn_face_recognition_ex`` uses ``length(a - b) < 0.6`` and
  ``face_recognition.compare_faces`` ``face_distance(...) <= tolerance`` with ``tolerance=0.6``
  ("0.6 is typical best performance"); faceetl follows face_recognition's ``<=``. The threshold
  is defined on the raw descriptors (``embedding_vector``), not on normalised ones.
- ``"facenet"`` (facenet-pytorch's InceptionResnetV1, VGGFace2, 512-d unit vectors): Euclidean
  distance of the unit vectors, as facenet-pytorch's ``examples/infer.ipynb`` prints
  (``(e1 - e2).norm()``). No threshold is published: David Sandberg's ``validate_on_lfw.py``
  (``facenet.calculate_roc``) and facenet-pytorch's ``examples/lfw_evaluate.ipynb`` pick it per
  LFW fold by cross-validation (on the *squared* distance, over ``np.arange(0, 4, 0.01)``), and
  neither README gives one. So :func:`verify` needs ``threshold=`` for facenet (a squared-distance
  threshold ``t`` from such an evaluation is ``sqrt(t)`` here).

Inputs are vectors (``(d,)``), stacks of vectors (``(n, d)``; leading axes broadcast as numpy
does, so ``compare(a[:, None], b[None])`` gives all pairs), or faceetl frames: a DataFrame of
faces (its ``embedding_vector`` column), one row of it, or that column.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: embedding length per model
DIMS: dict[str, int] = {"dlib": 128, "facenet": 512}
#: the authors' same-person thresholds on :func:`compare`'s distance; None: none published
THRESHOLDS: dict[str, float | None] = {"dlib": 0.6, "facenet": None}
#: the frame column holding the vectors compared (dlib's threshold is on the raw descriptor)
COLUMN = "embedding_vector"


def _check_model(model: str) -> str:
    if model not in DIMS:
        raise ValueError(f"unknown embedding model {model!r}; choose one of {sorted(DIMS)}")
    return model


def l2_normalize(x: Any, axis: int = -1) -> np.ndarray:
    """``x`` (float32) divided by its L2 norm along ``axis``; a zero vector stays zero."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def vectors(x: Any, model: str = "dlib") -> np.ndarray:
    """The float32 embeddings in ``x`` (an array, a list of vectors, a faces DataFrame, one row
    of it or its ``embedding_vector`` column), checked against ``model``'s length and, for
    frames, its ``embedding_network``."""
    _check_model(model)
    import pandas as pd

    if hasattr(x, "dask") and hasattr(x, "compute"):
        raise TypeError("compare a computed frame: call .compute() on the Dask frame first")
    if isinstance(x, pd.DataFrame):
        if COLUMN not in x.columns:
            raise ValueError(f"the frame has no {COLUMN!r} column: predict(..., model='embedding')")
        _check_network(x.get("embedding_network"), model)
        x = x[COLUMN]
    elif isinstance(x, pd.Series) and COLUMN in x.index:  # one row of a faces frame
        _check_network(x.get("embedding_network"), model)
        x = x[COLUMN]
        if x is None or x is pd.NA:
            raise ValueError("the row has no embedding (its status is not 'ok')")
    if isinstance(x, pd.Series):  # a column of vectors
        missing = int(x.isna().sum())
        if missing:
            raise ValueError(
                f"{missing} of {len(x)} rows have no embedding (status not 'ok'): "
                "select the rows with status == 'ok' first"
            )
        x = [np.asarray(v, np.float32) for v in x]
        x = np.stack(x) if x else np.zeros((0, DIMS[model]), np.float32)
    arr = np.asarray(x, np.float32)
    dim = DIMS[model]
    if arr.ndim == 0 or arr.shape[-1] != dim:
        raise ValueError(f"{model} embeddings have {dim} values, got an array of shape {arr.shape}")
    return arr


def _check_network(networks: Any, model: str) -> None:
    """Refuse frame rows whose ``embedding_network`` is not ``model``."""
    if networks is None:
        return
    import pandas as pd

    names = set(pd.Series(networks).dropna().astype(str))
    other = names - {model}
    if other:
        raise ValueError(
            f"embeddings of network {sorted(other)} compared as model={model!r}: "
            "pass the model they were computed with"
        )


def compare(a: Any, b: Any, model: str = "dlib") -> float | np.ndarray:
    """Distance between the embeddings ``a`` and ``b`` as ``model``'s authors measure it
    (see the module docstring); a float for two vectors, else an array of the broadcast shape."""
    va, vb = vectors(a, model), vectors(b, model)
    if model == "facenet":
        va, vb = l2_normalize(va), l2_normalize(vb)
    try:
        d = np.linalg.norm(va - vb, axis=-1)
    except ValueError as e:
        raise ValueError(
            f"cannot pair {va.shape[:-1]} embeddings with {vb.shape[:-1]}: give one vector, the "
            "same number, or broadcastable stacks (a[:, None] and b[None] for all pairs)"
        ) from e
    return float(d) if d.ndim == 0 else d.astype(np.float32)


def verify(
    a: Any, b: Any, model: str = "dlib", threshold: float | None = None
) -> bool | np.ndarray:
    """Whether ``a`` and ``b`` show the same person: :func:`compare`'s distance at most
    ``threshold``, by default the one ``model``'s authors publish (dlib: 0.6). FaceNet has no
    published threshold: pass ``threshold=``, chosen on labelled pairs of your own data."""
    _check_model(model)
    if threshold is None:
        threshold = THRESHOLDS[model]
    if threshold is None:
        raise ValueError(
            f"no same-person threshold is published for {model!r} (facenet-pytorch and David "
            "Sandberg's facenet choose it per LFW fold by cross-validation): pass threshold=, a "
            "Euclidean distance between unit vectors chosen on labelled pairs of your own data"
        )
    d = compare(a, b, model)
    return bool(d <= threshold) if isinstance(d, float) else np.asarray(d <= threshold)
