"""`import faceetl` is light: the heavy and optional packages load on first use, and the top-level
API still answers; an optional backend whose extra is missing names the pip line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import FACE, ROOT

#: nothing of these may be imported by `import faceetl` alone
HEAVY = [
    "torch",
    "cv2",
    "skimage",
    "scipy",
    "dlib",
    "mediapipe",
    "ai_edge_litert",
    "tqdm",
    "dask.dataframe",
]


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter from the checkout; its stdout (fails on an error)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_faceetl_imports_nothing_heavy() -> None:
    out = _python(
        f"""
        import json, sys
        import faceetl
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    assert json.loads(out) == []


def test_top_level_api_loads_what_it_uses() -> None:
    """The names in ``faceetl.__all__`` resolve, and using them imports their dependencies."""
    out = _python(
        f"""
        import json, sys
        import numpy as np
        import faceetl
        from faceetl.images import encode_png

        missing = [n for n in faceetl.__all__ if not hasattr(faceetl, n)]
        img = faceetl.load_image({str(FACE)!r})
        lm = np.array([[130, 100], [175, 100], [152, 125], [135, 150], [170, 150]], float)
        crop, m, method = faceetl.align_face(img, lm)
        png = faceetl.decode_png(encode_png(crop))
        frame = faceetl.read_images([{str(FACE)!r}])
        print(json.dumps({{
            "missing": missing,
            "crop": list(crop.shape), "method": method, "same": bool((png == crop).all()),
            "frame": type(frame).__module__, "cv2": "cv2" in sys.modules,
            "dask": "dask.dataframe" in sys.modules,
            "backends": sorted(faceetl.list_backends()),
        }}))
        """
    )
    got = json.loads(out)
    assert got["missing"] == []
    assert got["crop"] == [112, 112, 3] and got["method"] == "landmarks" and got["same"]
    assert got["frame"].startswith("dask") and got["cv2"] and got["dask"]
    assert {"opencv", "ssd", "retinaface", "mtcnn", "dlib"} <= set(got["backends"])


def test_dlib_backend_without_its_extra_names_the_pip_line() -> None:
    """dlib blocked from importing (a ``sys.meta_path`` finder), nothing uninstalled."""
    out = _python(
        """
        import importlib.abc, sys

        class NoDlib(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dlib", "face_recognition_models"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoDlib())
        import faceetl
        from faceetl.extras import MissingExtraError

        for params in ({}, {"landmarks": None}):
            try:
                faceetl.get_backend("dlib", **params)
            except MissingExtraError as e:
                assert isinstance(e, ImportError)
                print(e)
            else:
                print("no error")
        """
    )
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "the dlib backend" in line and "pip install 'faceetl[dlib]'" in line


def test_dlib_landmarks_without_face_recognition_models_names_the_extra() -> None:
    """dlib present, its landmark models' package blocked: the extra is named, and the detector
    without landmarks still loads."""
    out = _python(
        """
        import importlib.abc, sys

        class NoModels(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "face_recognition_models":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoModels())
        import faceetl
        from faceetl.extras import MissingExtraError

        try:
            faceetl.get_backend("dlib")
        except MissingExtraError as e:
            print(e)
        print(type(faceetl.get_backend("dlib", landmarks=None)).__name__)
        """
    )
    error, loaded = out.strip().splitlines()
    assert "face_recognition_models" in error and "pip install 'faceetl[dlib]'" in error
    assert loaded == "DlibDetector"


def test_require_shows_a_broken_install_as_it_is() -> None:
    """A package that is there but fails on a missing import of its own is not called a
    missing extra: that error comes through unchanged."""
    out = _python(
        """
        import importlib.abc, sys

        class Broken(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "not_a_real_dependency":
                    raise ModuleNotFoundError("No module named 'other'", name="other")
                return None

        sys.meta_path.insert(0, Broken())
        from faceetl.extras import MissingExtraError, require

        try:
            require("not_a_real_dependency", "x", "a test")
        except MissingExtraError:
            print("missing extra")
        except ModuleNotFoundError as e:
            print("raised", e.name)
        try:
            require("not_installed_anywhere_xyz", "x", "a test")
        except MissingExtraError as e:
            print(e)
        """
    )
    first, second = out.strip().splitlines()
    assert first == "raised other"
    assert second == "a test needs 'not_installed_anywhere_xyz', which is not installed: " + (
        "pip install 'faceetl[x]'"
    )


_NOTEBOOK_CELLS = [
    # a notebook without ipywidgets (blocked; nothing uninstalled)
    """
import importlib.abc, sys

class NoWidgets(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ipywidgets":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoWidgets())
""",
    "import faceetl",
    """
faces = faceetl.extract_faces(faceetl.read_images([FACE]), backend="opencv", keep_crops=False)
frame = faceetl.compute(faces)
""",
    """
from faceetl.extras import quiet_import
from faceetl.pipeline.progress import tqdm

pooch = quiet_import("pooch")  # pooch imports tqdm.auto, as on a first weights download
for _ in tqdm(range(3), desc="loop"):
    pass
print("bar:", type(tqdm(total=1)).__module__)
""",
    # the control: this kernel is one where tqdm.auto does warn
    """
import importlib, warnings
import tqdm.autonotebook

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    importlib.reload(tqdm.autonotebook)
print("control:", [str(w.message)[:20] for w in caught])
""",
]


@pytest.mark.slow
def test_a_notebook_without_ipywidgets_gets_the_plain_bar_and_no_warning() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    cells = [f"FACE = {str(FACE)!r}", *_NOTEBOOK_CELLS]
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells]
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    texts = [
        o.get("text", "") + json.dumps(o.get("data", {})) + " ".join(o.get("traceback", []))
        for c in nb.cells[:-1]
        for o in c.outputs
    ]
    everything = "\n".join(texts)
    assert "Warning" not in everything and "IProgress" not in everything, everything
    assert "faceetl: 100%" in everything  # tqdm's plain bar counted the images
    assert "bar: tqdm.std" in everything
    control = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "IProgress not found" in control  # so the cells above had the chance to warn
