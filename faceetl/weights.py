"""Model weights: released files with what they expect, fetched with pooch into FACEETL_HOME.

A release record (:class:`WeightFile`, registered beside its architecture in ``faceetl.nets``)
carries URL, sha256, file name, licence and the preprocessing the model was trained with (colour
order, mean/std, input size, classes), as torchvision's ``Weights`` and timm's ``PretrainedCfg``
do. :func:`resolve` turns "the release" or "this file" into a verified local path with its hash,
and :func:`load_strict` loads a state dict into a module, naming every key that does not fit.

A file already in the cache with the right hash is used without the network. A missing file is
copied from a mirror when one is set (``FACEETL_WEIGHTS_URL`` or
``faceetl.config.configure(weights_url=...)``: a local folder or fsspec URL holding the files by
name, so that workers on other machines fill their own cache), else downloaded; offline, the error
names the file, the URL, the folder to put it in and the mirror option. A file whose hash differs
from the registry's (cached, mirrored or downloaded) is refused.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import config, storage
from .extras import quiet_import

log = logging.getLogger(__name__)

T = TypeVar("T")


class WeightsError(RuntimeError):
    """Weights could not be had: missing offline, or a file with the wrong hash."""


@dataclass(frozen=True)
class WeightFile:
    """One released weight file and the preprocessing its model was trained with."""

    name: str
    url: str
    sha256: str | None  # None: no published hash (``trust_on_first_use`` must then be set)
    filename: str
    description: str = ""
    licence: str = ""
    colour: str = "RGB"  # channel order the network expects
    mean: tuple[float, ...] | None = None  # subtracted per channel (in the ``colour`` order)
    std: tuple[float, ...] | None = None  # divided per channel after the mean
    input_size: tuple[int, int] | None = None  # (height, width); None: any size
    classes: tuple[str, ...] | None = None  # output class names, where the model has them
    #: no published hash: the first file's sha256 is recorded in FACEETL_HOME and then required
    trust_on_first_use: bool = False


_WEIGHTS: dict[str, WeightFile] = {}


def register_weights(
    name: str,
    url: str,
    sha256: str | None,
    filename: str | None = None,
    description: str = "",
    *,
    trust_on_first_use: bool = False,
    **preprocessing: Any,
) -> WeightFile:
    """Add a weight file to the registry (idempotent for an identical entry).

    ``sha256=None`` needs ``trust_on_first_use=True``: the authors publish no hash, so the first
    file's is recorded (see the module docstring). ``preprocessing``: the other
    :class:`WeightFile` fields (``licence``, ``colour``, ``mean``, ``std``, ``input_size``,
    ``classes``).
    """
    if sha256 is None and not trust_on_first_use:
        raise ValueError(
            f"weights {name!r} have no sha256: give the published hash, or "
            "trust_on_first_use=True where none is published"
        )
    if sha256 is not None and trust_on_first_use:
        raise ValueError(f"weights {name!r} have a published sha256: trust_on_first_use is moot")
    for key in ("mean", "std", "input_size", "classes"):
        if preprocessing.get(key) is not None:
            preprocessing[key] = tuple(preprocessing[key])
    wf = WeightFile(
        name,
        url,
        sha256.lower() if sha256 is not None else None,
        filename or url.rsplit("/", 1)[-1],
        description,
        **preprocessing,
        trust_on_first_use=bool(trust_on_first_use),
    )
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


def registered_weights() -> list[WeightFile]:
    """The records registered so far in this process (``faceetl.nets.list_weights`` lists all)."""
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


def record_path(wf: WeightFile) -> Path:
    """Where the sha256 of a trust-on-first-use file is recorded: ``<home>/<file name>.sha256``."""
    return home() / f"{wf.filename}.sha256"


def recorded_sha256(wf: WeightFile) -> str | None:
    """The sha256 recorded on first use of ``wf`` (None: not recorded yet, or a pinned release)."""
    if not wf.trust_on_first_use:
        return None
    record = record_path(wf)
    try:
        text = record.read_text()
    except FileNotFoundError:
        return None
    sha = text.split()[0].lower() if text.split() else ""
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise WeightsError(
            f"{record} does not hold a sha256 (the hash recorded on first use of "
            f"{wf.filename}): delete it to record the next file's hash"
        )
    return sha


def expected_sha256(wf: WeightFile) -> str | None:
    """The hash a file of ``wf`` must have: the published one, else the one recorded on first
    use; None when neither exists yet (the next file had is trusted and recorded)."""
    return wf.sha256 if wf.sha256 is not None else recorded_sha256(wf)


def _record(wf: WeightFile, sha: str, source: str) -> None:
    """Record ``sha`` as the hash of ``wf`` (trust on first use), unless another hash was
    recorded meanwhile (another process): then the file is refused."""
    before = recorded_sha256(wf)
    if before is not None and before != sha:
        raise WeightsError(_refusal(wf, source, sha, before))
    storage.write_atomic(str(record_path(wf)), f"{sha}  {wf.filename}\n".encode())
    log.warning(
        "weights %r (%s) have no published sha256: trusting the file from %s on first use, "
        "sha256 %s recorded in %s; a different file will be refused",
        wf.name, wf.filename, source, sha, record_path(wf),
    )  # fmt: skip


def _refusal(wf: WeightFile, where: str, got: str, expected: str) -> str:
    """Why a file with hash ``got`` (at ``where``) is refused."""
    if wf.sha256 is not None:
        return f"{where} has sha256 {got}, expected {expected} for {wf.name!r}: refusing it."
    return (
        f"{where} has sha256 {got}, but {wf.filename} was recorded with sha256 {expected} on "
        f"first use ({record_path(wf)}): refusing it, as {wf.name!r} has no published hash and "
        f"the file may have changed (at {wf.url} or here). To trust the new file, delete "
        f"{record_path(wf)} and fetch again."
    )


def fetch(name: str, progressbar: bool = True) -> Path:
    """Local path of weights ``name``: the verified cached file, else copied from the mirror
    (``config.current().weights_url``), else downloaded with pooch unless offline.

    A trust-on-first-use release with no recorded hash yet is not recorded here: its hash is
    recorded once the file loads (:meth:`Resolved.load`), so a file that does not load is
    never the one trusted."""
    return _fetch(name, progressbar)[0]


def _fetch(name: str, progressbar: bool = True) -> tuple[Path, str, bool]:
    """:func:`fetch`, with the sha256 the file was verified against (or is to be recorded
    with) and whether this call put it in the cache."""
    wf = weights_info(name)
    folder = home()
    path = folder / wf.filename
    expected = expected_sha256(wf)
    if path.exists():
        got = sha256sum(path)
        if expected is not None and got != expected:
            raise WeightsError(
                _refusal(wf, str(path), got, expected)
                + f" Delete it or replace it with the file from {wf.url}"
            )
        return path, got, False
    settings = config.current()
    why = ""
    if settings.weights_url:
        got = _copy_from_mirror(wf, path, settings, expected)
        if got is not None:
            return path, got, True
        why = f"not in the mirror {_mirror_file(wf, settings.weights_url)}; "
    if settings.offline:
        raise WeightsError(
            _missing_message(wf, path, why + "offline: FACEETL_OFFLINE or configure(offline=True)")
        )
    folder.mkdir(parents=True, exist_ok=True)
    if wf.trust_on_first_use:
        return path, _download_unpinned(wf, path, expected, why, progressbar), True
    pooch = quiet_import("pooch")  # on first download only: pooch imports tqdm
    try:
        got_path = pooch.retrieve(
            wf.url,
            known_hash=f"sha256:{wf.sha256}",
            fname=wf.filename,
            path=folder,
            progressbar=progressbar,
        )
    except ValueError as e:  # pooch: hash mismatch of the download
        raise WeightsError(
            f"download of {wf.filename} from {wf.url} has the wrong hash: {e}"
        ) from e
    except Exception as e:  # network errors: requests/urllib raise many kinds
        raise WeightsError(_missing_message(wf, path, f"{why}download failed: {e}")) from e
    return Path(got_path), str(wf.sha256), True


def _download_unpinned(
    wf: WeightFile, path: Path, expected: str | None, why: str, progressbar: bool
) -> str:
    """Download a trust-on-first-use file to a temporary name, check it (not a web page; the
    recorded hash if there is one), then move it to ``path`` and record its hash if new."""
    tmp_name = f".{wf.filename}.download-{uuid.uuid4().hex[:8]}"
    pooch = quiet_import("pooch")
    try:
        tmp = Path(
            pooch.retrieve(
                wf.url, known_hash=None, fname=tmp_name, path=path.parent, progressbar=progressbar
            )
        )
    except Exception as e:  # network errors: requests/urllib raise many kinds
        (path.parent / tmp_name).unlink(missing_ok=True)
        raise WeightsError(_missing_message(wf, path, f"{why}download failed: {e}")) from e
    try:
        if _is_web_page(tmp):
            raise WeightsError(
                f"download of {wf.filename} from {wf.url} is a web page, not the weights (the "
                f"host may want a confirmation or have hit a quota): refused, no hash recorded. "
                f"Download the file in a browser and put it at {path}"
            )
        got = sha256sum(tmp)
        if expected is not None and got != expected:
            raise WeightsError(_refusal(wf, f"the download from {wf.url}", got, expected))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return got


def _is_web_page(path: Path) -> bool:
    """True when the file starts like an HTML document (what file hosts send instead of a file
    they will not serve directly)."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _mirror_file(wf: WeightFile, mirror: str) -> str:
    """Where ``wf`` lies in the mirror folder or URL ``mirror`` (by its file name)."""
    if not storage.is_url(mirror):
        mirror = os.path.expanduser(storage.local_path(mirror))
    return storage.join(mirror, wf.filename)


