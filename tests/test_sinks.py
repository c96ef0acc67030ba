"""Training-set exports read back by the libraries trainers use: WebDataset shards with
``webdataset`` (local and moto's S3), Hugging Face parquet with ``datasets``, the ImageFolder
layout by torchvision's rules (and torchvision where it imports); splits that keep a group on
one side; a folder that is not an export refused; a missing extra named.

The faces are the bundled photos' (retinaface, extracted once for the module), with labels
added as a user would: a folder name, pseudo identities spread over the photos, and label
values that cannot be folder names as they are.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import faceetl
from faceetl.extras import MissingExtraError
from faceetl.sinks import Split, folder_name, sample_key
from helpers import ROOT

EXAMPLES = ROOT / "examples" / "images"
#: labels no folder can be named as they are (None and "" are skipped and counted)
TRICKY = {"multiface": "a/b", "two_people": "", "t1": None, "obama_small": ".hidden",
          "portrait": "50% x\\y"}  # fmt: skip
#: torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The bundled photos' faces, crops in the frame and as files, with label columns."""
    crops = tmp_path_factory.mktemp("sink_crops")
    faces = faceetl.extract_faces(str(EXAMPLES), backend="retinaface", crop_dir=str(crops))
    df = faceetl.compute(faces, progress=False).reset_index(drop=True)
    df["person"] = [Path(p).parent.name for p in df["path"]]
    df["identity"] = (df["face"] % 3).astype("Int64")  # pseudo identities across the photos
    df["tricky"] = [TRICKY.get(Path(p).stem) for p in df["path"]]
    assert (df["status"] == "ok").sum() >= 12 and (df["status"] != "ok").any()
    return df


