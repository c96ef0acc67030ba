"""benchmarks/gpu.py runs start to finish on a CPU (the same code the GPU run uses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--n", "12",
         "--profile", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["n"] == 12 and table["device"] == "cpu"
    for what in ("decode", "network", "retinaface", "mtcnn", "reference loop"):
        assert table["img_s"][what] > 0, what
    assert table["ratios"]["retinaface / min(decode, network)"] > 0
    assert "retinaface / reference loop" in r.stdout
    stages = {p["name"] for p in table["profile"]}
    assert {"stage decode", "stage detect", "stage rows"} <= stages, stages
    assert any(not n.startswith("stage ") for n in stages)  # and torch's operators
