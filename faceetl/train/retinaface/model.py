"""RetinaFace weights for training: what ``init=`` names, loading full or backbone-only state
dicts, and reloading a trained checkpoint."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...nets import list_weights
from ...nets.retinaface import CONFIGS, RetinaFace, load_weights, network_name
from ...weights import WeightsError, load_state_dict, load_strict, resolve, weights_info
from ..common import checkpoint_file


def resolve_init(init: str | os.PathLike | None, network: str) -> Path | None:
    """The weight file ``init`` names: ``"released"`` (the network's released weights), a
    registered weights name or file name (``"mobilenet0.25_Final.pth"``), or a path; None:
    random initialisation."""
    if init is None or init == "scratch":
        return None
    if init == "released":
        return resolve(None, CONFIGS[network]["weights"]).path
    p = Path(init)
    if p.is_file():
        return p
    name = os.fspath(init)
    for wf in list_weights():
        if name in (wf.name, wf.filename):
            return resolve(wf.name, wf.name).path
    raise WeightsError(
        f"init {name!r} is neither a file nor a registered weights name or file name "
        f"(e.g. {weights_info(CONFIGS[network]['weights']).filename!r}, 'released' or None)"
    )


def _state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, a checkpoint's ``state_dict`` or a ``model`` entry."""
    sd = load_state_dict(path)
    if isinstance(sd, Mapping) and "model" in sd and isinstance(sd["model"], Mapping):
        sd = {k.removeprefix("module."): v for k, v in sd["model"].items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_init(model: RetinaFace, path: Path) -> str:
    """Load a full RetinaFace state dict, or backbone-only weights (ImageNet MobileNet-0.25 /
    torchvision ResNet-50, ``fc`` ignored) into the body. Returns ``"full"`` or ``"body"``."""
    sd = _state_dict_of(path)
    own = model.state_dict()
    if set(own) <= set(sd):
        load_weights(model, {k: sd[k] for k in own})
        return "full"
    body = {k.removeprefix("body."): v for k, v in sd.items() if not k.startswith("fc.")}
    try:
        load_strict(model.body, body, f"{model.network} backbone")
    except WeightsError as e:
        raise WeightsError(
            f"{path} is neither a RetinaFace state dict nor body weights: {e}"
        ) from e
    return "body"


def infer_network(state_dict: Mapping[str, Any]) -> str:
    """``"mobilenet0.25"`` or ``"resnet50"`` from the body's key names."""
    if any(k.startswith("body.stage1") for k in state_dict):
        return "mobilenet0.25"
    if any(k.startswith("body.layer1") for k in state_dict):
        return "resnet50"
    raise ValueError("not a RetinaFace state dict (no body.stage1 / body.layer1 keys)")


def load_model(
    path: str | os.PathLike, network: str | None = None, device: str | torch.device = "cpu"
) -> RetinaFace:
    """A RetinaFace (eval mode) from a checkpoint (folder: its ``last.pt``) or a state dict."""
    sd = _state_dict_of(checkpoint_file(path))
    net = RetinaFace(network_name(network) if network else infer_network(sd))
    return load_weights(net, sd).to(device).eval()


__all__ = ["infer_network", "load_init", "load_model", "resolve_init"]