@pytest.fixture(scope="module")
def written(extracted: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The faces written as a dataset of three parts (crops inside), as write_faces writes."""
    out = tmp_path_factory.mktemp("sink_faces") / "faces"
    faceetl.write_faces(dd.from_pandas(extracted, npartitions=3, sort=False), out, progress=False)
    return out


def ok_faces(df: pd.DataFrame) -> dict[str, pd.Series]:
    """The ok faces by sample key."""
    ok = df[df["status"] == "ok"]
    return {sample_key(r["path"], r["face"]): r for _, r in ok.iterrows()}


def check_samples(samples: list[dict], df: pd.DataFrame, classes: list[str] | None,
                  label: str | None) -> None:  # fmt: skip
    """WebDataset samples as read back: every ok face once, its crop's bytes, its row's
    columns in the JSON, its class index."""
    faces = ok_faces(df)
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) and set(keys) == set(faces)
    for s in samples:
        row = faces[s["__key__"]]
        assert s["png"] == row["crop"]
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"] and meta["path"] == row["path"]
        assert meta["face"] == row["face"]
        assert np.array_equal(np.array(meta["landmarks"], np.float32), np.asarray(row["landmarks"]))
        assert "crop" not in meta
        if label:
            assert classes[int(s["cls"])] == folder_name(row[label])


def test_split_settings():
    assert Split.parse("identity") == Split(("identity",), "identity", 0.1, 0)
    assert Split.parse({"by": ["a", "b"], "val_fraction": 0.2}) == Split(("a", "b"), None, 0.2, 0)
    with pytest.raises(TypeError, match="needs 'by'"):
        Split.parse({"group": "path"})
    with pytest.raises(ValueError, match="between 0 and 1"):
        Split.parse({"by": "a", "val_fraction": 1.5})


def test_sample_keys_and_folder_names():
    key = sample_key("photos/a b/IMG_0001.v2.jpg", 3)
    assert re.fullmatch(r"IMG-0001_[0-9a-f]{16}_3", key)
    assert key == sample_key("photos/a b/IMG_0001.v2.jpg", 3) != sample_key("photos/a/IMG_0001.jpg", 3)
    assert sample_key("/x/ü.jpg", 0).count("_") == 1  # no slug: hash and face only
    assert folder_name("a/b") == "a%2Fb" and folder_name("..") == "%2E."
    assert folder_name("50% x\\y") == "50%25 x%5Cy" and folder_name(3.0) == "3"
    from urllib.parse import unquote

    for text in ["a/b", ".hidden", "50% x\\y", "tab\there", "ümlaut"]:
        assert unquote(folder_name(text)) == text
    assert len(folder_name("x" * 500).encode()) <= 200 != folder_name("x" * 499)


def test_webdataset_round_trip(extracted, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "wds"
    frame = dd.from_pandas(extracted, npartitions=3, sort=False)
    got = faceetl.write_webdataset(frame, out, label="person", shard_size=5, progress=False)
    n = len(ok_faces(extracted))
    shards = -(-n // 5)
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["all"] == {"pattern": f"faces-{{000000..{shards - 1:06d}}}.tar",
                                      "shards": shards, "samples": n}  # fmt: skip
    assert got.pattern == str(out / index["splits"]["all"]["pattern"]) and got.samples == n
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == index["classes"] == got.classes == ["family", "group", "portraits"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json", "classes.txt", *[f"faces-{i:06d}.{e}" for i in range(shards)
                                        for e in ("tar", "parquet")]])  # fmt: skip
    samples = list(wds.WebDataset(got.pattern, shardshuffle=False))
    check_samples(samples, extracted, classes, "person")
    faces = ok_faces(extracted)
    for i in range(shards):  # the parquet beside each shard: exactly its faces, in its order
        url = str(out / f"faces-{i:06d}.tar")
        rows = pd.read_parquet(out / f"faces-{i:06d}.parquet")
        assert rows["key"].tolist() == [s["__key__"] for s in samples if s["__url__"] == url]
        assert len(rows) == (5 if i < shards - 1 else n - 5 * (shards - 1))
        assert "crop" not in rows.columns and rows["cls"].tolist() == [
            classes.index(faces[k]["person"]) for k in rows["key"]]  # fmt: skip
    datasets = pytest.importorskip("datasets")  # its webdataset reader takes the shards too
    hf = datasets.load_dataset("webdataset", data_files={"train": str(out / "faces-*.tar")},
                               cache_dir=str(tmp_path / "hf_cache"))["train"]  # fmt: skip
    assert sorted(hf["__key__"]) == sorted(faces) and type(hf.features["png"]).__name__ == "Image"
    row = hf[0]
    assert row["json"]["landmarks"] == [float(v) for v in faces[row["__key__"]]["landmarks"]]


def test_webdataset_by_bytes_from_crop_files_to_s3(extracted, tmp_path, s3, monkeypatch):
    """Shards cut by size from a faces dataset whose crops are files (as Pife writes them),
    written to S3 and read back there with webdataset."""
    wds = pytest.importorskip("webdataset")
    fs, opts = s3["fs"], s3["storage_options"]
    faceetl.write_faces(extracted.assign(crop=None), tmp_path / "faces", progress=False)
    limit = 4 * 30_000
    got = faceetl.write_webdataset(str(tmp_path / "faces"), f"{s3['bucket']}/sets/wds",
                                   shard_bytes=limit, storage_options=opts, progress=False)  # fmt: skip
    assert got.pattern.startswith(f"{s3['bucket']}/sets/wds/faces-{{000000..")
    names = fs.ls(f"{s3['bucket']}/sets/wds", detail=True)
    tars = sorted(e["name"] for e in names if e["name"].endswith(".tar"))
    assert len(tars) == got.splits["all"].files >= 2
    assert all(e["size"] <= limit for e in names if e["name"].endswith(".tar"))
    assert not [e["name"] for e in fs.find(f"{s3['bucket']}/sets/wds/.faceetl")]
    # webdataset reads a URL its own way (curl, gsutil, pipe:): S3 through s3fs here
    monkeypatch.setitem(wds.gopen_schemes, "s3",
                        lambda url, mode="rb", bufsize=8192, **kw: fs.open(url, mode))  # fmt: skip
    samples = list(wds.WebDataset(got.pattern, shardshuffle=False))
    check_samples(samples, extracted, None, None)


def test_huggingface_dataset(extracted, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    split = {"by": "identity", "group": "path", "val_fraction": 0.3}
    got = faceetl.write_huggingface(dd.from_pandas(extracted, npartitions=2, sort=False), out,
                                    label="person", split=split, shard_size=4, progress=False)  # fmt: skip
    assert got.splits["train"].samples and got.splits["validation"].samples
    files = sorted(p.relative_to(out).as_posix() for p in (out / "data").iterdir())
    assert files == sorted(
        [f"data/train-{i:05d}-of-{got.splits['train'].files:05d}.parquet"
         for i in range(got.splits["train"].files)]
        + [f"data/validation-{i:05d}-of-{got.splits['validation'].files:05d}.parquet"
           for i in range(got.splits["validation"].files)])  # fmt: skip
    cache = tmp_path / "hf_cache"
    ds = datasets.load_dataset(str(out), cache_dir=str(cache))  # the folder alone says it all
    assert sorted(ds) == ["train", "validation"]
    assert ds["train"].features["label"].names == got.classes == ["family", "group", "portraits"]
    assert type(ds["train"].features["image"]).__name__ == "Image"
    faces = ok_faces(extracted)
    seen = []
    for part in ("train", "validation"):
        for i in range(len(ds[part])):
            row = ds[part][i]
            face = faces[row["key"]]
            want = np.asarray(Image.open(io.BytesIO(face["crop"])).convert("RGB"))
            assert np.array_equal(np.asarray(row["image"].convert("RGB")), want)
            assert np.array_equal(np.array(row["landmarks"], np.float32), np.asarray(face["landmarks"]))
            assert np.allclose(row["affine"], face["affine"]) and row["shape"] is None
            assert got.classes[row["label"]] == face["person"] and row["identity"] == face["identity"]
            seen.append((part, row["key"], row["path"]))
    assert sorted(k for _, k, _ in seen) == sorted(faces)
    sides = {part: {p for q, _, p in seen if q == part} for part in ("train", "validation")}
    assert not sides["train"] & sides["validation"]  # no photo on both sides
    again = faceetl.load_huggingface(out, cache_dir=str(cache))
    assert {k: len(v) for k, v in again.items()} == {k: len(v) for k, v in ds.items()}


def test_imagefolder_layout(extracted, tmp_path):
    """Labels that cannot be folder names are escaped or skipped (and counted); the layout
    follows torchvision's ImageFolder rules, and torchvision reads it where it imports."""
    out = tmp_path / "folders"
    got = faceetl.write_imagefolder(extracted.assign(crop=None), out, label="tricky",
                                    progress=False)  # fmt: skip
    faces = ok_faces(extracted)
    kept = {k: r for k, r in faces.items() if isinstance(r["tricky"], str) and r["tricky"]}
    assert got.skipped == {"no tricky (null or empty)": len(faces) - len(kept)} and got.samples == len(kept)
    index = json.loads((out / "index.json").read_text())
    assert index["skipped"] == got.skipped and index["splits"]["all"]["files"] == len(kept)
    # torchvision's find_classes: the sorted folder names; make_dataset: files by extension,
    # every class folder holding at least one
    classes = sorted(e.name for e in os.scandir(out) if e.is_dir())
    assert classes == got.classes == (out / "classes.txt").read_text().splitlines()
    assert classes == sorted({folder_name(v) for v in TRICKY.values() if v})
    assert not [c for c in classes if c.startswith(".")]
    files = {}
    for c in classes:
        inside = sorted(os.scandir(out / c), key=lambda e: e.name)
        assert inside and all(e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) for e in inside)
        files.update({Path(e.name).stem: (c, Path(e.path).read_bytes()) for e in inside})
    assert set(files) == set(kept)
    for key, (c, data) in files.items():
        assert c == folder_name(kept[key]["tricky"]) and data == kept[key]["crop"]
    try:
        from torchvision.datasets import ImageFolder
    except ImportError:
        return  # torchvision is the user's (README, Install): the rules above are its rules
    ds = ImageFolder(str(out))
    assert ds.classes == classes and len(ds) == len(kept)


