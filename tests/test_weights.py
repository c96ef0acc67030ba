"""The weights registry: cached files verified, wrong hashes refused, clear offline errors."""

from __future__ import annotations

import shutil

import pytest

from faceetl import weights
from faceetl.weights import WeightsError, fetch, register_weights, sha256sum
from helpers import SHARED

SRC = SHARED / "weights" / "mtcnn" / "pnet.pt"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEETL_HOME", str(tmp_path))
    monkeypatch.setenv("FACEETL_OFFLINE", "1")
    return tmp_path


def _entry():
    return register_weights(
        "test-pnet-copy",
        "https://example.invalid/weights/pnet_copy.pt",
        sha256sum(SRC),
        filename="pnet_copy.pt",
    )


def test_cached_file_with_right_hash_is_used_offline(home):
    wf = _entry()
    shutil.copy(SRC, home / wf.filename)
    assert fetch(wf.name) == home / wf.filename


def test_offline_missing_error_names_file_url_and_folder(home):
    wf = _entry()
    with pytest.raises(WeightsError) as e:
        fetch(wf.name)
    msg = str(e.value)
    assert wf.filename in msg and wf.url in msg and str(home) in msg


def test_wrong_hash_is_refused(home):
    wf = _entry()
    (home / wf.filename).write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="refusing"):
        fetch(wf.name)


def test_download_failure_is_a_clear_error(home, monkeypatch):
    monkeypatch.delenv("FACEETL_OFFLINE")
    wf = _entry()  # .invalid never resolves: the download fails like an offline machine
    with pytest.raises(WeightsError, match="could not be downloaded"):
        fetch(wf.name, progressbar=False)


def test_every_registered_file_is_in_shared_with_its_hash():
    from faceetl.nets import list_weights

    shared = {p.name: p for p in (SHARED / "weights").rglob("*") if p.is_file()}
    checked = 0
    for wf in list_weights():  # every release, whatever was imported before
        assert wf.url.startswith("https://"), wf
        assert wf.trust_on_first_use or len(wf.sha256) == 64, wf  # FairFace: no published hash
        if wf.filename in shared:
            assert sha256sum(shared[wf.filename]) == wf.sha256, wf.name
            checked += 1
    assert checked >= 8  # retinaface, mtcnn x3, ssd x2, mediapipe x2, dlib mmod


def test_load_state_dict_strips_module_prefix(tmp_path):
    import torch

    sd = {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}
    torch.save(sd, tmp_path / "sd.pth")
    out = weights.load_state_dict(tmp_path / "sd.pth")
    assert set(out) == {"a.weight", "b"}
