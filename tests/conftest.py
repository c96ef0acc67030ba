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
