"""The seed API end to end on a real LocalCluster: crops, manifest, re-runs, guard-less scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from faceetl import Pife, read_faces, register_predictor
from faceetl.backends import base
from faceetl.backends.base import default_workers, get_backend, list_backends, register_backend
from helpers import IMAGES

PHOTOS = ["single/fr_obama_small.jpg", "group/facenet_multiface.jpg", "single/deepface_img5.jpg"]


def test_worker_map_is_the_seeds():
    assert set(list_backends()) >= {"opencv", "dlib", "mediapipe", "mtcnn", "retinaface", "ssd"}
    assert {b: default_workers(b) for b in ("opencv", "dlib", "mediapipe", "mtcnn", "retinaface", "ssd")} == {
        "opencv": 10, "dlib": 8, "mediapipe": 2, "mtcnn": 4, "retinaface": 2, "ssd": 4}  # fmt: skip
    assert Pife("dlib").concurrency == 8 and Pife("dlib", 3).concurrency == 3


@pytest.fixture()
def photo_tree(tmp_path):
    root = tmp_path / "photos"
    for rel in PHOTOS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGES / rel, root / rel)
    (root / "single" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


@pytest.mark.slow
def test_pife_extract_writes_crops_manifest_and_skips_done_work(photo_tree, tmp_path):
    out = tmp_path / "out"
    paths = sorted(str(p) for p in photo_tree.rglob("*.jpg"))
    with Pife("dlib", 2, progress=False) as pife:
        first = pife.extract(paths[:3], out).compute()
        assert pife._client is not None and len(pife._client.scheduler_info()["workers"]) == 2
        manifest = read_faces(out / "faces.parquet")
        assert len(manifest) == len(first)
        ok = first[first["status"] == "ok"]
        for p in ok["crop_path"]:
            assert os.path.isfile(p) and os.path.commonpath([str(out), p]) == str(out)
        rels = {os.path.relpath(p, out).split(os.sep)[0] for p in ok["crop_path"]}
        assert rels <= {"single", "group"}  # the inputs' layout, mirrored
        n_files = sum(1 for _ in out.rglob("*.png"))
        # second run: the done paths are skipped, the rest added, nothing duplicated
        second = pife.extract(paths, out).compute()
    assert set(second["path"]) == set(paths)
    assert not second.duplicated(["path", "face"]).any()
    assert len(second) == len(first) + len(second[~second["path"].isin(first["path"])])
    assert (
        second.set_index("path").loc[str(photo_tree / "single" / "broken.jpg"), "status"]
    ).startswith("error")
    assert sum(1 for _ in out.rglob("*.png")) >= n_files
    assert (second["status"] == "ok").sum() == 8  # 6 + 1 + 1 faces
    third = Pife("dlib", 2, progress=False).extract(paths[:1], out).compute()  # no cluster needed
    assert third.equals(second)
    # a file that failed is tried again once it is fixed
    shutil.copy(IMAGES / "single" / "fr_obama_small.jpg", photo_tree / "single" / "broken.jpg")
    with Pife("dlib", 2, progress=False) as pife:
        fourth = pife.extract(paths, out).compute()
    fixed = fourth[fourth["path"] == str(photo_tree / "single" / "broken.jpg")]
    assert list(fixed["status"]) == ["ok"] and len(fourth) == len(second)
    assert not fourth.duplicated(["path", "face"]).any()


@pytest.mark.slow
def test_guardless_script_runs_once(photo_tree, tmp_path):
    """The seed's script, at module level with no __main__ guard, on the default cluster."""
    out = tmp_path / "out"
    script = tmp_path / "seed.py"
    script.write_text(
        textwrap.dedent(f"""
        from faceetl import Pife
        print("SCRIPT-START", flush=True)
        paths = {sorted(str(p) for p in photo_tree.rglob("*.jpg"))!r}
        faces = Pife("dlib", 2).extract(paths, {str(out)!r}).compute()
        print("ROWS", len(faces), (faces["status"] == "ok").sum(), flush=True)
    """)
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("SCRIPT-START") == 1, r.stdout
    assert "ROWS 9 8" in r.stdout  # 8 face rows + 1 row for the broken file
    assert "dashboard" in r.stdout
    assert (out / "faces.parquet").exists()
    assert "still alive" not in r.stderr  # the cluster Pife started is closed at exit


@pytest.mark.slow
def test_guardless_script_survives_killed_workers(tmp_path):
    """Both workers are killed mid-run: the nannies restart them without running the script's
    body again, and the run completes with a row for every path."""
    photos = sorted((IMAGES / "group").glob("*.jpg")) + sorted(
        (IMAGES / "dlib_pascal").glob("*.jpg")
    )
    paths = []
    for k in range(4):  # distinct paths, enough work for the kill to land mid-run
        d = tmp_path / "in" / f"copy{k}"
        d.mkdir(parents=True)
        for p in photos:
            shutil.copy(p, d / p.name)
            paths.append(str(d / p.name))
    marker = tmp_path / "script_runs.txt"
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, threading, time
        import faceetl
        from faceetl import Pife
        with open({str(marker)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        client = faceetl.cluster(concurrency=2, dashboard_address=None, quiet=True)
        pids = list(client.run(os.getpid).values())
        done = []
        def kill_when_started():
            while not os.path.exists({str(tmp_path / "out")!r}):
                time.sleep(0.05)
            time.sleep(2.0)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            done.append(True)
        threading.Thread(target=kill_when_started, daemon=True).start()
        df = Pife("dlib", 2, progress=False, upsample=0).extract({paths!r}, {str(tmp_path / "out")!r}).compute()
        print("KILLED", bool(done), "PATHS", df["path"].nunique(), flush=True)
        print("NEW-PIDS", len(set(client.run(os.getpid).values()) - set(pids)), flush=True)
        client.close()
    """)
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"KILLED True PATHS {len(paths)}" in r.stdout, (r.stdout, r.stderr[-3000:])
    assert "NEW-PIDS 2" in r.stdout
    assert len(marker.read_text().split()) == 1  # the script body ran once, in this process


def test_backend_and_predictor_defined_in_a_script(tmp_path):
    """Plug-ins defined in ``__main__`` (a script or a notebook) pickle by value, and Dask's
    deterministic graph tokenizer refused the graph when that pickle was not deterministic or not
    possible (a class using a module-level lock): extract_faces failed before any work."""
    photo = str(IMAGES / "single" / "fr_obama_small.jpg")
    script = tmp_path / "mine.py"
    script.write_text(
        textwrap.dedent(f"""
        import threading
        import numpy as np
        import faceetl
        from faceetl import Detections, register_backend, register_predictor

        LOCK = threading.Lock()  # a global the class uses: it cannot be pickled at all

        @register_backend("script_whole_image", workers=1)
        class WholeImage:
            def detect_batch(self, images):
                with LOCK:
                    return [Detections(np.array([[0, 0, im.shape[1], im.shape[0]]]), np.ones(1),
                                       None) for im in images]
            def provenance(self):
                return {{"what": "the whole image"}}

        @register_predictor("script_mean", gpu=False)
        class Mean:
            align = None
            columns = {{"script_mean_value": "float64"}}
            def predict_batch(self, crops):
                return {{"script_mean_value": [float(c.mean()) for c in crops]}}
            def provenance(self):
                return {{}}

        faces = faceetl.extract_faces([{photo!r}] * 3, backend="script_whole_image")
        faces = faceetl.predict(faces, model="script_mean")
        df = faces.compute(scheduler="threads")
        print("ROWS", len(df), (df["status"] == "ok").sum(), df["script_mean_value"].notna().sum())
    """)
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ROWS 3 3 3" in r.stdout


@pytest.mark.slow
def test_model_loads_once_per_worker(photo_tree, tmp_path):
    paths = sorted(str(p) for p in photo_tree.rglob("*.jpg")) * 1
    with Pife("dlib", 2, progress=False, partition_size=1) as pife:
        pife.extract(paths, tmp_path / "out")
        loaded = pife._client.run(lambda: base.REGISTRY.loaded())
        # glibc's adaptive mmap threshold stays on in workers (a fixed trim threshold made
        # RetinaFace workers 1.6x slower)
        trim = pife._client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert len(loaded) == 2
    assert all(len(v) <= 1 for v in loaded.values())  # one detector per worker at most
    assert sum(len(v) for v in loaded.values()) >= 1
    assert set(trim.values()) == {None}


@pytest.mark.slow
def test_quickstart_example_runs():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "examples", "quickstart.py")],
                       capture_output=True, text=True, timeout=600, cwd=root)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "faces.parquet" in r.stdout
    df = read_faces(os.path.join(root, "examples", "output", "faces.parquet"))
    assert (df["status"] == "ok").sum() >= 10 and (df["status"] == "ok").all()


@register_backend("dlib_no_upsample", workers=2)
class NoUpsampleDlib:
    """A backend registered outside faceetl (here: dlib without upsampling), as a user writes one."""

    def __init__(self) -> None:
        self._dlib = get_backend("dlib", upsample=0)

    def detect_batch(self, images):
        return self._dlib.detect_batch(images)

    def provenance(self) -> dict:
        return {"wraps": self._dlib.provenance()}


@pytest.mark.slow
def test_backend_registered_outside_faceetl_runs_on_workers(photo_tree, tmp_path):
    paths = sorted(str(p) for p in photo_tree.rglob("*.jpg"))
    with Pife("dlib_no_upsample", progress=False) as pife:
        assert pife.concurrency == 2
        df = pife.extract(paths, tmp_path / "out").compute()
        on_workers = pife._client.run(lambda: base.REGISTRY.loaded())
    assert set(df["backend"]) == {"dlib_no_upsample"}
    assert (df["status"] == "ok").sum() >= 6  # the large faces; upsample=0 misses small ones
    assert any(name == "dlib_no_upsample" for v in on_workers.values() for name, _ in v)


@register_predictor("brightness_test", gpu=False)
class CropBrightness:
    """A predictor registered outside faceetl: the mean of each crop."""

    align = None
    columns = {"brightness_test_mean": "float64"}

    def predict_batch(self, crops):
        return {"brightness_test_mean": [float(c.mean()) for c in crops]}

    def provenance(self) -> dict:
        return {"model": "mean of the crop"}


@pytest.mark.slow
def test_predictor_registered_outside_faceetl_runs_on_workers(photo_tree):
    import faceetl

    paths = sorted(str(p) for p in photo_tree.rglob("*.jpg"))
    client = faceetl.cluster(concurrency=1, dashboard_address=None, quiet=True)
    try:
        faces = faceetl.extract_faces(paths, backend="dlib")
        df = faceetl.compute(faceetl.predict(faces, model="brightness_test"), progress=False)
    finally:
        client.close()
        client.cluster.close()
    ok = df[df["status"] == "ok"]
    assert len(ok) == 8 and ok["brightness_test_mean"].notna().all()
    for crop, value in zip(ok["crop"], ok["brightness_test_mean"], strict=True):
        assert value == faceetl.decode_png(bytes(crop)).mean()
    assert df.loc[df["status"] != "ok", "brightness_test_mean"].isna().all()


def test_a_run_with_nothing_to_do_says_so(tmp_path, capsys):
    import dask

    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((IMAGES / "single").glob("*.jpg"))[:2]:
        shutil.copy(p, src / p.name)
    with dask.config.set(scheduler="threads", num_workers=2):
        Pife("opencv", 1, progress=False).extract(str(src), tmp_path / "out")
        capsys.readouterr()
        Pife("opencv", 1).extract(str(src), tmp_path / "out")
    said = capsys.readouterr().out
    assert f"faceetl: nothing to do: 2 images already done in {tmp_path / 'out'}" in said
