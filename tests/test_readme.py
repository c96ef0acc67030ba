"""Every Python block of README.md runs as written, in a fresh interpreter, from a folder that
holds the bundled photos (``examples/images``).

A block whose first line says ``# needs: ...`` runs where the test can give it that: an extra
that is installed, an S3 bucket (moto's S3 server, reached through fsspec's environment
variables). What the test cannot give (data sets, weights nobody can download here, a GPU) is
the skip reason, word for word from the README.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from faceetl.extras import installed
from helpers import SHARED

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
NEEDS = re.compile(r"\A# needs: (.*(?:\n# .*)*)")
# what a "needs" line may ask for that this test can give: the words, and how to check it
GIVEN = {
    "faceetl[dlib]": lambda: installed("dlib"),
    "faceetl[export]": lambda: installed("onnx") and installed("onnxruntime"),
    "faceetl[curate]": lambda: installed("faiss"),
    "faceetl[formats]": lambda: installed("webdataset") and installed("datasets"),
    "an S3 bucket (the README test runs this on moto's S3 server, faceetl[s3])": lambda: (
        installed("s3fs")
    ),
}


def blocks() -> list[tuple[int, str, str]]:
    """(line, needs, code) of each Python block of README.md."""
    text = (ROOT / "README.md").read_text()
    out = []
    for m in BLOCK.finditer(text):
        code = m.group(1)
        needs = NEEDS.match(code)
        said = " ".join(x.lstrip("# ").strip() for x in needs.group(1).splitlines()) if needs else ""
        out.append((text[: m.start()].count("\n") + 1, said, code))
    return out


def _unmet(needs: str) -> list[str]:
    """The parts of a needs line this test cannot give."""
    if not needs:
        return []
    parts = [p.strip() for p in re.split(r",\s*(?:and\s+)?(?![^()]*\))", needs) if p.strip()]
    return [p for p in parts if not (p in GIVEN and GIVEN[p]())]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder like the repository's root for what the blocks read: the bundled photos."""
    folder = tmp_path_factory.mktemp("readme")
    os.symlink(ROOT / "examples", folder / "examples")
    return folder


def test_every_block_is_found_and_marked_consistently():
    found = blocks()
    assert len(found) >= 10
    for line, needs, _ in found:
        assert needs == "" or not needs.endswith(","), line


@pytest.mark.slow
@pytest.mark.parametrize("line,needs,code", blocks(), ids=[f"line{b[0]}" for b in blocks()])
def test_block_runs_as_written(line, needs, code, workdir, faceetl_home, request):
    unmet = _unmet(needs)
    if unmet:
        pytest.skip(f"README line {line} needs {'; '.join(unmet)}")
    env = {**os.environ, "FACEETL_HOME": str(faceetl_home), "FACEETL_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if "S3" in needs:
        s3 = request.getfixturevalue("s3_endpoint")
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=s3, key="testing", secret="testing")
        if fs.exists("bucket"):
            fs.rm("bucket", recursive=True)
        fs.mkdir("bucket")
        for p in (ROOT / "examples" / "images").rglob("*.jpg"):
            fs.pipe_file(f"bucket/photos/{p.relative_to(ROOT / 'examples' / 'images')}",
                         p.read_bytes())  # fmt: skip
        env.update(FSSPEC_S3_ENDPOINT_URL=s3, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing")  # fmt: skip
    script = workdir / f"block_{line}.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, script.name], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, f"README line {line}:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr


def test_shared_data_is_not_what_the_blocks_read():
    """The blocks read the bundled photos, never ../shared (which users do not have)."""
    assert all(str(SHARED) not in code and "shared/" not in code for _, _, code in blocks())
