"""Trust on first use: weights with no published hash, fetched from a real local HTTP server.

The first file that loads is recorded in FACEETL_HOME (``<file>.sha256``) and required
afterwards; a changed download, a replaced cache file or a changed mirror file is refused, naming
both hashes. A file that does not load is never recorded.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from faceetl import weights as fw
from faceetl.weights import WeightsError, fetch, register_weights, resolve, sha256sum

FILENAME = "tofu_model.bin"
CONTENT = b"\x80\x02 first release of the weights " + bytes(range(256)) * 8
CHANGED = b"\x80\x02 the file was replaced on the server " + bytes(range(256)) * 8


class Server:
    """A ``http.server`` in a thread serving a folder, counting the GET requests it answers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.gets = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:  # keep the test output quiet
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def put(self, name: str, data: bytes) -> None:
        (self.folder / name).write_bytes(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    folder = tmp_path / "served"
    folder.mkdir()
    srv = Server(folder)
    yield srv
    srv.close()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty FACEETL_HOME, online (the suite is offline by default)."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("FACEETL_HOME", str(folder))
    monkeypatch.delenv("FACEETL_OFFLINE", raising=False)
    monkeypatch.delenv("FACEETL_WEIGHTS_URL", raising=False)
    return folder


@pytest.fixture()
def record(server: Server) -> Iterator[fw.WeightFile]:
    """A trust-on-first-use release served by ``server``, removed from the registry after."""
    name = f"test-tofu-{uuid.uuid4().hex[:8]}"
    server.put(FILENAME, CONTENT)
    wf = register_weights(
        name, f"{server.url}/{FILENAME}", None, FILENAME, "test file", trust_on_first_use=True
    )
    yield wf
    fw._WEIGHTS.pop(name, None)


def loads(path: Path) -> bytes:
    """The test release's loader: its files start with the pickle protocol's two bytes."""
    data = path.read_bytes()
    if not data.startswith(b"\x80\x02"):
        raise ValueError("not a weights file")
    return data


def first_use(name: str) -> Path:
    """Fetch and load ``name`` as a model loader does (which records a first file's hash)."""
    resolved = resolve(None, name)
    resolved.load(loads)
    return resolved.path


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_first_download_records_the_hash_then_the_cache_is_used(home, server, record):
    path = fetch(record.name, progressbar=False)
    assert path == home / FILENAME and path.read_bytes() == CONTENT
    assert fw.recorded_sha256(record) is None  # fetched, not loaded yet: nothing recorded
    assert first_use(record.name) == path
    assert (home / f"{FILENAME}.sha256").read_text() == f"{sha(CONTENT)}  {FILENAME}\n"
    assert fw.recorded_sha256(record) == sha(CONTENT) and server.gets == 1
    assert sorted(os.listdir(home)) == [FILENAME, f"{FILENAME}.sha256"]  # no temporary left
    resolved = resolve(None, record.name)  # from the cache: no second request
    assert server.gets == 1
    assert resolved.sha256 == sha(CONTENT) and resolved.release == record
    assert resolved.provenance() == {FILENAME: sha(CONTENT)}


def test_changed_file_on_the_server_is_refused_after_the_cache_is_deleted(home, server, record):
    first_use(record.name)
    (home / FILENAME).unlink()
    server.put(FILENAME, CHANGED)
    with pytest.raises(WeightsError) as e:
        fetch(record.name, progressbar=False)
    msg = str(e.value)
    assert sha(CONTENT) in msg and sha(CHANGED) in msg and "refusing" in msg
    assert record.url in msg and str(home / f"{FILENAME}.sha256") in msg
    assert server.gets == 2
    assert os.listdir(home) == [f"{FILENAME}.sha256"]  # the refused download is not kept
    assert fw.recorded_sha256(record) == sha(CONTENT)
    server.put(FILENAME, CONTENT)  # the recorded file again: accepted
    assert fetch(record.name, progressbar=False).read_bytes() == CONTENT


def test_replaced_cache_file_is_refused_naming_both_hashes(home, server, record):
    first_use(record.name)
    (home / FILENAME).write_bytes(CHANGED)
    with pytest.raises(WeightsError) as e:
        fetch(record.name, progressbar=False)
    assert sha(CONTENT) in str(e.value) and sha(CHANGED) in str(e.value)
    assert server.gets == 1  # the cached file is checked, not downloaded again


def test_deleting_the_record_trusts_the_next_file(home, server, record):
    first_use(record.name)
    (home / FILENAME).unlink()
    (home / f"{FILENAME}.sha256").unlink()
    server.put(FILENAME, CHANGED)
    assert first_use(record.name).read_bytes() == CHANGED
    assert fw.recorded_sha256(record) == sha(CHANGED)


def test_offline_message_names_file_url_and_folder(home, record, monkeypatch):
    monkeypatch.setenv("FACEETL_OFFLINE", "1")
    with pytest.raises(WeightsError) as e:
        fetch(record.name)
    msg = str(e.value)
    assert FILENAME in msg and record.url in msg and str(home) in msg and "offline" in msg
    assert "no published sha256" in msg and str(home / f"{FILENAME}.sha256") in msg
    # once recorded, the message gives the recorded hash to check a hand-fetched file against
    (home / f"{FILENAME}.sha256").write_text(f"{sha(CONTENT)}  {FILENAME}\n")
    with pytest.raises(WeightsError, match=f"recorded on first use: {sha(CONTENT)}"):
        fetch(record.name)


def test_unreachable_server_is_a_clear_error(home, record, server):
    server.close()  # nothing listens on the port any more
    with pytest.raises(WeightsError, match="could not be downloaded") as e:
        fetch(record.name, progressbar=False)
    assert record.url in str(e.value)
    assert os.listdir(home) == []


def test_web_page_instead_of_the_file_is_refused_and_not_recorded(home, server, record):
    server.put(FILENAME, b"<!DOCTYPE html><html><body>Google Drive can't scan this file")
    with pytest.raises(WeightsError, match="is a web page"):
        fetch(record.name, progressbar=False)
    assert os.listdir(home) == []


def test_file_put_in_the_cache_by_hand_is_trusted_and_recorded(home, record, monkeypatch):
    monkeypatch.setenv("FACEETL_OFFLINE", "1")
    (home / FILENAME).write_bytes(CHANGED)
    assert first_use(record.name) == home / FILENAME
    assert fw.recorded_sha256(record) == sha(CHANGED)


def test_mirror_file_is_recorded_on_first_use_and_a_changed_one_refused(
    home, record, tmp_path, monkeypatch
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / FILENAME).write_bytes(CONTENT)
    monkeypatch.setenv("FACEETL_WEIGHTS_URL", str(mirror))
    monkeypatch.setenv("FACEETL_OFFLINE", "1")
    assert first_use(record.name).read_bytes() == CONTENT
    assert fw.recorded_sha256(record) == sha(CONTENT)
    (home / FILENAME).unlink()
    (mirror / FILENAME).write_bytes(CHANGED)
    with pytest.raises(WeightsError) as e:
        fetch(record.name)
    assert sha(CONTENT) in str(e.value) and sha(CHANGED) in str(e.value)
    assert str(mirror / FILENAME) in str(e.value)
    assert os.listdir(home) == [f"{FILENAME}.sha256"]


def test_a_file_that_does_not_load_is_not_recorded(home, server, record):
    """A broken first download (here: not a weights file) is refused when it fails to load,
    removed from the cache and not recorded, so the genuine file is accepted afterwards."""
    broken = b"truncated download"
    server.put(FILENAME, broken)
    with pytest.raises(WeightsError, match="does not load") as e:
        first_use(record.name)
    assert sha(broken) in str(e.value) and "not recorded" in str(e.value)
    assert fw.recorded_sha256(record) is None and os.listdir(home) == []
    server.put(FILENAME, CONTENT)
    assert first_use(record.name).read_bytes() == CONTENT
    assert fw.recorded_sha256(record) == sha(CONTENT)
    # one put in the cache by hand that does not load is left there, unrecorded
    (home / FILENAME).unlink()
    (home / f"{FILENAME}.sha256").unlink()
    (home / FILENAME).write_bytes(broken)
    with pytest.raises(WeightsError, match="left where it is"):
        first_use(record.name)
    assert fw.recorded_sha256(record) is None and (home / FILENAME).read_bytes() == broken


def test_corrupt_record_is_an_error(home, record):
    (home / f"{FILENAME}.sha256").write_text("not a hash\n")
    with pytest.raises(WeightsError, match="does not hold a sha256"):
        fetch(record.name)


def test_a_record_needs_a_hash_or_trust_on_first_use():
    with pytest.raises(ValueError, match="trust_on_first_use=True"):
        register_weights("test-tofu-nohash", "https://example.invalid/x.bin", None)
    with pytest.raises(ValueError, match="moot"):
        register_weights(
            "test-tofu-both", "https://example.invalid/x.bin", "0" * 64, trust_on_first_use=True
        )
    assert "test-tofu-nohash" not in fw._WEIGHTS and "test-tofu-both" not in fw._WEIGHTS


def test_fairface_release_record_is_trust_on_first_use():
    from faceetl.nets import list_weights
    from faceetl.nets.fairface import FAIRFACE_RACE7_WEIGHTS

    wf = fw.weights_info(FAIRFACE_RACE7_WEIGHTS)
    assert wf in list_weights()
    assert wf.sha256 is None and wf.trust_on_first_use
    assert wf.filename == "res34_fair_align_multi_7_20190809.pt"
    # the file id the authors' README linked (dchen236/FairFace@ca92c03), Drive's direct download
    assert wf.url.startswith("https://drive.usercontent.google.com/download?id=113QMzQz")


def test_fairface_downloads_on_first_use_and_records_the_hash_in_the_provenance(
    home, server, monkeypatch
):
    """``FairFacePredictor()`` with an empty home: the default release is downloaded (here from
    the local server standing in for Google Drive), its hash recorded and put in the provenance;
    a different file later is refused."""
    import torch

    from faceetl.nets.fairface import FAIRFACE_RACE7_WEIGHTS
    from faceetl.predictors.fairface import FairFacePredictor
    from predictor_weights import fairface_state_dict

    real = fw.weights_info(FAIRFACE_RACE7_WEIGHTS)
    torch.save(fairface_state_dict(5), server.folder / real.filename)
    want = sha256sum(server.folder / real.filename)
    local = dataclasses.replace(real, url=f"{server.url}/{real.filename}")
    monkeypatch.setitem(fw._WEIGHTS, FAIRFACE_RACE7_WEIGHTS, local)
    prov = FairFacePredictor(device="cpu").provenance()
    assert prov["weights"] == {real.filename: want}
    assert prov["weights_trust_on_first_use"] and not prov["weights_pinned"]
    assert fw.recorded_sha256(local) == want and server.gets == 1
    assert FairFacePredictor(device="cpu").provenance()["weights"] == {real.filename: want}
    assert server.gets == 1
    (home / real.filename).unlink()
    torch.save(fairface_state_dict(6), server.folder / real.filename)
    with pytest.raises(WeightsError, match=want):
        FairFacePredictor(device="cpu")


def test_fairface_file_in_another_layout_is_not_trusted(home, server, monkeypatch):
    """A first FairFace download that is not FairFace's state dict fails to load and is not
    recorded: the genuine file fetched next is accepted (before, its hash was refused)."""
    import torch

    from faceetl.nets.fairface import FAIRFACE_RACE7_WEIGHTS
    from faceetl.predictors.fairface import FairFacePredictor
    from predictor_weights import fairface_state_dict

    real = fw.weights_info(FAIRFACE_RACE7_WEIGHTS)
    torch.save({"fc.weight": torch.zeros(3, 3)}, server.folder / real.filename)
    local = dataclasses.replace(real, url=f"{server.url}/{real.filename}")
    monkeypatch.setitem(fw._WEIGHTS, FAIRFACE_RACE7_WEIGHTS, local)
    with pytest.raises(WeightsError, match="not recorded"):
        FairFacePredictor(device="cpu")
    assert fw.recorded_sha256(local) is None and not (home / real.filename).exists()
    torch.save(fairface_state_dict(5), server.folder / real.filename)
    want = sha256sum(server.folder / real.filename)
    assert FairFacePredictor(device="cpu").provenance()["weights"] == {real.filename: want}
    assert fw.recorded_sha256(local) == want
