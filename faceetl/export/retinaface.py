"""Export kind ``retinaface``: the detector's network with softmaxed class scores.

Input ``"input"``: BGR pixels minus the training mean (104, 117, 123), dynamic batch, height and
width. Outputs ``loc`` (B, P, 4) box deltas, ``conf`` (B, P, 2) softmaxed (background, face) and
``landmarks`` (B, P, 10) deltas over the priors of :func:`faceetl.nets.retinaface_priors.priors_for`.
The graph, its check inputs and metadata are the backend's own (its ``runtime="onnx"``).
"""

from __future__ import annotations

from typing import Any

from ..backends.retinaface import (
    ONNX_AXES,
    ONNX_OUTPUTS,
    OnnxGraph,
    RetinaFaceDetector,
    onnx_inputs,
    onnx_metadata,
)
from ..nets.retinaface import CONFIGS, RetinaFace, load_weights, network_name
from ..weights import resolve
from .registry import Loaded, register_exportable


def load(network: str = "mobilenet0.25", weights: Any = None) -> Loaded:
    """A RetinaFace of ``network`` with the released weights, or those of the file ``weights``."""
    network = network_name(network)
    resolved = resolve(weights, CONFIGS[network]["weights"], f"RetinaFace {network}")
    return Loaded(load_weights(RetinaFace(network), resolved.path), resolved.sha256)


def _net(obj: Any) -> RetinaFace:
    return obj.model if isinstance(obj, RetinaFaceDetector) else obj


register_exportable(
    "retinaface",
    modules=(RetinaFace, RetinaFaceDetector),
    unwrap=_net,
    graph=OnnxGraph,
    outputs=ONNX_OUTPUTS,
    dynamic=ONNX_AXES,
    example=(2, 3, 480, 640),
    prepare=onnx_inputs,
    metadata=lambda net: onnx_metadata(net.network),
    profiles=((1, 3, 32, 32), (1, 3, 640, 640), (4, 3, 2048, 2048)),
    load=load,
)
