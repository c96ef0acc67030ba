"""The Dask pipeline: every input has its row, labels carried, schema kept, crops on disk."""

from __future__ import annotations

import hashlib
import os
import shutil

import dask
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceetl import SCHEMA, decode_png, extract_faces, landmarks_array, read_faces, read_images
from faceetl.pipeline.names import crop_relpath, path_hash
from helpers import IMAGES, make_bad_inputs

BACKEND = "dlib"  # fast and fully offline: the pipeline tests do not depend on a model's download


@pytest.fixture(scope="module")
def sync():
    with dask.config.set(scheduler="sync"):
        yield


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Real photos, a blank image, and every kind of bad file."""
    d = tmp_path_factory.mktemp("mixed")
    bad = make_bad_inputs(d)
    Image.new("RGB", (320, 240), (128, 128, 128)).save(d / "blank.jpg")
    good = [IMAGES / "single" / "fr_obama_small.jpg", IMAGES / "group" / "facenet_multiface.jpg"]
    paths = [str(p) for p in good] + [str(d / "blank.jpg")] + [str(p) for p in bad.values()]
    return paths, bad


def test_every_input_has_a_row_and_bad_input_a_status(sync, mixed):
    paths, bad = mixed
    df = extract_faces(read_images(paths, partition_size=4), backend=BACKEND).compute()
    assert set(df["path"]) == set(paths)
    status = df.groupby("path")["status"].first()
    assert status[str(IMAGES / "single" / "fr_obama_small.jpg")] == "ok"
    assert (df[df["path"].str.endswith("multiface.jpg")]["status"] == "ok").sum() == 6
    assert status[str(bad["zero"])].startswith("error: empty file")
    assert status[str(bad["truncated"])].startswith("error: corrupt")
    assert status[str(bad["text"])].startswith("error: not an image")
    assert status[str(bad["missing"])].startswith("error: file not found")
    assert status[str(bad["huge"])].startswith("error: image too large")
    assert status[df["path"].str.endswith("blank.jpg").idxmax() and str(paths[2])] == "no_face"
    for name in ("gray", "rgba", "sixteen", "cmyk", "exif", "unicode"):
        assert status[str(bad[name])] == "ok", name  # a face is found in each odd-format copy
    errors = df[df["status"].str.startswith("error")]
    assert (errors["face"] == -1).all() and errors["crop"].isna().all()
    sha = df.groupby("path")["file_sha256"].first()  # the bytes' hash, where they could be read
    assert pd.isna(sha[str(bad["missing"])])
    for p in (paths[0], str(bad["truncated"])):
        assert sha[p] == hashlib.sha256(open(p, "rb").read()).hexdigest()


def test_exif_rotated_face_found_upright(sync, mixed):
    paths, bad = mixed
    df = extract_faces([str(bad["exif"]), paths[0]], backend=BACKEND).compute()
    a, b = (df[df["path"] == p].iloc[0] for p in (str(bad["exif"]), paths[0]))
    assert (a.image_width, a.image_height) == (b.image_width, b.image_height)
    assert abs(a.x1 - b.x1) < 3 and abs(a.y1 - b.y1) < 3


def test_schema_meta_matches_result_and_parquet_roundtrip(sync, tmp_path):
    src = pd.DataFrame(
        {"path": [str(IMAGES / "single" / f) for f in ("fr_obama_small.jpg", "deepface_img5.jpg")],
         "label": ["a", "b"], "subject": [7, 9]}
    )  # fmt: skip
    faces = extract_faces(src, backend=BACKEND, size=128)
    assert list(faces.columns) == [*SCHEMA, "label", "subject"]
    df = faces.compute()
    assert (df.dtypes == faces._meta.dtypes).all()
    assert df.set_index("path")["label"].to_dict() == dict(zip(src.path, src.label, strict=True))
    crop = decode_png(df["crop"].iloc[0])
    assert crop.shape == (128, 128, 3)
    assert landmarks_array(df).shape == (2, 5, 2)
    faces.to_parquet(tmp_path / "faces.parquet")
    back = read_faces(tmp_path / "faces.parquet").sort_values("path", ignore_index=True)
    df = df.sort_values("path", ignore_index=True)
    assert len(back) == 2 and bytes(back["crop"].iloc[0]) == bytes(df["crop"].iloc[0])
    assert np.allclose(landmarks_array(back), landmarks_array(df), equal_nan=True)


def test_label_clash_is_refused():
    with pytest.raises(ValueError, match="clash"):
        read_images(pd.DataFrame({"path": ["a.jpg"], "score": [1]}))


def test_unknown_backend_fails_early():
    with pytest.raises(ValueError, match="unknown backend"):
        extract_faces(["a.jpg"], backend="nope")


def test_glob_and_folder_inputs(tmp_path):
    for sub in ("a", "b/c"):
        (tmp_path / sub).mkdir(parents=True)
        shutil.copy(IMAGES / "single" / "fr_obama_small.jpg", tmp_path / sub / "x.jpg")
    (tmp_path / "notes.txt").write_text("x")
    assert len(read_images(str(tmp_path / "**" / "*.jpg")).compute()) == 2
    # a folder gives every file (the decoder reports notes.txt); extensions= filters
    assert sorted(read_images(tmp_path).compute()["path"].map(os.path.basename)) == [
        "notes.txt",
        "x.jpg",
        "x.jpg",
    ]
    assert len(read_images(tmp_path, extensions=[".jpg"]).compute()) == 2
    with pytest.raises(FileNotFoundError):
        read_images(str(tmp_path / "*.png"))


@pytest.mark.parametrize(
    "path,root,expected",
    [
        ("/data/photos/a/b.jpg", "/data/photos", "a/b.jpg.{h}.face0.png"),
        ("/data/photos/b.jpg", "/data/photos", "b.jpg.{h}.face0.png"),
        ("/elsewhere/x/../y.jpg", "/data/photos", "elsewhere/y.jpg.{h}.face0.png"),
        ("/data/photos/été/顔.jpg", "/data/photos", "été/顔.jpg.{h}.face0.png"),
    ],
)
def test_crop_paths_mirror_layout_and_stay_inside(path, root, expected, tmp_path):
    rel = crop_relpath(path, root, 0)
    assert rel == expected.format(h=path_hash(path))
    full = os.path.abspath(os.path.join(tmp_path, rel))
    assert os.path.commonpath([str(tmp_path), full]) == str(tmp_path)


def test_crops_written_mirroring_inputs(sync, tmp_path):
    root = tmp_path / "in"
    for sub in ("p/q", "r"):
        (root / sub).mkdir(parents=True)
        shutil.copy(IMAGES / "single" / "fr_obama_small.jpg", root / sub / "face.jpg")
    out = tmp_path / "out"
    df = extract_faces(str(root / "**" / "*.jpg"), backend=BACKEND, crop_dir=out, crop_root=root,
                       keep_crops=False).compute()  # fmt: skip
    assert df["crop"].isna().all()
    h = {sub: path_hash(str(root / sub / "face.jpg")) for sub in ("p/q", "r")}
    assert sorted(os.path.relpath(p, out) for p in df["crop_path"]) == [
        f"p/q/face.jpg.{h['p/q']}.face0.png", f"r/face.jpg.{h['r']}.face0.png"]  # fmt: skip
    assert all(np.asarray(Image.open(p)).shape == (112, 112, 3) for p in df["crop_path"])


def test_graph_carries_no_model():
    """Building the graph loads nothing here, and the graph is small: models load on workers."""
    import cloudpickle

    from faceetl.backends import base

    base.clear_cache()
    faces = extract_faces(
        [str(IMAGES / "single" / "fr_obama_small.jpg")] * 50, backend="retinaface"
    )
    assert base.REGISTRY.loaded() == []
    assert len(cloudpickle.dumps(faces.__dask_graph__())) < 200_000


def test_a_failing_image_costs_only_its_own_row():
    """The batch is bisected: the image the backend refuses gets an error, the others results."""
    from faceetl.backends.base import get_backend
    from faceetl.images import load_image
    from faceetl.pipeline.stages import detect_isolating

    good = load_image(IMAGES / "single" / "fr_obama_small.jpg")
    bad = good.astype(np.float32)  # RetinaFace refuses anything but RGB uint8
    out = detect_isolating(get_backend("retinaface"), [good, good, bad, good, good])
    assert [type(o).__name__ for o in out] == ["Detections"] * 2 + ["ValueError"] + [
        "Detections"
    ] * 2
    assert all(len(o) == 1 for i, o in enumerate(out) if i != 2)


def test_a_folder_gives_every_entry_a_one_line_row(tmp_path):
    """FIFOs, sockets, symlink loops, non-UTF-8 names and unlisted extensions all get a row;
    nothing blocks or stops the run; every status is one line."""
    import socket

    face = (IMAGES / "single" / "fr_obama_small.jpg").read_bytes()
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for name in ("a.jfif", "b.heic", "no_extension", "sub/c.JPG"):
        (d / name).write_bytes(face)
    (d / "notes.txt").write_text("not a photo\n")
    os.mkfifo(d / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "s.sock"))
    os.symlink(d / "loop.jpg", d / "loop.jpg")
    raw = os.fsencode(d) + b"/caf\xe9.jpg"
    with open(raw, "wb") as f:
        f.write(face)
    os.symlink(d / "sub", d / "linked_folder")  # not descended into: no duplicate rows

    try:
        ddf = extract_faces(read_images(d, partition_size=3), backend="opencv", landmarks=None)
        df = ddf.compute(scheduler="threads")
    finally:
        sock.close()
    status = df.groupby("path")["status"].first()
    assert len(status) == 9 and set(df["path"]) == set(status.index)
    by_name = {os.path.basename(p): s for p, s in status.items()}
    for name in ("a.jfif", "b.heic", "no_extension", "c.JPG", "caf\\xe9.jpg"):
        assert by_name[name] == "ok", name
    assert by_name["pipe.jpg"] == by_name["s.sock"] == "error: not a regular file"
    assert by_name["loop.jpg"] == "error: symlink loop"
    assert by_name["notes.txt"].startswith("error: not an image")
    assert not df["status"].str.contains("\n").any()

    only = read_images(d, extensions=[".jpg", ".jfif"]).compute()
    names = sorted(os.path.basename(p) for p in only["path"])
    assert names == ["a.jfif", "c.JPG", "caf\\xe9.jpg", "loop.jpg", "pipe.jpg"]


def test_wrong_arguments_fail_where_they_are_written(tmp_path):
    from faceetl import Pife, predict
    from faceetl.pipeline.extract import OutputError, extract_partition

    photo = str(IMAGES / "single" / "fr_obama_small.jpg")
    with pytest.raises(TypeError, match=r"backend 'dlib' has no parameter 'threshhold'.*upsample"):
        extract_faces([photo], backend="dlib", threshhold=0.5)
    with pytest.raises(ValueError, match=r"unknown backend 'haar'"):
        Pife("haar", 2)
    with pytest.raises(TypeError, match=r"has no parameter 'upsampel'"):
        Pife("dlib", 2, upsampel=0)
    faces = extract_faces([photo], backend="dlib")
    with pytest.raises(TypeError, match=r"model 'embedding' has no parameter 'netwrok'.*network"):
        predict(faces, model="embedding", netwrok="facenet")
    with pytest.raises(ValueError, match=r"unknown model 'age'"):
        predict(faces, model="age")

    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the output folder should go")
    with pytest.raises(OutputError, match=f"cannot write to the output folder {blocker}/crops"):
        extract_faces([photo], backend="dlib", crop_dir=blocker / "crops")
    with pytest.raises(OutputError, match=f"output folder {blocker}/out"):
        Pife("dlib", 1, progress=False).extract([photo], blocker / "out")
    # a crop that cannot be written on a worker stops the run (it is not an image's error row)
    part = pd.DataFrame({"path": pd.Series([photo], dtype="string[pyarrow]")})
    from faceetl.align import AlignSpec

    with pytest.raises(OutputError, match="cannot write the crop"):
        extract_partition(part, "dlib", {}, AlignSpec(), crop_dir=str(blocker / "crops"))


def test_partitions_sized_from_inputs_and_workers():
    from faceetl.pipeline.inputs import auto_partition_size

    assert auto_partition_size(7, slots=2) == 1  # every worker gets work on a small job
    assert auto_partition_size(100, slots=2) == 4  # about 16 partitions per worker: a short
    assert auto_partition_size(1000, slots=2) == 32  # last wave
    assert auto_partition_size(1_000_000, slots=8) == 64  # capped: large jobs, few tasks
    photos = [str(p) for p in sorted((IMAGES / "group").glob("*.jpg"))]
    assert read_images(photos).npartitions >= min(len(photos), 2)
    assert read_images(photos, partition_size=4).npartitions == 2


@pytest.mark.slow
def test_cluster_caps_workers_at_cores_and_closes_with_its_client():
    import faceetl
    from faceetl.pipeline.cluster import cpu_cores

    client = faceetl.cluster(backend="opencv", dashboard_address=None, quiet=True)
    lc = client.cluster
    assert len(lc.workers) == min(10, cpu_cores())  # the worker map says 10
    procs = [w.process.process for w in lc.workers.values()]
    client.close()
    assert lc.status.name == "closed"
    assert all(not p.is_alive() for p in procs if p is not None)
    with faceetl.cluster(concurrency=1, dashboard_address=None, quiet=True) as c2:
        assert len(c2.cluster.workers) == 1
        lc2 = c2.cluster
        # a CPU worker's core detects: one more thread decodes its next batch beside it
        threads = c2.run(lambda: __import__("os").environ.get("FACEETL_IO_THREADS"))
        assert set(threads.values()) == {"1"}
    assert lc2.status.name == "closed"


@pytest.mark.parametrize("workers", [1, 2])
def test_cluster_workers_cap_their_libraries_at_their_share_of_the_cores(workers):
    """OpenCV's pool (uncapped, it took every core in each worker), torch's and the BLAS
    variables are held to cores // workers, and each worker's log says so."""
    import faceetl
    from faceetl.pipeline.cluster import cpu_cores

    share = max(1, cpu_cores() // workers)

    def threads() -> tuple:
        import cv2
        import torch

        env = __import__("os").environ
        return (cv2.getNumThreads(), torch.get_num_threads(), env["OMP_NUM_THREADS"],
                env["MKL_NUM_THREADS"], env["OPENBLAS_NUM_THREADS"])  # fmt: skip

    with faceetl.cluster(concurrency=workers, dashboard_address=None, quiet=True) as c:
        got = c.run(threads)
        logs = c.get_worker_logs()
    assert len(got) == workers
    assert set(got.values()) == {(share, share, str(share), str(share), str(share))}
    said = f"faceetl: {share} of {cpu_cores()} cores for this worker ({workers} workers)"
    assert all(any(said in line for _, line in lines) for lines in logs.values()), logs


def test_cluster_workers_lose_the_trim_threshold_an_earlier_dask_cluster_left(monkeypatch):
    """distributed's Nanny writes Dask's pre-spawn environment (MALLOC_TRIM_THRESHOLD_, which
    made RetinaFace workers 1.5x slower) into this process's environment: a plain Dask cluster
    started first leaves it for faceetl's workers to inherit. A value of the user's own stays."""
    import dask
    from distributed import LocalCluster

    import faceetl

    dask_value = dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"]
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None):
        pass  # what a notebook's plain Client() does to this process
    assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(dask_value)
    with faceetl.cluster(concurrency=1, dashboard_address=None, quiet=True) as c:
        trim = c.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(trim.values()) == {None}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the user's own
    from faceetl.pipeline.cluster import _worker_environ

    _worker_environ()
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "131072"


