"""The one predictor protocol and registry: models that add columns to a face DataFrame.

A predictor is a class in its own file under ``faceetl/predictors/`` decorated with
:func:`register_predictor`. It declares the crop it wants (``align``: an :class:`AlignSpec`, made
from each face's landmarks in the original image, or ``None`` to use the ``crop`` column as it is)
and the columns it adds (``columns``: name -> pandas dtype, known without loading the model), and
maps a batch of RGB uint8 crops to those columns. Models load once per worker process.

A predictor that needs more than the crop (the face's landmarks, box, image size: the quality
predictor) says ``uses_rows = True``; its ``predict_batch(crops, rows=...)`` then also gets the
face rows of those crops (a pandas frame in the same order). The attribute is optional (False
where absent), so predictors written before it keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..align import AlignSpec
from ..registry import Registry


@runtime_checkable
class Predictor(Protocol):
    name: str
    align: ClassVar[AlignSpec | None]
    columns: ClassVar[dict[str, Any]]

    def predict_batch(self, crops: list[np.ndarray]) -> dict[str, list]:
        """One value per crop for every name in ``columns``."""
        ...

    def provenance(self) -> dict[str, Any]:
        """Model name, parameters and weights sha256."""
        ...


@dataclass(frozen=True)
class PredictorSpec:
    name: str
    factory: Callable[..., Predictor]
    gpu: bool


REGISTRY: Registry[PredictorSpec] = Registry(
    "model", "faceetl.predictors", ("fairface", "parsing", "embedding", "quality")
)


def register_predictor(name: str, *, gpu: bool = True) -> Callable:
    """Class decorator: make a predictor class available as ``name``."""

    def wrap(factory: Callable[..., Predictor]) -> Callable[..., Predictor]:
        REGISTRY.add(PredictorSpec(name, factory, gpu))
        return factory

    return wrap


def predictor_spec(name: str) -> PredictorSpec:
    return REGISTRY.spec(name)


def list_predictors() -> list[str]:
    return REGISTRY.names()


def get_predictor(name: str, **params: Any) -> Predictor:
    """The loaded predictor for ``name`` and ``params``, loaded once per process."""
    return REGISTRY.get(name, **params)


def output_columns(name: str, **params: Any) -> dict[str, Any]:
    """The columns predictor ``name`` adds (without loading it), plus its provenance column."""
    factory = predictor_spec(name).factory
    cols = (
        factory.output_columns(**params) if hasattr(factory, "output_columns") else factory.columns
    )
    return {**cols, f"{name}_provenance": "string[pyarrow]"}


def uses_rows(predictor: Any) -> bool:
    """Whether ``predictor.predict_batch`` takes the crops' face rows as ``rows=``."""
    return bool(getattr(predictor, "uses_rows", False))


def check_crops(crops: list[np.ndarray], align: AlignSpec | None, what: str) -> None:
    """Refuse crops that are not RGB uint8 ``(H, W, 3)`` of the ``align`` size (any size when
    ``align`` is None): the crop geometry a predictor declares is the one it was checked on."""
    for c in crops:
        c = np.asarray(c)
        ok = c.dtype == np.uint8 and c.ndim == 3 and c.shape[2] == 3
        if align is not None:
            ok = ok and c.shape[:2] == (align.size, align.size)
        if not ok:
            size = "(H, W, 3)" if align is None else f"{align.size}x{align.size}x3"
            raise ValueError(f"{what} takes RGB uint8 crops of {size}, got {c.dtype} {c.shape}")


def default_device(device: str | None = None) -> str:
    """``device`` or, when None, ``"cuda"`` where torch sees a GPU, else ``"cpu"``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
