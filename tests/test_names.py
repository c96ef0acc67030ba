"""Names no input can break: crop names that fit and never collide, exact escapes for names that
are not UTF-8, recovery that touches only what its own notes could have written, settings
compared by what they do (issue 21)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dask
import pandas as pd
import pytest

from faceetl import Pife, extract_faces, read_faces, read_images
from faceetl.images import file_path
from faceetl.pife import SettingsError
from faceetl.pipeline.manifest import INFLIGHT, REFUSED, Output, make_note, recover
from faceetl.pipeline.names import (
    KEY_MAX,
    NAME_MAX,
    crop_file_re,
    crop_relpath,
    crop_stem,
    is_crop_stem,
    path_hash,
)
from helpers import IMAGES

PHOTO = IMAGES / "single" / "fr_obama_small.jpg"
OTHER = IMAGES / "single" / "deepface_img5.jpg"
THREADS = {"scheduler": "threads", "num_workers": 2}


def _pife(**kw) -> Pife:
    return Pife("opencv", 1, progress=False, partition_size=kw.pop("partition_size", 4), **kw)


def _name(n: int, k: int) -> str:
    """A file name of exactly ``n`` UTF-8 bytes, different for each ``k``, multi-byte inside."""
    head = f"{k:03d}-é-"
    tail = ".jpg"
    fill = n - len(head.encode()) - len(tail)
    return head + "x" * fill + tail


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


# -- crop names --------------------------------------------------------------------------------


def test_crop_names_are_unique_whatever_the_inputs_names():
    """`..`, `.`, `//`, escapes and one name being another's crop prefix never share a crop."""
    paths = [
        "s3://b/photos/a/../b.jpg", "s3://b/photos/b.jpg", "s3://b/photos/./b.jpg",
        "s3://b/photos//b.jpg", "s3://b/photos/a/b.jpg",
        "/d/a.jpg", "/d/a.jpg.face1.png", "/d/a.jpg.face1", "/d/\\xff.jpg", "/d/\\x5cxff.jpg",
    ]  # fmt: skip
    stems = [crop_stem(p, None) for p in paths]
    assert len(set(stems)) == len(paths)
    crops = {crop_relpath(p, None, k) for p in paths for k in range(12)}
    assert len(crops) == 12 * len(paths)
    for p, s in zip(paths, stems, strict=True):
        assert is_crop_stem(s) and s.endswith(f".{path_hash(p)}.face")
        assert crop_stem(p, None) == s  # stable
    # recovery's pattern for one input's crops matches none of another input's crops
    for p, s in zip(paths, stems, strict=True):
        mine = crop_file_re(s.rsplit("/", 1)[-1])
        others = {crop_relpath(q, None, k) for q in paths if q != p for k in range(12)}
        assert not any(mine.fullmatch(c.rsplit("/", 1)[-1]) and c.rsplit("/", 1)[0] ==
                       s.rsplit("/", 1)[0] for c in others)  # fmt: skip


@pytest.mark.parametrize("n", [100, 232, 240, 255])
def test_crop_names_fit_the_name_and_path_limits(n, tmp_path):
    root = "/photos"
    deep = "/".join(["d" * 250] * 15)  # 3,765 bytes of folders
    for path in (f"{root}/{_name(n, 0)}", f"{root}/{deep}/{_name(n, 1)}"):
        out = str(tmp_path / ("o" * 200) / "out")
        rel = crop_relpath(path, root, 123456, "webp", out)
        names = rel.split(os.sep)
        assert all(len(x.encode()) <= NAME_MAX for x in names)
        assert len(f".{names[-1]}.tmp-12345678".encode()) <= NAME_MAX  # the write's temporary
        assert len(os.path.join(out, rel).encode()) + 14 < 4096
        assert names[-1].startswith(_name(n, 0 if path.count("/") == 2 else 1)[:60])
    key_rel = crop_relpath(f"s3://b/in/{'k' * 900}/{_name(n, 2)}", "s3://b/in", 7, "png",
                           "s3://bucket/" + "p" * 100)  # fmt: skip
    assert len(f"{'p' * 100}/{key_rel}".encode()) <= KEY_MAX


