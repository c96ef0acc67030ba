"""Where a run's time goes, in the Dask dashboard: each stage of the partitions in distributed's
fine performance metrics, and one span a run (read back from a real scheduler after a run)."""

from __future__ import annotations

import time

import pytest

import faceetl
from helpers import IMAGES

PHOTOS = [str(p) for p in sorted((IMAGES / "single").glob("*.jpg"))[:3]]
STAGES = {"read", "decode", "detect", "align", "encode", "rows"}


@pytest.mark.slow
def test_stage_metrics_and_the_run_span_reach_the_scheduler() -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                     dashboard_address=None) as lc,
        Client(lc) as client,
    ):  # fmt: skip
        faces = faceetl.extract_faces(faceetl.read_images(PHOTOS, partition_size=1),
                                      backend="opencv")  # fmt: skip
        df = faceetl.compute(faces, progress=False)
        assert (df["status"] == "ok").sum() >= 3
        scheduler = lc.scheduler
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while time.monotonic() < deadline:  # metrics come with the workers' heartbeats
            seen = {
                k[2] for k in scheduler.cumulative_worker_metrics
                if isinstance(k, tuple) and len(k) == 4 and k[0] == "execute"
                and k[1] == "extract_partition" and k[3] == "seconds"
            }  # fmt: skip
            if STAGES <= seen:
                break
            time.sleep(0.2)
        assert STAGES <= seen, sorted(seen)
        spans = scheduler.extensions["spans"].spans.values()
        names = sorted(s.name for s in spans if s.name[:1] == ("faceetl",))
        assert names == [("faceetl",), ("faceetl", "extract_partition (3 images)")]
        assert client.run(lambda: 1)  # the cluster is still well
