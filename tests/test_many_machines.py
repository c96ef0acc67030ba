"""Many machines: a real scheduler and two ``dask worker`` processes started from the command
line, each in its own working folder with its own empty $HOME (no weights, no faceetl settings
in its environment), reading photos from an S3 endpoint and writing crops and the dataset to it.
Weights reach the workers from a mirror named once on the driver; settings travel with the tasks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import dask
import pytest
from PIL import Image

from faceetl import Pife, config, storage
from helpers import IMAGES, SHARED, stop_processes

DASK = Path(sys.executable).with_name("dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def command_line_cluster(tmp_path):
    """A scheduler and two workers as separate command-line processes; yields the address."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACEETL_", "FSSPEC_"))}
    env["PYTHONPATH"] = ""  # the installed faceetl only: nothing from the driver's test folder
    procs = []
    scheduler_dir = tmp_path / "scheduler"
    scheduler_dir.mkdir()
    procs.append(subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", ":0", "--no-show"],
        cwd=scheduler_dir, env={**env, "HOME": str(scheduler_dir)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))  # fmt: skip
    for k in range(2):
        home = tmp_path / f"worker{k}"
        home.mkdir()
        procs.append(subprocess.Popen(
            [str(DASK), "worker", address, "--nthreads", "1", "--nworkers", "1",
             "--local-directory", str(home / "dask"), "--name", f"w{k}", "--no-dashboard"],
            cwd=home, env={**env, "HOME": str(home), "TMPDIR": str(home)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    from distributed import Client

    client = Client(address, timeout=60)
    try:
        client.wait_for_workers(2, timeout=120)
        yield client
    finally:
        client.close()
        stop_processes(procs)


@pytest.mark.slow
def test_two_command_line_workers_read_and_write_s3(
    s3, command_line_cluster, tmp_path, monkeypatch
):
    fs, bucket, so = s3["fs"], s3["bucket"], s3["storage_options"]
    b = storage.strip(bucket)
    photos = sorted((IMAGES / "single").glob("*.jpg"))
    big = IMAGES / "group" / "deepface_selfie-many-people.jpg"
    for p in photos:
        fs.pipe_file(f"{b}/photos/single/{p.name}", p.read_bytes())
    fs.pipe_file(f"{b}/photos/big/{big.name}", big.read_bytes())
    # the mirror: weight files by name (the SSD's, and O-Net's for its landmarks)
    mirrored = [*(SHARED / "weights" / "ssd").iterdir(), SHARED / "weights" / "mtcnn" / "onet.pt"]
    for f in mirrored:
        fs.pipe_file(f"{b}/weights/{f.name}", f.read_bytes())
    # the driver's settings: offline, weights from the mirror, and a pixel limit the big photo
    # exceeds; the workers' environments know none of them
    with Image.open(big) as im:
        limit = im.size[0] * im.size[1] - 1
    assert all(Image.open(p).size[0] * Image.open(p).size[1] <= limit for p in photos)
    driver = tmp_path / "driver"
    driver.mkdir()
    monkeypatch.chdir(driver)
    config.configure(offline=True, weights_url=f"{bucket}/weights",
                     weights_storage_options=so, max_pixels=limit)  # fmt: skip
    try:
        with dask.config.set(scheduler=command_line_cluster.get):
            faces = Pife("ssd", 2, progress=False, partition_size=2).extract(
                f"{bucket}/photos/**/*.jpg", f"{bucket}/out", storage_options=so
            )
        df = faces.compute()
    finally:
        config.reset()
    assert df["path"].nunique() == len(photos) + 1
    big_rows = df[df["path"] == f"{bucket}/photos/big/{big.name}"]
    assert list(big_rows["status"])[0].startswith("error: image too large")
    ok = df[df["status"] == "ok"]
    assert len(ok) >= len(photos)
    for crop_path in ok["crop_path"]:  # every crop opens from the driver
        assert crop_path.startswith(f"{bucket}/out/")
        assert fs.cat_file(storage.strip(crop_path))[:8] == b"\x89PNG\r\n\x1a\n"
    # the workers that ran tasks fetched the weights from the mirror into their own $HOME
    cached = command_line_cluster.run(
        lambda: sorted(p.name for p in (Path.home() / ".cache" / "faceetl").glob("*"))
    )
    assert len(cached) == 2 and any(cached.values())
    for files in cached.values():
        assert not files or {f.name for f in mirrored} >= set(files)
    assert not os.listdir(driver)  # nothing written beside the driver