@pytest.fixture()
def long_names(tmp_path) -> list[str]:
    """Photos named 232 to 255 bytes, a deep tree near the path limit, and a short name."""
    src = tmp_path / "in"
    src.mkdir()
    paths = []
    for k, n in enumerate(range(232, 256, 3)):
        shutil.copy(PHOTO, src / _name(n, k))
        paths.append(str(src / _name(n, k)))
    deep = src.joinpath(*["d" * 250] * 14)
    deep.mkdir(parents=True)
    shutil.copy(PHOTO, deep / _name(255, 99))
    paths.append(str(deep / _name(255, 99)))
    shutil.copy(PHOTO, src / "short.jpg")
    paths.append(str(src / "short.jpg"))
    return paths


def test_long_names_never_stop_a_run(long_names, tmp_path):
    """Every input of the long-name corpus gets its row and its crop (before, one name of
    232-255 bytes stopped the run, and every re-run at the same file)."""
    out = tmp_path / ("o" * 200) / "out"
    with dask.config.set(**THREADS):
        faces = _pife().extract(long_names, out).compute()
    assert sorted(faces["path"]) == sorted(long_names)
    assert (faces["status"] == "ok").all(), faces["status"].tolist()
    for p in faces["crop_path"]:
        assert Path(p).is_file() and str(out) in p
    with dask.config.set(**THREADS):  # a second run finds everything done
        again = _pife().extract(long_names, out).compute()
    assert len(again) == len(faces)
    crops = tmp_path / "crops"
    got = extract_faces(long_names, backend="opencv", crop_dir=crops, keep_crops=False)
    got = got.compute(**THREADS)
    assert (got["status"] == "ok").all() and all(Path(p).is_file() for p in got["crop_path"])


