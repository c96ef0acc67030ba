"""The notebooks, as committed and as they run top to bottom (executed with nbclient, as a user
would run them, with only the repository's photos and the weights that download)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import ANNOTATIONS, IMAGES

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
#: committed notebooks stay small enough to open on the web
MAX_BYTES = 1_500_000
#: a path of the machine the notebook ran on (a user's home, a temporary folder, a checkout)
MACHINE_PATH = re.compile(r"(?<![\w.])(/work|/root|/tmp|/home|/Users|/var/folders|[A-Z]:\\)")
#: a Python warning printed to stderr (UserWarning, TqdmWarning, FutureWarning ...)
WARNING = re.compile(r"\w*Warning\b")


def outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def output_text(o: nbformat.NotebookNode) -> str:
    """Everything a reader sees of an output, images left out."""
    if o.output_type == "stream":
        return o.text
    if o.output_type == "error":
        return "\n".join([o.ename, o.evalue, *o.traceback])
    data = o.get("data", {})
    return "\n".join(str(v) for k, v in data.items() if not k.startswith("image/"))


def check(nb: nbformat.NotebookNode) -> None:
    """Pictures, no errors, no machine paths, no warnings, a small file."""
    outs = outputs(nb)
    errors = [output_text(o) for o in outs if o.output_type == "error"]
    assert not errors, errors[0]
    assert any("image/png" in o.get("data", {}) for o in outs), "no picture"
    paths = [m.group(0) for o in outs for m in MACHINE_PATH.finditer(output_text(o))]
    assert not paths, f"machine paths in the outputs: {paths}"
    stderr = [o.text for o in outs if o.output_type == "stream" and o.name == "stderr"]
    warned = [t for t in stderr if WARNING.search(t)]
    assert not warned, warned[0]
    assert len(nbformat.writes(nb).encode()) < MAX_BYTES


def execute(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_their_outputs(path):
    """On the web a newcomer sees the pictures: the notebooks are committed executed."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "a cell was not run"
    check(nb)
    assert path.stat().st_size < MAX_BYTES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
@pytest.mark.slow
def test_notebook_runs(path, monkeypatch):
    """A user with only the repository: no WIDER FACE data, only the weights that download."""
    monkeypatch.delenv("WIDER_IMAGES", raising=False)
    monkeypatch.delenv("WIDER_GT", raising=False)
    check(execute(path))


@pytest.mark.slow
def test_wider_ap_says_what_does_not_apply(monkeypatch):
    """With WIDER FACE val photos (the two of the test data have no easy face) the AP table says
    that a setting has no faces, where the evaluation's value is NaN."""
    monkeypatch.setenv("WIDER_IMAGES", str(IMAGES / "wider"))
    monkeypatch.setenv("WIDER_GT", str(ANNOTATIONS / "wider"))
    path = next(p for p in NOTEBOOKS if p.name == "train_detector.ipynb")
    nb = execute(path)
    outs = [o for c in nb.cells if "wider" in c.metadata.get("tags", ()) for o in c.outputs]
    text = "\n".join(output_text(o) for o in outs)
    assert "faces counted" in text and "no easy faces" in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    hard = re.findall(r"AP, released\s+\S.*?(\d\.\d{3})\s*$", text, re.MULTILINE)
    assert hard and 0 < float(hard[0]) <= 1
