"""Settings that travel with tasks (faceetl.config) and the weights mirror they point at."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import fsspec
import pytest

import faceetl.nets.external  # noqa: F401  (registers the SSD release used below)
from faceetl import config
from faceetl.config import Settings
from faceetl.images import MAX_PIXELS, ImageError, load_image, max_pixels_limit
from faceetl.weights import WeightsError, fetch, sha256sum, weights_info
from helpers import FACE, ROOT, SHARED

WF = weights_info("ssd_tf_pbtxt")  # a small real release (35 kB) whose file is in ../shared
SRC = SHARED / "weights" / "ssd" / WF.filename


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch):
    """No configure() values leak between tests; the environment starts without settings."""
    for var in ("FACEETL_WEIGHTS_URL", "FACEETL_MAX_PIXELS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FACEETL_OFFLINE", "1")  # never the network, as conftest wants
    config.reset()
    yield
    config.reset()


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """An empty FACEETL_HOME."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("FACEETL_HOME", str(h))
    return h


@pytest.fixture()
def mirror(tmp_path) -> Path:
    """A local mirror folder holding the release file by its name."""
    m = tmp_path / "mirror"
    m.mkdir()
    shutil.copy(SRC, m / WF.filename)
    return m


@pytest.fixture()
def memory_folder():
    """A unique memory:// folder, removed afterwards."""
    url = f"memory://faceetl-test-config-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    path = url.removeprefix("memory://")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_shared_file_is_the_release():
    assert sha256sum(SRC) == WF.sha256


# --- the weights mirror ---------------------------------------------------------------------


def test_mirror_in_local_folder_fills_an_empty_home_offline(home, mirror, monkeypatch):
    monkeypatch.setenv("FACEETL_WEIGHTS_URL", str(mirror))
    got = fetch(WF.name)
    assert got == home / WF.filename
    assert sha256sum(got) == WF.sha256
    assert os.listdir(home) == [WF.filename]  # no temporary file left behind
    (mirror / WF.filename).unlink()
    assert fetch(WF.name) == got  # now from the cache, the mirror no longer needed


def test_mirror_as_file_url(home, mirror):
    with config.applied(Settings(weights_url=f"file://{mirror}", offline=True)):
        assert sha256sum(fetch(WF.name)) == WF.sha256


def test_mirror_in_memory_url_fills_an_empty_home(home, memory_folder):
    fsspec.filesystem("memory").pipe_file(
        f"{memory_folder.removeprefix('memory://')}/{WF.filename}", SRC.read_bytes()
    )
    settings = Settings(weights_url=memory_folder + "/", weights_storage_options={}, offline=True)
    with config.applied(settings):
        got = fetch(WF.name)
    assert got == home / WF.filename and sha256sum(got) == WF.sha256
    assert os.listdir(home) == [WF.filename]


def test_corrupt_mirror_file_is_refused_and_nothing_is_kept(home, mirror, monkeypatch):
    bad = b"not the graph"
    (mirror / WF.filename).write_bytes(bad)
    monkeypatch.setenv("FACEETL_WEIGHTS_URL", str(mirror))
    with pytest.raises(WeightsError) as e:
        fetch(WF.name)
    msg = str(e.value)
    assert str(mirror / WF.filename) in msg
    assert WF.sha256 in msg and sha256sum(mirror / WF.filename) in msg
    assert os.listdir(home) == []


def test_corrupt_file_in_memory_mirror_is_refused(home, memory_folder):
    fsspec.filesystem("memory").pipe_file(
        f"{memory_folder.removeprefix('memory://')}/{WF.filename}", b"truncated"
    )
    with config.applied(Settings(weights_url=memory_folder, offline=True)):
        with pytest.raises(WeightsError, match=f"mirror file {memory_folder}/{WF.filename}"):
            fetch(WF.name)
    assert os.listdir(home) == []