def test_a_crop_that_cannot_be_written_is_that_images_error_row(tmp_path):
    """One image's crop folder is blocked (a file stands where it should be): that image gets
    an error row naming the crop, the others their faces, and the run finishes."""
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    shutil.copy(PHOTO, src / "a" / "x.jpg")
    shutil.copy(PHOTO, src / "b" / "y.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("a file where the crops of a/ should go")
    with dask.config.set(**THREADS):
        faces = _pife().extract(str(src), out).compute()
    by = faces.set_index(faces["path"].map(os.path.basename))
    assert by.loc["x.jpg", "status"].startswith("error: cannot write the crop")
    assert str(out / "a") in by.loc["x.jpg", "status"]
    assert by.loc["y.jpg", "status"] == "ok" and Path(by.loc["y.jpg", "crop_path"]).is_file()


def test_s3_keys_near_the_key_limit(s3, tmp_path):
    """Input keys of ~1,000 bytes on moto's S3: crops fit S3's 1,024-byte key limit."""
    import fsspec

    fs = fsspec.filesystem("s3", **s3["storage_options"])
    bucket = s3["bucket"]
    keys = [
        f"{bucket}/in/{'k' * 200}/{'m' * 200}/{'n' * 357}/{_name(255, 0)}",
        f"{bucket}/in/{'q' * 774}/{_name(240, 1)}",
        f"{bucket}/in/short.jpg",
    ]
    for k in keys:
        fs.pipe_file(k, PHOTO.read_bytes())
    assert all(len(k.split("/", 3)[3].encode()) > 1010 for k in keys[:2])
    with dask.config.set(**THREADS):
        faces = _pife().extract(keys, f"{bucket}/out", storage_options=s3["storage_options"])
        faces = faces.compute()
    assert sorted(faces["path"]) == sorted(keys)
    assert (faces["status"] == "ok").all(), faces["status"].tolist()
    for p in faces["crop_path"]:
        assert len(p.split("/", 3)[3].encode()) <= KEY_MAX and fs.exists(p)


def test_inputs_differing_only_by_dots_and_slashes_keep_their_own_crops(memdir_photos):
    fs, paths = memdir_photos
    faces = extract_faces(paths, backend="opencv", crop_dir=f"memory://{_root(paths)}/crops")
    faces = faces.compute(**THREADS)
    ok = faces[faces["status"] == "ok"]
    assert ok["crop_path"].is_unique
    assert set(faces["path"]) == set(paths)
    for crop, path in zip(ok["crop_path"], ok["path"], strict=True):
        assert fs.cat_file(crop.removeprefix("memory://")) == bytes(
            ok.loc[(ok["path"] == path) & (ok["crop_path"] == crop), "crop"].iloc[0]
        )


def _root(paths: list[str]) -> str:
    return paths[0].removeprefix("memory://").split("/")[1]


@pytest.fixture()
def memdir_photos():
    """Keys that differ only by '..', '.' and '//' hold different photos (memory://)."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"faceetl-{uuid.uuid4().hex[:8]}"
    data = {
        f"/{root}/p/a/../b.jpg": PHOTO.read_bytes(),
        f"/{root}/p/b.jpg": OTHER.read_bytes(),
        f"/{root}/p/./b.jpg": (IMAGES / "single" / "facexlib_test.jpg").read_bytes(),
    }
    for k, v in data.items():
        fs.store[k] = fsspec.implementations.memory.MemoryFile(fs, k, v)
    yield fs, [f"memory://{k}" for k in data]
    fs.rm(f"/{root}", recursive=True)


# -- names that are not UTF-8 -------------------------------------------------------------------


def test_a_literal_escape_and_the_byte_it_names_are_two_inputs(tmp_path):
    """A file named `\\xff.jpg` and one named with the byte 0xFF: both read, each its own."""
    src = tmp_path / "in"
    src.mkdir()
    literal = os.path.join(os.fsencode(src), b"\\xff.jpg")
    raw = os.path.join(os.fsencode(src), b"\xff.jpg")
    shutil.copy(PHOTO, os.fsdecode(literal))
    shutil.copy(OTHER, os.fsdecode(raw))
    listed = read_images(src).compute()["path"].tolist()
    assert len(set(listed)) == 2
    assert {os.fsencode(file_path(p)) for p in listed} == {literal, raw}
    faces = extract_faces(str(src), backend="opencv").compute(**THREADS)
    sizes = faces.groupby("path")["image_width"].first()
    assert len(sizes) == 2  # each file read once, and a different photo each
    want = {os.fsencode(file_path(p)): w for p, w in sizes.items()}
    from PIL import Image

    assert want[literal] == Image.open(PHOTO).width and want[raw] == Image.open(OTHER).width
    with dask.config.set(**THREADS):
        done = _pife().extract(str(src), tmp_path / "out").compute()
    assert done.groupby("path")["image_width"].first().to_dict() == sizes.to_dict()


# -- recovery ----------------------------------------------------------------------------------


def _note(out: Path, name: str, note: dict) -> Path:
    folder = out / INFLIGHT
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(note))
    return folder / name


@pytest.mark.parametrize("where", ["absolute", "dotdot", "sibling", "symlink"])
def test_recovery_refuses_notes_naming_files_outside_the_output(tmp_path, where):
    out = tmp_path / "out"
    out.mkdir()
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "x.jpg.0123456789ab.face0.png"
    victim.write_bytes(b"someone else's file")
    part = "part-0123456789ab-00000.parquet"
    stem = {
        "absolute": str(victim_dir / "x.jpg.0123456789ab.face"),
        "dotdot": "../victim/x.jpg.0123456789ab.face",
        "sibling": str(tmp_path / "victim" / "x.jpg.0123456789ab.face"),
        "symlink": "link/x.jpg.0123456789ab.face",
    }[where]
    if where == "symlink":
        os.symlink(victim_dir, out / "link")
    note = {"version": 2, "part": part, "paths": ["/in/x.jpg"], "crops": [stem]}
    _note(out, f"{part}.json", note)
    recover(Output(str(out)))
    assert victim.read_bytes() == b"someone else's file"
    assert (out / REFUSED / f"{part}.json").is_file()
    assert not (out / INFLIGHT / f"{part}.json").exists()


def test_recovery_refuses_an_old_style_note_naming_a_url_elsewhere(tmp_path, caplog):
    """The layout of earlier faceetl notes (full crop prefixes), pointing at another folder."""
    out = tmp_path / "out"
    victim = tmp_path / "victim" / "x.jpg.face0.png"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"keep")
    part = "part-0123456789ab-00001.parquet"
    _note(out, f"{part}.json", {"part": part, "crops": [str(tmp_path / "victim" / "x.jpg.face")]})
    with caplog.at_level("WARNING"):
        recover(Output(str(out)))
    assert victim.exists() and "refused the in-flight note" in caplog.text


def test_recovery_of_one_input_spares_the_crops_of_another_with_a_longer_name(tmp_path):
    """`a.jpg` (in flight when the run died) and `a.jpg.face1.png` (committed): recovering the
    first leaves the second's crop (its name began with the first's old crop prefix)."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(PHOTO, src / "a.jpg.face1.png")
    out = tmp_path / "out"
    with dask.config.set(**THREADS):
        first = _pife().extract([str(src / "a.jpg.face1.png")], out).compute()
    kept = first["crop_path"].iloc[0]
    shutil.copy(PHOTO, src / "a.jpg")
    o = Output(str(out))
    record = json.loads((out / "faces.parquet" / "_faceetl.json").read_text())
    part = "part-0123456789ab-00003.parquet"
    note = make_note(o, part, [str(src / "a.jpg")], record["crop_root"])
    in_flight = out / f"a.jpg.{path_hash(str(src / 'a.jpg'))}.face0.png"
    in_flight.write_bytes(b"half a run")
    _note(out, f"{part}.json", note)
    assert recover(o) == 1
    assert Path(kept).is_file() and not in_flight.exists()
    assert not (out / REFUSED).exists()


