"""Many paths compared without a Python string per path: which repeat, which are in a set.

A run's inputs and an output's done paths are Arrow strings (a million paths: ~70 MB). pandas'
``duplicated`` / ``isin`` and Python sets make a Python string of each (~150 bytes a path), and
Arrow's own hash kernels (``unique``, ``is_in``, ``dictionary_encode``) hold ~150-230 bytes a
path while they run. Here each path is hashed a chunk at a time (Python's string hash, 8 bytes a
path), the hashes are sorted, and only paths whose hashes meet are compared as strings: the
answers are exact, at ~25 bytes a path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

CHUNK = 1 << 14  # paths made Python strings at once


def chunked(values: Any) -> pa.ChunkedArray:
    """``values`` (an Arrow array or chunked array, or a pandas column of Arrow strings) as a
    chunked array of large strings, without a copy where it is one already."""
    if hasattr(values, "array") and hasattr(values.array, "__arrow_array__"):  # a pandas column
        values = values.array.__arrow_array__()
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    elif not isinstance(values, pa.ChunkedArray):  # a list, or a column of Python objects
        values = pa.chunked_array([pa.array(list(values), pa.large_string())])
    if values.type != pa.large_string():
        values = values.cast(pa.large_string())
    return values


def hashes(values: pa.ChunkedArray) -> np.ndarray:
    """Python's hash of each string (int64), ``CHUNK`` strings at a time."""
    out = np.empty(len(values), dtype=np.int64)
    for start in range(0, len(values), CHUNK):
        out[start : start + CHUNK] = [hash(p) for p in values.slice(start, CHUNK).to_pylist()]
    return out


def _strings(values: pa.ChunkedArray, positions: np.ndarray) -> list[str]:
    return values.take(pa.array(positions, pa.int64())).to_pylist() if len(positions) else []


def repeated(values: Any) -> np.ndarray:
    """``pd.Series(values).duplicated()``: True at every occurrence of a string after its first."""
    values = chunked(values)
    n = len(values)
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    h = hashes(values)
    ordered = np.sort(h)
    shared = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])  # hashes met more than once
    if not len(shared):
        return out
    members = np.flatnonzero(np.isin(h, shared))  # in input order: the first of each stays
    seen: set[str] = set()
    for start in range(0, len(members), CHUNK):
        block = members[start : start + CHUNK]
        for pos, p in zip(block, _strings(values, block), strict=True):
            if p in seen:
                out[pos] = True
            else:
                seen.add(p)
    return out


class PathSet:
    """A set of strings (Arrow) that tells which of many others it holds, exactly."""

    def __init__(self, values: Any) -> None:
        self.values = chunked(values)
        h = hashes(self.values)
        self.order = np.argsort(h, kind="stable")
        self.sorted = h[self.order]

    def __len__(self) -> int:
        return len(self.values)

    def contains(self, paths: Any) -> np.ndarray:
        """For each of ``paths``, whether it is in the set (``pd.Series(paths).isin(set)``)."""
        paths = chunked(paths)
        out = np.zeros(len(paths), dtype=bool)
        if not len(self) or not len(paths):
            return out
        h = hashes(paths)
        lo = np.searchsorted(self.sorted, h, "left")
        hi = np.searchsorted(self.sorted, h, "right")
        candidates = np.flatnonzero(hi > lo)
        del h
        for start in range(0, len(candidates), CHUNK):
            block = candidates[start : start + CHUNK]
            mine = _strings(paths, block)
            first = _strings(self.values, self.order[lo[block]])  # one per hash, as a rule
            for k, pos in enumerate(block):
                if mine[k] == first[k]:
                    out[pos] = True
                elif hi[pos] - lo[pos] > 1:  # strings with the same hash: each compared
                    others = _strings(self.values, self.order[lo[pos] + 1 : hi[pos]])
                    out[pos] = mine[k] in others
        return out
