"""Model weights: a registry of (name, URL, sha256, file), fetched with pooch into FACEETL_HOME.

A file already in the cache with the right hash is used without the network. A missing file is
downloaded; offline, the error names the file, the URL and the folder to put it in. A file whose
hash differs from the registry's is refused.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pooch


class WeightsError(RuntimeError):
    """Weights could not be had: missing offline, or a file with the wrong hash."""


@dataclass(frozen=True)
class WeightFile:
    name: str
    url: str
    sha256: str
    filename: str
    description: str = ""


_WEIGHTS: dict[str, WeightFile] = {}


def register_weights(
    name: str, url: str, sha256: str, filename: str | None = None, description: str = ""
) -> WeightFile:
    """Add a weight file to the registry (idempotent for an identical entry)."""
    wf = WeightFile(name, url, sha256.lower(), filename or url.rsplit("/", 1)[-1], description)
    old = _WEIGHTS.get(name)
    if old is not None and old != wf:
        raise ValueError(f"weights {name!r} already registered differently")
    _WEIGHTS[name] = wf
    return wf


def weights_info(name: str) -> WeightFile:
    try:
        return _WEIGHTS[name]
    except KeyError:
        raise KeyError(f"unknown weights {name!r}; registered: {sorted(_WEIGHTS)}") from None


def list_weights() -> list[WeightFile]:
    return [_WEIGHTS[k] for k in sorted(_WEIGHTS)]


def home() -> Path:
    """The weights cache folder: $FACEETL_HOME, default ~/.cache/faceetl."""
    return Path(os.environ.get("FACEETL_HOME", "~/.cache/faceetl")).expanduser()


def sha256sum(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, progressbar: bool = True) -> Path:
    """Local path of weights ``name``: the verified cached file, else downloaded with pooch."""
    wf = weights_info(name)
    folder = home()
    path = folder / wf.filename
    if path.exists():
        got = sha256sum(path)
        if got != wf.sha256:
            raise WeightsError(
                f"{path} has sha256 {got}, expected {wf.sha256} for {name!r}: refusing it. "
                f"Delete it or replace it with the file from {wf.url}"
            )
        return path
    if os.environ.get("FACEETL_OFFLINE"):
        raise WeightsError(_missing_message(wf, path, "FACEETL_OFFLINE is set"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        got = pooch.retrieve(
            wf.url,
            known_hash=f"sha256:{wf.sha256}",
            fname=wf.filename,
            path=folder,
            progressbar=progressbar,
        )
    except ValueError as e:  # pooch: hash mismatch of the download
        raise WeightsError(f"download of {wf.filename} from {wf.url} has the wrong hash: {e}") from e
    except Exception as e:  # network errors: requests/urllib raise many kinds
        raise WeightsError(_missing_message(wf, path, f"download failed: {e}")) from e
    return Path(got)


def _missing_message(wf: WeightFile, path: Path, why: str) -> str:
    return (
        f"weights {wf.name!r} ({wf.filename}) are not in {path.parent} and could not be "
        f"downloaded ({why}). Get {wf.url} (sha256 {wf.sha256}) and put it at {path}, "
        f"or point FACEETL_HOME at a folder that holds it."
    )


def packaged_model(filename: str) -> Path:
    """A model file shipped in the ``face_recognition_models`` package (dlib's .dat models).

    The package is located, not imported (its ``__init__`` needs ``pkg_resources``).
    """
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"face_recognition_models is not installed: it provides dlib's {filename} "
            "(pip install face_recognition_models)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise WeightsError(f"{filename} not found at {path}")
    return path


@functools.cache
def cached_sha256(path: str) -> str:
    """sha256 of a file that does not change while the process runs (packaged models)."""
    return sha256sum(path)


def load_state_dict(path: str | os.PathLike, strip_prefix: str = "module.") -> dict:
    """A torch state dict loaded safely (``weights_only=True``), a DataParallel prefix removed."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if strip_prefix:
        sd = {k.removeprefix(strip_prefix): v for k, v in sd.items()}
    return sd