def test_a_tampered_note_for_a_real_input_is_refused(tmp_path):
    """A note whose crop stem is not where this output puts that input's crops."""
    out = tmp_path / "out"
    out.mkdir()
    other = out / "b.jpg.0123456789ab.face0.png"
    other.write_bytes(b"another input's committed crop")
    part = "part-0123456789ab-00004.parquet"
    note = {"version": 2, "part": part, "paths": ["/in/a.jpg"], "crops": ["b.jpg.0123456789ab.face"]}
    _note(out, f"{part}.json", note)
    recover(Output(str(out)))
    assert other.exists() and (out / REFUSED / f"{part}.json").exists()


# -- settings by effect --------------------------------------------------------------------------


def test_settings_are_compared_by_effect(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(PHOTO, src / "a.jpg")
    out = tmp_path / "out"
    with dask.config.set(**THREADS):
        Pife("retinaface", 1, progress=False).extract([str(src / "a.jpg")], out)
        shutil.copy(OTHER, src / "b.jpg")
        home = Path(os.environ["FACEETL_HOME"])
        same = [
            {"score_threshold": 0.5},  # the default, given
            {"conf_threshold": 0.5},  # the old name
            {"weights": str(home / "mobilenet0.25_Final.pth")},  # the release, by path
            {"crop_format": "png", "max_side": 2048, "network": "mobilenet0.25"},
        ]
        for params in same:
            Pife("retinaface", 1, progress=False, **params).extract([str(src / "a.jpg")], out)
        with pytest.raises(SettingsError, match="score_threshold: 0.5 -> 0.6"):
            Pife("retinaface", 1, progress=False, score_threshold=0.6).extract(
                [str(src / "b.jpg")], out
            )
        with pytest.raises(SettingsError, match="crop_format"):
            Pife("retinaface", 1, progress=False, crop_format="jpeg").extract(
                [str(src / "b.jpg")], out
            )
    assert len(read_faces(out / "faces.parquet")) >= 1


def test_an_output_written_before_settings_by_effect_resumes(tmp_path):
    """Settings stored as typed by an earlier faceetl (no defaults filled in) still match."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(PHOTO, src / "a.jpg")
    out = tmp_path / "out"
    with dask.config.set(**THREADS):
        _pife().extract([str(src / "a.jpg")], out)
    record_file = out / "faces.parquet" / "_faceetl.json"
    record = json.loads(record_file.read_text())
    record["settings"]["backend_params"] = {}
    record_file.write_text(json.dumps(record))
    shutil.copy(OTHER, src / "b.jpg")
    with dask.config.set(**THREADS):
        faces = _pife().extract([str(src / "a.jpg"), str(src / "b.jpg")], out).compute()
    assert set(pd.Series(faces["path"]).map(os.path.basename)) == {"a.jpg", "b.jpg"}
