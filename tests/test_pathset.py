"""The driver's many-path steps, made without a Python string per path, answer as the plain
Python and pandas forms they replace: repeats, membership, the crops' root, the output-folder
test and the partitions' bounds."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from faceetl import storage
from faceetl.pife import _under
from faceetl.pipeline import pathset
from faceetl.pipeline.inputs import common_root, partition_bounds, path_series
from faceetl.pipeline.pathset import PathSet, repeated


def _samples(seed: int, n: int = 300) -> list[tuple[list[str], list[str]]]:
    r = random.Random(seed)

    def one() -> list[str]:
        return [str(r.randint(0, 30)) * r.randint(1, 3) for _ in range(r.randint(0, 60))]

    return [(one(), one()) for _ in range(n)]


@pytest.mark.parametrize("collide", [False, True])
def test_repeats_and_membership_are_exact(monkeypatch: pytest.MonkeyPatch, collide: bool) -> None:
    if collide:  # few hash values: strings that share one are told apart by comparing them
        monkeypatch.setattr(pathset, "CHUNK", 3)
        monkeypatch.setattr(
            pathset, "hashes",
            lambda v: np.array([len(p) % 3 for p in v.to_pylist()], dtype=np.int64),
        )  # fmt: skip
    for a, b in _samples(1):
        col = pd.Series(a, dtype=pd.StringDtype("pyarrow"))
        assert (repeated(col) == col.duplicated().to_numpy()).all(), a
        want = pd.Series(b, dtype=object).isin(set(a)).to_numpy()
        got = PathSet(pa.array(a, pa.string())).contains(pa.array(b, pa.large_string()))
        assert (got == want).all(), (a, b)


def test_common_root_of_a_column_is_that_of_its_paths() -> None:
    r = random.Random(2)
    parts = ["a", "b", ".", "..", "", "x y", "é", "_", "c.jpg", "\\x5c", "d..", ".e"]
    prefixes = ["", "/", "/tmp/", "./", "../", "s3://bkt/", "s3://", "memory://", "file:///t/"]
    for _ in range(2000):
        base = r.choice(prefixes)
        paths = [
            (r.choice(prefixes) if r.random() < 0.3 else base)
            + "/".join(r.choice(parts) for _ in range(r.randint(0, 4)))
            for _ in range(r.randint(1, 4))
        ]
        try:
            want = common_root(list(paths))
        except ValueError as e:
            want = type(e)
        try:
            got = common_root(pd.Series(path_series(paths).array))
        except ValueError as e:
            got = type(e)
        assert got == want, paths


def test_the_output_folder_test_is_storage_under() -> None:
    r = random.Random(3)
    parts = ["out", "o", ".", "..", "", "a", "out2", "x.jpg"]
    prefixes = ["/", "//", "/tmp/w/", "rel/", "", "s3://b/", "file:///tmp/w/", "/tmp/w/out/"]
    paths = [
        r.choice(prefixes) + "/".join(r.choice(parts) for _ in range(r.randint(0, 4)))
        for _ in range(3000)
    ]
    column = pd.Series(path_series(paths).array)
    for folder in ["/tmp/w/out", "/tmp/w/out/", "/", "out", ".", "s3://b/out", "/tmp/w/./out"]:
        want = np.array([storage.under(p, folder) for p in paths], dtype=bool)
        assert (_under(column, folder, chunk=7) == want).all(), folder


def test_partition_bounds_are_dasks() -> None:
    import dask.dataframe as dd

    for n, size in [(1, 64), (100, 64), (1000, 64), (1000, 7), (129, 64), (5, 2)]:
        df = pd.DataFrame({"path": [str(i) for i in range(n)]})
        nparts = max(1, -(-n // size))
        lengths = dd.from_pandas(df, npartitions=min(nparts, n), sort=False).map_partitions(len)
        assert np.diff(partition_bounds(n, size)).tolist() == lengths.compute().tolist()
