"""The same rows under every Dask scheduler: sync, threads, processes, a Client with 2 threads.

Dask's default scheduler is threads: partitions run side by side in one process. dlib's and
OpenCV's detectors must not be shared by running threads (shared, dlib found 2,420-3,097 faces on
14 group photos instead of 106, and opencv/ssd crashed the process), so each thread gets its own
instance unless a backend declares itself thread-safe.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import faceetl
from faceetl.backends.base import REGISTRY as BACKENDS
from faceetl.predictors.base import REGISTRY as PREDICTORS
from faceetl.schema import boxes_array
from helpers import IMAGES

PHOTOS = [
    *(
        IMAGES / "group" / n
        for n in ("fr_two_people.jpg", "deepface_couple.jpg", "insightface_t1.jpg")
    ),
    *sorted((IMAGES / "dlib_pascal").glob("*.jpg")),
    *sorted((IMAGES / "single").glob("*.jpg"))[:3],
]
# backend parameters that keep this test quick without changing what it checks
FAST = {"dlib": {"upsample": 0}, "mediapipe": {"model": "full"}}


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    df = df.sort_values(["path", "face"]).reset_index(drop=True)
    return df[["path", "face", "status", "x1", "y1", "x2", "y2", "score"]]


def _same_bits(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """The same rows bit for bit: boxes, scores, landmarks, transforms and crop bytes."""
    got, want = (d.sort_values(["path", "face"]).reset_index(drop=True) for d in (got, want))
    pd.testing.assert_frame_equal(_rows(got), _rows(want), check_exact=True)
    for col in ("landmarks", "affine", "crop"):
        for a, b in zip(got[col], want[col], strict=True):
            missing = [x is None or (np.ndim(x) == 0 and pd.isna(x)) for x in (a, b)]
            if any(missing):
                assert missing[0] and missing[1], col
            elif isinstance(a, bytes):
                assert a == b, col
            else:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=col)


def _extract(backend: str, scheduler: str, paths: list[str]) -> pd.DataFrame:
    ddf = faceetl.extract_faces(
        faceetl.read_images(paths, partition_size=1), backend=backend, **FAST.get(backend, {})
    )
    return ddf.compute(scheduler=scheduler, num_workers=4)


@pytest.mark.parametrize("backend", BACKENDS.builtin)
def test_threads_give_the_rows_sync_gives(backend: str) -> None:
    paths = [str(p) for p in PHOTOS]
    sync = _extract(backend, "sync", paths)
    threads = _extract(backend, "threads", paths)
    assert (sync["status"] == "ok").sum() >= len(PHOTOS)  # faces were found: a real comparison
    _same_bits(threads, sync)


@pytest.mark.slow
def test_distributed_workers_give_the_in_process_rows_bit_for_bit() -> None:
    """Worker processes (one torch thread each) and the sync and threaded schedulers in this
    process (torch's own thread count left as it is) give the same bits."""
    from distributed import Client, LocalCluster

    import faceetl.pipeline.cluster as fc

    torch.set_num_threads(2)  # this process as a user's is: torch on every core
    paths = [str(p) for p in PHOTOS]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc,
        Client(lc) as client,
    ):
        for backend in ("retinaface", "mtcnn"):
            ddf = faceetl.extract_faces(faceetl.read_images(paths, partition_size=2),
                                        backend=backend)  # fmt: skip
            workers = client.compute(ddf).result()
            for scheduler in ("sync", "threads"):
                _same_bits(ddf.compute(scheduler=scheduler, num_workers=2), workers)
    assert torch.get_num_threads() == 2 and fc._model_tasks == 0  # the user's setting is back


@pytest.fixture(scope="module")
def faces() -> pd.DataFrame:
    """Faces of the shared photos (sync), the input of the predictors."""
    paths = [str(p) for p in PHOTOS[:3]]
    return faceetl.extract_faces(faceetl.read_images(paths, partition_size=1), backend="retinaface")


@pytest.fixture(scope="module")
def predictor_params(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Parameters per predictor: random weights saved in the released layout where the real
    ones are not in ../shared (the loaders are strict, so the layout is the released one)."""
    from faceetl.nets.bisenet import BiSeNet
    from faceetl.nets.fairface import build_resnet34

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(build_resnet34().state_dict(), folder / "fairface.pt")
    torch.save(BiSeNet().state_dict(), folder / "bisenet.pth")
    return {
        "fairface": {"weights": str(folder / "fairface.pt"), "device": "cpu"},
        "parsing": {"weights": str(folder / "bisenet.pth"), "device": "cpu"},
        "embedding": {},
        "quality": {},
    }


@pytest.mark.parametrize("model", PREDICTORS.builtin)
def test_predictors_under_threads_equal_sync(model: str, faces, predictor_params) -> None:
    params = predictor_params[model]
    out = {
        s: faceetl.predict(faces, model=model, **params).compute(scheduler=s, num_workers=4)
        for s in ("sync", "threads")
    }
    sync, threads = (df.sort_values(["path", "face"]).reset_index(drop=True) for df in out.values())
    assert (sync["status"] == "ok").sum() >= 8
    from faceetl.predictors.base import output_columns

    new = [c for c in output_columns(model, **params) if c != f"{model}_provenance"]
    assert new
    for c in new:
        a, b = sync[c].tolist(), threads[c].tolist()
        for x, y in zip(a, b, strict=True):
            if isinstance(x, (bytes, str)) or x is None or x is pd.NA:
                assert x == y or (pd.isna(x) and pd.isna(y)), c
            else:
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), atol=1e-4)


@pytest.mark.slow
def test_processes_and_a_client_with_two_threads_give_the_sync_rows() -> None:
    from distributed import Client, LocalCluster

    paths = [str(p) for p in PHOTOS]
    sync = _rows(_extract("dlib", "sync", paths))
    processes = _rows(_extract("dlib", "processes", paths))
    pd.testing.assert_frame_equal(processes, sync, check_exact=True)
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as lc,
        Client(lc) as client,
    ):
        ddf = faceetl.extract_faces(faceetl.read_images(paths, partition_size=1), backend="opencv")
        ref = _rows(ddf.compute(scheduler="sync"))
        got = _rows(client.compute(ddf).result())
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    assert len(boxes_array(got)) == len(got)


def test_instances_per_thread_unless_thread_safe() -> None:
    """dlib's detector is built once per thread; RetinaFace (thread-safe) once per process."""
    import threading

    from faceetl.backends.base import get_backend

    got: dict[str, list] = {"dlib": [], "retinaface": []}

    def load() -> None:
        for name in got:
            got[name].append(get_backend(name))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(d) for d in got["dlib"]}) == 3
    assert len({id(d) for d in got["retinaface"]}) == 1
    assert get_backend("dlib") is get_backend("dlib")  # and once per thread, not per call


def test_a_finished_threads_detector_is_released() -> None:
    import gc
    import threading
    import weakref

    from faceetl.backends.base import get_backend

    refs = []
    before = len(BACKENDS.loaded())
    t = threading.Thread(target=lambda: refs.append(weakref.ref(get_backend("dlib", upsample=0))))
    t.start()
    t.join()
    del t
    gc.collect()
    assert refs and refs[0]() is None  # nothing keeps a dead thread's model alive
    assert len(BACKENDS.loaded()) <= before