def test_progress_counts_images_and_ends_with_a_summary(tmp_path, capsys, monkeypatch):
    import faceetl
    from faceetl.pipeline import progress

    Image.new("RGB", (320, 240), (128, 128, 128)).save(tmp_path / "blank.jpg")
    paths = [
        str(IMAGES / "single" / "fr_obama_small.jpg"),
        str(IMAGES / "group" / "fr_two_people.jpg"),
        str(tmp_path / "blank.jpg"),
        str(tmp_path / "missing.jpg"),
    ]
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)  # a line per finished partition
    faces = extract_faces(read_images(paths, partition_size=1), backend=BACKEND)
    df = faceetl.compute(faces)
    out, err = capsys.readouterr()
    assert len(df) == 5
    assert out.strip().splitlines()[-1] == (
        f"faceetl: 4 images: 2 ok, 1 no_face, 1 error; 3 faces; "
        f"{out.split('faces; ')[1].split(' img/s')[0]} img/s"
    )
    lines = err.strip().splitlines()  # not a terminal: plain lines, never a bare \r
    assert "\r" not in err and len(lines) == 4
    assert lines[-1].startswith("faceetl: 4/4 images, ") and "img/s, ETA 0:00" in lines[-1]
    faceetl.compute(faces, progress=False)
    assert capsys.readouterr() == ("", "")
    faceetl.compute(faceetl.predict(faces, model="embedding"))  # the total follows the frame
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("faceetl: 4/4 images, ")
    assert "4 images: 2 ok, 1 no_face, 1 error; 3 faces" in out