def test_mirror_without_the_file_falls_through_to_offline_error(home, tmp_path, monkeypatch):
    empty = tmp_path / "empty_mirror"
    empty.mkdir()
    monkeypatch.setenv("FACEETL_WEIGHTS_URL", str(empty))
    with pytest.raises(WeightsError) as e:
        fetch(WF.name)
    msg = str(e.value)
    assert f"not in the mirror {empty / WF.filename}" in msg
    assert WF.filename in msg and WF.url in msg and "FACEETL_OFFLINE" in msg


def test_offline_without_mirror_names_the_file_and_the_mirror_option(home):
    with pytest.raises(WeightsError) as e:
        fetch(WF.name)
    msg = str(e.value)
    assert WF.filename in msg and str(home) in msg and WF.url in msg
    assert "FACEETL_WEIGHTS_URL" in msg and "configure(weights_url=" in msg
    assert os.listdir(home) == []


def test_offline_from_configure(home, monkeypatch):
    monkeypatch.delenv("FACEETL_OFFLINE")
    config.configure(offline=True)
    with pytest.raises(WeightsError, match="offline"):
        fetch(WF.name)


def test_unreadable_mirror_is_an_error_not_a_silent_skip(home, tmp_path):
    folder_not_file = tmp_path / "m"
    (folder_not_file / WF.filename).mkdir(parents=True)  # a folder where the file should be
    with config.applied(Settings(weights_url=str(folder_not_file), offline=True)):
        with pytest.raises(WeightsError, match="cannot read weights .* from the mirror"):
            fetch(WF.name)


