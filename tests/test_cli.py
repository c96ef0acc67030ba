"""The command line: ``faceetl extract`` and ``faceetl predict`` run as ``python -m faceetl`` in
subprocesses, on a real ``dask scheduler`` and ``dask worker`` started from the command line;
help with defaults, one-line errors, and the same summary line as the Python API."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from faceetl import cli
from helpers import IMAGES, ROOT, stop_processes

DASK = Path(sys.executable).with_name("dask")


def _env() -> dict[str, str]:
    """The tests' environment (FACEETL_HOME, offline) with this checkout's faceetl first."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(
    *args: object, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m faceetl ARGS`` in ``cwd``: its exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "faceetl", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=_env(),
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit status 1 and stderr one line, ``faceetl: error: ...``, naming ``words``."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faceetl: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


# -- without a cluster ---------------------------------------------------------------------------


def test_help_lists_the_commands_and_shows_defaults() -> None:
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    for command in ("extract", "predict"):
        assert re.search(rf"^\s+{command}\s", top.stdout, re.M), top.stdout
    ext = run_cli("extract", "--help")
    assert ext.returncode == 0, ext.stderr
    text = " ".join(ext.stdout.split())  # click wraps the lines
    for shown in ("--backend NAME", "[default: retinaface]", "[default: 112]", "[default: arcface]",
                  "[default: png]", "[default: 16]", "--scheduler ADDRESS", "--param KEY=VALUE",
                  "[default: (the backend's entry in the worker map)]"):  # fmt: skip
        assert shown in text, shown
    pred = run_cli("predict", "--help")
    assert pred.returncode == 0, pred.stderr
    text = " ".join(pred.stdout.split())
    for shown in ("--model NAME", "[required]", "[default: 32]", "embedding"):
        assert shown in text, shown
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == "faceetl 0.1.0"