def _copy_from_mirror(
    wf: WeightFile, path: Path, settings: config.Settings, expected: str | None
) -> str | None:
    """Copy ``wf`` from the mirror to ``path``, verified against ``expected`` before it is
    written (atomically; ``None``: trusted on first use, recorded once it loads): its sha256
    when copied, None when the mirror lacks the file."""
    src = _mirror_file(wf, str(settings.weights_url))
    try:
        data = storage.read_bytes(src, settings.weights_storage_options)
    except FileNotFoundError:
        return None
    except Exception as e:  # permissions, credentials, network: a broken mirror is not skipped
        raise WeightsError(
            f"cannot read weights {wf.name!r} from the mirror {src}: {type(e).__name__}: {e}"
        ) from e
    got = hashlib.sha256(data).hexdigest()
    if expected is not None and got != expected:
        raise WeightsError(
            _refusal(wf, f"mirror file {src}", got, expected)
            + f" Nothing written to {path.parent}. Replace it in the mirror with the file "
            f"from {wf.url}"
        )
    storage.write_atomic(str(path), data)
    return got


def _missing_message(wf: WeightFile, path: Path, why: str) -> str:
    if wf.sha256 is not None:
        hashed = f"sha256 {wf.sha256}"
    else:
        recorded = recorded_sha256(wf)
        hashed = (
            f"no published sha256; recorded on first use: {recorded}, in {record_path(wf)}"
            if recorded
            else f"no published sha256: the first file's is recorded in {record_path(wf)}"
        )
    return (
        f"weights {wf.name!r} ({wf.filename}) are not in {path.parent} and could not be "
        f"downloaded ({why}). Get {wf.url} ({hashed}) and put it at {path}, "
        f"or point FACEETL_HOME at a folder that holds it, or set FACEETL_WEIGHTS_URL "
        f"(faceetl.config.configure(weights_url=...)) to a mirror folder or URL holding "
        f"{wf.filename}."
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
            "(pip install 'faceetl[dlib]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise WeightsError(f"{filename} not found at {path}")
    return path


@functools.cache
def cached_sha256(path: str) -> str:
    """sha256 of a file that does not change while the process runs (packaged models)."""
    return sha256sum(path)


@dataclass(frozen=True)
class Resolved:
    """A weight file on disk, its sha256 and its release record (None for a user's own file).

    For a trust-on-first-use release ``sha256`` is the hash recorded on first use, or, before
    anything is recorded, the file's own, recorded by :meth:`load` once the file loads."""

    path: Path
    sha256: str
    release: WeightFile | None = None
    fresh: bool = False  # this process put the file in the cache (downloaded or mirrored)

    def provenance(self) -> dict[str, str]:
        """``{file name: sha256}``, as recorded on output rows."""
        return {self.path.name: self.sha256}

    def load(self, loader: Callable[[Path], T]) -> T:
        """``loader(self.path)``; a trust-on-first-use file is recorded only when that works.

        A file that does not load is not recorded (so the genuine file is not refused later);
        one this process downloaded or copied from the mirror is removed from the cache, so
        the next attempt fetches it again.
        """
        wf = self.release
        pending = wf is not None and wf.trust_on_first_use and recorded_sha256(wf) is None
        try:
            model = loader(self.path)
        except Exception as e:
            if not pending:
                raise
            if self.fresh:
                self.path.unlink(missing_ok=True)
            where = "removed from the cache" if self.fresh else "left where it is"
            raise WeightsError(
                f"{self.path} ({wf.name!r}, sha256 {self.sha256}) does not load ({e}); its "
                f"hash was not recorded and the file was {where}. Put the file from {wf.url} "
                f"at {self.path}."
            ) from e
        if pending:
            _record(wf, self.sha256, str(self.path))
        return model


def resolve(weights: str | os.PathLike | None, default: str, what: str = "") -> Resolved:
    """The weight file to load: ``None`` -> the release ``default`` (cached or fetched, verified),
    a registered release name -> that release, else a local file path (hashed)."""
    if weights is None or (isinstance(weights, str) and weights in _WEIGHTS):
        info = weights_info(default if weights is None else str(weights))
        path, sha, fresh = _fetch(info.name)
        return Resolved(path, sha, info, fresh)
    path = Path(weights).expanduser()
    if not path.is_file():
        label = what or weights_info(default).description or default
        raise WeightsError(f"{label} weights file {path} does not exist")
    return Resolved(path, sha256sum(path), None)


def load_strict(
    model: Any,
    source: str | os.PathLike | dict,
    what: str,
    *,
    layout: str = "",
    optional: tuple[str, ...] = ("num_batches_tracked",),
    assign: bool = False,
) -> Any:
    """Load a state dict (a file or a dict) into ``model`` with ``strict=True``.

    Keys ending in one of ``optional`` may be missing (BatchNorm's batch counters, absent from
    files saved by old torch); anything else that does not fit is a :class:`WeightsError` naming
    the missing, unexpected and mis-shaped keys, ``what`` the file should have been and the
    ``layout`` (whose release) it should follow.
    """
    label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the state dict"
    if isinstance(source, dict):
        sd = dict(source)
    else:
        try:
            sd = load_state_dict(source)
        except Exception as e:
            raise WeightsError(f"cannot read {what} weights {label}: {e}") from e
    if not isinstance(sd, dict):
        raise WeightsError(f"{label} does not hold a state dict (got {type(sd).__name__})")
    own = model.state_dict()
    for key, value in own.items():  # fill optional keys from the model (torch does it for BN)
        if key not in sd and key.endswith(optional):
            sd[key] = value.detach().clone() if not assign else value
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(sd[k].shape)} != model {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

        counts = (
            f"{len(missing)} missing keys, {len(unexpected)} unexpected keys, "
            f"{len(shapes)} of the wrong shape"
        )
        parts = [
            f"{name}: {few(keys)}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
            if keys
        ]
        where = f" ({layout})" if layout else ""
        raise WeightsError(
            f"{label} is not a {what} state dict{where}: {counts}; " + "; ".join(parts)
        )
    model.load_state_dict(sd, strict=True, assign=assign)
    return model


def load_state_dict(path: str | os.PathLike, strip_prefix: str = "module.") -> dict:
    """A torch state dict loaded safely (``weights_only=True``), a DataParallel prefix removed."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if strip_prefix:
        sd = {k.removeprefix(strip_prefix): v for k, v in sd.items()}
    return sd