def test_a_job_is_checked_on_the_driver_and_tokenized_by_value():
    """One frozen Job per run: made and checked where the call is written, equal jobs give
    equal tokens (so equal graphs), and it carries names, never a model."""
    import pickle

    from dask.base import tokenize

    from faceetl.align import AlignSpec
    from faceetl.backends import base
    from faceetl.pipeline.job import Job

    base.clear_cache()
    a = Job.make("retinaface", {"score_threshold": 0.6}, spec=AlignSpec("arcface", 112))
    b = Job.make("retinaface", {"score_threshold": 0.6}, spec=AlignSpec("arcface", 112))
    assert a == b and tokenize(a) == tokenize(b)
    assert tokenize(a) != tokenize(a.replace(batch_size=8))
    assert tokenize(a) != tokenize(a.replace(backend_params={"score_threshold": 0.7}))
    with pytest.raises(TypeError, match="has no parameter 'scor'"):
        Job.make("retinaface", {"scor": 0.6})
    with pytest.raises(ValueError, match="unknown crop format"):
        Job.make("retinaface", crop_format="gif")
    assert len(pickle.dumps(a)) < 2_000 and base.REGISTRY.loaded() == []
    photo = str(IMAGES / "single" / "fr_obama_small.jpg")
    first = extract_faces([photo] * 3, backend="opencv", score_threshold=0.6)
    again = extract_faces([photo] * 3, backend="opencv", score_threshold=0.6)
    assert first._name == again._name