def test_captured_settings_fill_a_bare_worker(home, mirror, tmp_path):
    """A fresh process with its own empty home and no faceetl environment gets the weights
    from the settings the driver captured (as a Dask worker on another machine would)."""
    config.configure(weights_url=str(mirror))
    blob = tmp_path / "settings.pkl"
    blob.write_bytes(pickle.dumps(config.capture()))
    worker_home = tmp_path / "worker_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEETL_")}
    env.update(FACEETL_HOME=str(worker_home), FACEETL_OFFLINE="1", PYTHONPATH=str(ROOT))
    code = (
        "import pickle, sys\n"
        "import faceetl.nets.external\n"
        "from faceetl import config, weights\n"
        "s = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "try:\n"
        "    weights.fetch('ssd_tf_pbtxt')\n"
        "except weights.WeightsError:\n"
        "    print('refused without the settings')\n"
        "with config.applied(s):\n"
        "    print(weights.fetch('ssd_tf_pbtxt'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(blob)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.splitlines()
    assert out == ["refused without the settings", str(worker_home / WF.filename)]
    assert sha256sum(worker_home / WF.filename) == WF.sha256


# --- where settings come from ---------------------------------------------------------------


def test_environment_is_read_at_each_call(monkeypatch):
    monkeypatch.delenv("FACEETL_OFFLINE")
    assert config.current() == Settings()
    monkeypatch.setenv("FACEETL_WEIGHTS_URL", "s3://bucket/weights")
    monkeypatch.setenv("FACEETL_OFFLINE", "1")
    monkeypatch.setenv("FACEETL_MAX_PIXELS", " 5000 ")
    assert config.current() == Settings("s3://bucket/weights", None, True, 5000)
    for off in ("0", "false", "No", ""):
        monkeypatch.setenv("FACEETL_OFFLINE", off)
        assert config.current().offline is False
    monkeypatch.setenv("FACEETL_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="FACEETL_MAX_PIXELS='lots'"):
        config.current()


def test_configure_wins_field_by_field_over_the_environment(monkeypatch):
    monkeypatch.setenv("FACEETL_WEIGHTS_URL", "/env/mirror")
    monkeypatch.setenv("FACEETL_MAX_PIXELS", "5000")
    s = config.configure(max_pixels=7)
    assert (s.weights_url, s.offline, s.max_pixels) == ("/env/mirror", True, 7)
    config.configure(weights_url=None, weights_storage_options={"anon": True})  # None wins too
    s = config.current()
    assert (s.weights_url, s.max_pixels, s.weights_storage_options) == (None, 7, {"anon": True})
    monkeypatch.setenv("FACEETL_OFFLINE", "")
    assert config.current().offline is False  # not configured: still the environment's
    with pytest.raises(ValueError, match="max_pixels"):
        config.configure(max_pixels=-1, offline=True)
    assert config.current().offline is False  # a refused configure() keeps nothing
    config.reset()
    assert config.current().weights_url == "/env/mirror"


def test_applied_wins_and_is_restored(monkeypatch):
    config.configure(max_pixels=7)
    inner = Settings(weights_url="memory://m", max_pixels=9)
    with config.applied(inner) as s:
        assert s is inner and config.current() is inner and config.capture() is inner
        with config.applied(Settings(max_pixels=1)):
            assert config.current().max_pixels == 1
        assert config.current() is inner
        with config.applied(None):  # a task without captured settings changes nothing
            assert config.current() is inner
    assert config.current().max_pixels == 7
    with pytest.raises(TypeError):
        with config.applied({"max_pixels": 1}):  # type: ignore[arg-type]
            pass


def test_applied_is_per_thread():
    barrier = threading.Barrier(2, timeout=30)
    seen: dict[str, Settings] = {}

    def task(name: str, settings: Settings) -> None:
        with config.applied(settings):
            barrier.wait()  # both overrides are in force at once
            seen[name] = config.current()
            barrier.wait()

    a, b = Settings(weights_url="/a", max_pixels=100), Settings(offline=True, max_pixels=200)
    threads = [threading.Thread(target=task, args=x) for x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": a, "b": b}
    assert config.current() == config.from_environment()  # the main thread saw neither


def test_settings_pickle_compare_and_hide_credentials():
    s = Settings(
        weights_url=Path("/mirror"),  # type: ignore[arg-type]
        weights_storage_options={"key": "SECRET", "client_kwargs": {"region_name": "x"}},
        offline=True,
        max_pixels=1000,
    )
    assert s.weights_url == "/mirror"
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back.weights_storage_options == s.weights_storage_options
    assert hash(back) == hash(s)  # usable as a key although it holds dicts
    assert back != Settings("/mirror", {"key": "other"}, True, 1000)
    assert "SECRET" not in repr(s)
    opts = {"anon": True}
    s2 = Settings(weights_storage_options=opts)
    opts["anon"] = False
    assert s2.weights_storage_options == {"anon": True}  # a copy, not the caller's dict
    with pytest.raises(ValueError):
        Settings(max_pixels=1.5)  # type: ignore[arg-type]


# --- max_pixels ------------------------------------------------------------------------------


def test_max_pixels_limit_order(monkeypatch):
    assert max_pixels_limit() == MAX_PIXELS
    monkeypatch.setenv("FACEETL_MAX_PIXELS", "0")
    assert max_pixels_limit() == 0
    config.configure(max_pixels=50)
    assert max_pixels_limit() == 50
    with config.applied(Settings(max_pixels=None)):
        assert max_pixels_limit() == MAX_PIXELS  # the applied settings replace, not merge
    assert max_pixels_limit(3) == 3


def test_applied_max_pixels_changes_load_image(memory_folder):
    h, w = load_image(FACE).shape[:2]
    with config.applied(Settings(max_pixels=h * w - 1)):
        with pytest.raises(ImageError, match=rf"image too large \({w}x{h} > {h * w - 1} pixels"):
            load_image(FACE)
        url = f"{memory_folder}/face.jpg"
        fsspec.filesystem("memory").pipe_file(url.removeprefix("memory://"), FACE.read_bytes())
        with pytest.raises(ImageError, match="image too large"):
            load_image(url)
        assert load_image(FACE, max_pixels=0).shape == (h, w, 3)  # the argument still wins
    with config.applied(Settings(max_pixels=h * w)):
        assert load_image(FACE).shape == (h, w, 3)