def test_the_command_line_loads_nothing_heavy() -> None:
    """``--help`` answers without torch, OpenCV or Dask's DataFrame and cluster."""
    code = textwrap.dedent(
        """
        import json, sys
        from click.testing import CliRunner
        from faceetl.cli import main
        for args in (["--help"], ["extract", "--help"], ["predict", "--help"]):
            assert CliRunner().invoke(main, args).exit_code == 0
        heavy = ["torch", "cv2", "dask.dataframe", "distributed", "tqdm", "dlib"]
        print(json.dumps([m for m in heavy if m in sys.modules]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=_env(), timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_defaults_are_the_python_apis() -> None:
    from faceetl import Pife
    from faceetl.pipeline.predict import predict

    options = {p.name: p.default for p in cli.extract.params}
    api = inspect.signature(Pife).parameters
    for name in ("backend", "size", "template", "padding", "crop_format", "partition_size",
                 "batch_size"):  # fmt: skip
        assert options[name] == api[name].default, name
    assert options["workers"] is None and api["concurrency"].default is None
    options = {p.name: p.default for p in cli.predict.params}
    assert options["batch_size"] == inspect.signature(predict).parameters["batch_size"].default


def test_param_values_are_json_where_they_parse() -> None:
    got = cli.parse_pairs(["score_threshold=0.6", "max_side=null", "equalize=false",
                           "cascade=alt2", "name=a=b", "sizes=[1, 2]", "x=0.6", "x=7"])  # fmt: skip
    assert got == {"score_threshold": 0.6, "max_side": None, "equalize": False,
                   "cascade": "alt2", "name": "a=b", "sizes": [1, 2], "x": 7}  # fmt: skip
    import click

    with pytest.raises(click.BadParameter):
        cli.parse_pairs(["score_threshold"])


def test_listings_and_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((IMAGES / "single").glob("*.jpg"))[:2]:
        shutil.copy2(p, photos / p.name)
    names = sorted(p.name for p in photos.iterdir())
    assert cli.sources(["photos"]) == str(photos)  # one folder: as Pife takes it, absolute
    (tmp_path / "list.txt").write_text(f"# inputs\nphotos/{names[0]}\n\n{photos / names[1]}\n")
    txt = cli.sources(["list.txt"])
    assert list(txt["path"]) == [str(photos / n) for n in names]
    (tmp_path / "labels.csv").write_text(f"path,label\nphotos/{names[0]},7\n")
    both = cli.sources(["labels.csv", "photos"])  # several sources joined, labels carried
    assert list(both["path"]) == [str(photos / names[0])] + [str(photos / n) for n in names]
    assert list(both["label"].iloc[:1]) == [7]
    with pytest.raises(FileNotFoundError, match="no such file or folder: photoz"):
        cli.sources(["photoz"])
    (tmp_path / "bad.csv").write_text("file\nx.jpg\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        cli.sources(["bad.csv"])


def test_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(IMAGES / "single" / "fr_obama_small.jpg", photos)
    proc = run_cli("extract", photos, tmp_path / "out", "--backend", "nope", cwd=tmp_path)
    assert_one_line_error(proc, "unknown backend 'nope'", "opencv")
    proc = run_cli("extract", photos, tmp_path / "out", "--backend", "opencv",
                   "--param", "scor_threshold=0.5", cwd=tmp_path)  # fmt: skip
    assert_one_line_error(proc, "'scor_threshold'", "score_threshold")
    proc = run_cli("extract", photos, "out", "--backend", "opencv", "--size", "100", cwd=tmp_path)
    assert_one_line_error(proc, "multiple of 112")
    proc = run_cli("extract", "photoz", "out", "--backend", "opencv", cwd=tmp_path)
    assert_one_line_error(proc, "no such file or folder: photoz")
    proc = run_cli("predict", "faces.parquet", "emb", "--model", "embeding", cwd=tmp_path)
    assert_one_line_error(proc, "unknown model 'embeding'")
    proc = run_cli("predict", "faces.parquet", "emb", "--model", "embedding", cwd=tmp_path)
    assert_one_line_error(proc, "no faces dataset at")
    assert not (tmp_path / "out").exists()  # every one stopped before writing anything


# -- on a scheduler and a worker started from the command line -----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory, faceetl_home: Path):
    """``dask scheduler`` and one ``dask worker --nthreads 1``, each in its own folder (relative
    paths would not reach it); yields the scheduler's address."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    base = tmp_path_factory.mktemp("cluster")
    procs = [subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", ":0", "--no-show"],
        cwd=base, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]  # fmt: skip
    (base / "worker").mkdir()
    procs.append(subprocess.Popen(
        [str(DASK), "worker", address, "--nthreads", "1", "--no-nanny",
         "--local-directory", str(base / "worker" / "dask"), "--no-dashboard"],
        cwd=base / "worker", env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))  # fmt: skip
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        stop_processes(procs)


@pytest.fixture(scope="module")
def extracted(scheduler: str, tmp_path_factory: pytest.TempPathFactory):
    """Three photos extracted by ``faceetl extract`` on the scheduler, with relative paths:
    (the working folder, the run's process)."""
    work = tmp_path_factory.mktemp("cli")
    (work / "photos").mkdir()
    for p in sorted((IMAGES / "single").glob("*.jpg"))[:3]:
        shutil.copy2(p, work / "photos" / p.name)
    proc = run_cli("extract", "photos", "out", "--backend", "opencv", "--scheduler", scheduler,
                   "--partition-size", "2", cwd=work)  # fmt: skip
    return work, proc


@pytest.mark.slow
def test_extract_on_a_scheduler(extracted) -> None:
    from faceetl import read_faces

    work, proc = extracted
    assert proc.returncode == 0, proc.stderr
    out = work / "out"
    line = re.compile(
        r"^faceetl: 3 images: (\d+) ok, \d+ no_face, 0 error; (\d+) faces; [\d.]+ img/s -> "
        + re.escape(str(out)) + r" \(dataset " + re.escape(str(out / "faces.parquet")) + r"\)$"
    )  # fmt: skip
    found = [m for m in map(line.match, proc.stdout.splitlines()) if m]
    assert len(found) == 1, proc.stdout
    df = read_faces(out / "faces.parquet")
    assert set(df["path"]) == {str(p) for p in (work / "photos").iterdir()}  # absolute paths
    ok = df[df["status"] == "ok"]
    assert len(ok) == int(found[0].group(2)) >= int(found[0].group(1)) >= 2
    assert all(Path(p).is_file() and Path(p).is_relative_to(out) for p in ok["crop_path"])


@pytest.mark.slow
def test_extract_again_has_nothing_to_do(extracted, scheduler: str) -> None:
    work, first = extracted
    assert first.returncode == 0, first.stderr
    proc = run_cli("extract", "photos", "out", "--backend", "opencv", "--scheduler", scheduler,
                   cwd=work)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    done = work / "out" / "faces.parquet"
    assert f"faceetl: nothing to do: 3 images already done in {done}" in proc.stdout
    proc = run_cli("extract", "photos", "out", "--backend", "opencv", "--size", "128",
                   "--scheduler", scheduler, cwd=work)  # fmt: skip
    assert_one_line_error(proc, "other settings")  # other settings than the output's: SettingsError


@pytest.mark.slow
def test_predict_embeddings_on_a_scheduler(extracted, scheduler: str) -> None:
    from faceetl import read_faces

    work, first = extracted
    assert first.returncode == 0, first.stderr
    proc = run_cli("predict", "out/faces.parquet", "emb", "--model", "embedding",
                   "--param", "network=dlib", "--scheduler", scheduler, cwd=work)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = re.compile(r"^faceetl: 3 images: \d+ ok, \d+ no_face, 0 error; \d+ faces; [\d.]+ "
                      r"img/s -> " + re.escape(str(work / "emb")) + "$")  # fmt: skip
    assert sum(bool(line.match(s)) for s in proc.stdout.splitlines()) == 1, proc.stdout
    faces = read_faces(work / "out" / "faces.parquet")
    df = read_faces(work / "emb")
    assert len(df) == len(faces) and set(df["path"]) == set(faces["path"])
    assert df["embedding_vector"].dtype == faces["landmarks"].dtype  # float32 lists, as written
    ok = df["status"] == "ok"
    assert all(len(v) == 128 for v in df.loc[ok, "embedding_vector"])
    assert set(df.loc[ok, "embedding_network"]) == {"dlib"}
    assert df.loc[~ok, "embedding_vector"].isna().all()
    lazy = read_faces(work / "emb", lazy=True)
    assert len(lazy.compute()) == len(df)
    # written once: the same command again refuses to write over it (FACES as the extract's OUT)
    proc = run_cli("predict", "out", "emb", "--model", "embedding", "--scheduler", scheduler,
                   cwd=work)  # fmt: skip
    assert_one_line_error(proc, "holds", "parquet files already")