@pytest.mark.parametrize("split", [{"by": "identity", "group": "identity", "val_fraction": 0.3},
                                   {"by": "person", "group": "path", "val_fraction": 0.4}])
def test_splits_keep_each_group_on_one_side(extracted, written, tmp_path, split):
    """From a lazily read dataset (Dask plans a projection of it with other partitions) and
    from a pandas frame."""
    wds = pytest.importorskip("webdataset")
    group = split["group"]
    lazy = faceetl.read_faces(written, lazy=True)
    assert lazy.npartitions == 3
    got = faceetl.write_webdataset(lazy, tmp_path / "wds", label="person", split=split,
                                   shard_size=3, progress=False)  # fmt: skip
    folders = faceetl.write_imagefolder(extracted, tmp_path / "folders", label="person",
                                        split=split, progress=False)  # fmt: skip
    faces = ok_faces(extracted)
    sides = {}
    for side in ("train", "val"):
        samples = list(wds.WebDataset(got.splits[side].location, shardshuffle=False))
        sides[side] = [s["__key__"] for s in samples]
        on_disk = [p.stem for p in (tmp_path / "folders" / side).glob("*/*.png")]
        assert sorted(on_disk) == sorted(sides[side])
        assert folders.splits[side].samples == len(sides[side])
    assert sides["train"] and sides["val"]
    assert sorted(sides["train"] + sides["val"]) == sorted(faces)  # every face once
    groups = {side: {str(faces[k][group]) for k in keys} for side, keys in sides.items()}
    assert not groups["train"] & groups["val"]
    index = json.loads((tmp_path / "wds" / "index.json").read_text())
    assert index["split"]["group"] == group and sorted(index["splits"]) == ["train", "val"]


