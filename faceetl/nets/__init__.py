"""Architectures: plain ``nn.Module`` classes with their strict loaders and weight releases.

One module per family: :mod:`.resnet`, :mod:`.retinaface` (+ :mod:`.retinaface_priors`, the
prior-box coder both ways), :mod:`.mtcnn`, :mod:`.bisenet`, :mod:`.inception_resnet_v1`,
:mod:`.fairface`, :mod:`.classifier`, :mod:`.nms`; :mod:`.external` holds the release records of
models other libraries run. Forwards return raw outputs: no hooks, locks, devices or downloads.
Backends, predictors, trainers and exporters all build on these.
"""

from __future__ import annotations

import importlib

from ..weights import WeightFile, registered_weights

#: the modules that register weight releases
RELEASE_MODULES = ("retinaface", "mtcnn", "bisenet", "inception_resnet_v1", "fairface", "external")


def list_weights() -> list[WeightFile]:
    """Every weight release faceetl knows, whatever has been imported so far."""
    for name in RELEASE_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    return registered_weights()


__all__ = ["RELEASE_MODULES", "list_weights"]
