"""Shared fixtures: a temporary FACEETL_HOME filled from ../shared, torch on one thread.

Helpers and data paths the tests import are in ``helpers.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import SHARED

if not (SHARED / "weights").is_dir():
    raise RuntimeError(
        f"test data not found at {SHARED}: the tests need ../shared beside the checkout"
    )

# no test may touch the network: weights come from the temporary home below
os.environ["FACEETL_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def faceetl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FACEETL_HOME holding copies of every weight file in ../shared/weights."""
    home = tmp_path_factory.mktemp("faceetl_home")
    for f in (SHARED / "weights").rglob("*"):
        if f.is_file():
            shutil.copy2(f, home / f.name)
    old = os.environ.get("FACEETL_HOME")
    os.environ["FACEETL_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("FACEETL_HOME", None)
    else:
        os.environ["FACEETL_HOME"] = old


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (training tests: on a busy 2-core machine two threads
    ran up to 5x slower), restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip (saying why) where torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3 endpoint on localhost: moto's standalone server in its own process, reached
    over HTTP through s3fs (as s3fs's own suite tests itself)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("s3fs")
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        pytest.skip("moto[server] is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {url}") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def s3(s3_endpoint: str, request: pytest.FixtureRequest) -> dict:
    """A fresh bucket on the moto endpoint: ``{"bucket": "s3://name", "storage_options": ...}``."""
    import uuid

    import s3fs

    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    name = f"faceetl-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(name)
    return {"bucket": f"s3://{name}", "storage_options": options, "fs": fs, "endpoint": s3_endpoint}