def test_a_folder_that_is_not_an_export_is_refused_and_a_finished_one_kept(extracted, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no faceetl export wrote"):
        faceetl.write_imagefolder(extracted, other, label="person", progress=False)
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
    out = tmp_path / "set"
    faceetl.write_imagefolder(extracted, out, label="person", progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        faceetl.write_imagefolder(extracted, out, label="identity", progress=False)
    with pytest.raises(FileExistsError, match="imagefolder export"):
        faceetl.write_webdataset(extracted, out, overwrite=True, progress=False)
    again = faceetl.write_imagefolder(extracted, out, label="identity", overwrite=True,
                                      progress=False)  # fmt: skip
    assert sorted(e.name for e in os.scandir(out) if e.is_dir()) == again.classes == ["0", "1", "2"]
    empty = faceetl.write_webdataset(extracted[extracted["status"] != "ok"], tmp_path / "none",
                                     progress=False)  # fmt: skip
    assert empty.samples == 0 and empty.splits["all"].files == 0
    assert json.loads((tmp_path / "none" / "index.json").read_text())["splits"]["all"] == {
        "pattern": None, "shards": 0, "samples": 0}  # fmt: skip
    with pytest.raises(KeyError, match="no column 'nope'"):
        faceetl.write_webdataset(extracted, tmp_path / "x", label="nope", progress=False)


def test_missing_extras_are_named(tmp_path):
    """Without the formats extra: write_webdataset and load_huggingface name it, before any
    work (the import system hides the packages in a fresh interpreter)."""
    script = r"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("webdataset", "datasets"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
import faceetl
sys.meta_path.insert(0, NotInstalled())
for call in (lambda: faceetl.write_webdataset("nowhere", sys.argv[1]),
             lambda: faceetl.load_huggingface(sys.argv[1])):
    try:
        call()
    except Exception as e:
        print(type(e).__name__, e)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines == [
        f"{MissingExtraError.__name__} {what} needs '{mod}', which is not installed: "
        "pip install 'faceetl[formats]'"
        for what, mod in (("faceetl.write_webdataset", "webdataset"),
                          ("faceetl.load_huggingface", "datasets"))
    ]  # fmt: skip
    assert not (tmp_path / "out").exists()


# A driver that dies mid-export: SIGKILL (what the OOM killer or a lost machine does: no
# clean-up runs) sent by the process to itself once `kill_after` shards are whole, watched
# through the profiler hook on every thread (nothing of faceetl is replaced).
EXPORT = r"""
import os, signal, sys, threading
import faceetl

faces, out, shard_size, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if kill_after:
    whole = []

    def watch(frame, event, arg):
        if event == "return" and frame.f_code.co_name == "write_shard":
            whole.append(frame)
            if len(whole) >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.setprofile(watch)
    sys.setprofile(watch)
faceetl.write_webdataset(faces, out, label="person", shard_size=shard_size, progress=False)
print("finished")
"""


@pytest.mark.slow
def test_a_killed_export_run_again_gives_every_face_once(extracted, written, tmp_path):
    wds = pytest.importorskip("webdataset")
    faces = written
    out = tmp_path / "wds"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def export(shard_size: int, kill_after: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", EXPORT, str(faces), str(out), str(shard_size),
                               str(kill_after)], env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip

    killed = export(2, 3)
    assert killed.returncode == -9, killed.stderr[-3000:]
    left = sorted(p.name for p in out.iterdir())
    whole = [n for n in left if re.fullmatch(r"faces-[0-9]{6}\.tar", n)]
    assert "index.json" not in left and len(whole) >= 3  # some shards, no finished export
    assert (out / ".faceetl" / "lock.json").exists()  # the dead run's lock
    print(f"killed after {len(whole)} whole shards; left: {left}")

    again = export(3, 0)  # another shard size: other names than the killed run's
    assert again.returncode == 0 and "finished" in again.stdout, again.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    pattern = str(out / index["splits"]["all"]["pattern"])
    n = len(ok_faces(extracted))
    assert index["splits"]["all"]["shards"] == -(-n // 3)
    samples = list(wds.WebDataset(pattern, shardshuffle=False))
    check_samples(samples, extracted, index["classes"], "person")
    # nothing of the killed run is left to read: every tar is one the pattern names
    tars = sorted(str(p) for p in out.glob("*.tar"))
    assert tars == sorted(str(out / f"faces-{i:06d}.tar") for i in range(-(-n // 3)))
    assert not [p for p in out.rglob(".*") if p.name != ".faceetl"] and not (out / ".faceetl").exists()
    every = list(wds.WebDataset(tars, shardshuffle=False))
    assert sorted(s["__key__"] for s in every) == sorted(s["__key__"] for s in samples)
