"""Train / validation splits of a face table, stratified on label columns, optionally by group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .table import as_pandas


def stratified_split(
    df: pd.DataFrame | Any,
    by: str | Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    group: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into ``(train_df, val_df)`` stratified on the column(s) ``by``.

    About ``val_fraction`` of each class goes to validation; every class of every ``by`` column
    with at least 2 rows is on both sides (with ``group``, where its groups allow it). With
    ``group`` (e.g. ``"path"``) all rows sharing a value of that column land on the same side,
    so faces of one photo never leak across. Deterministic for a ``seed``; row order and index
    are kept.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    df = as_pandas(df)
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise ValueError("stratify 'by' at least one column")
    missing = [c for c in [*by, *([group] if group else [])] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the frame")
    if len(df) == 0:
        return df.iloc[:0], df.iloc[:0]
    rng = np.random.default_rng(seed)
    codes = np.stack(
        [pd.factorize(df[c], use_na_sentinel=False, sort=False)[0] for c in by], axis=1
    ).astype(np.int64)
    if group is None:
        val = _split_rows(codes, val_fraction, rng)
    else:
        gcodes = pd.factorize(df[group], use_na_sentinel=False)[0]
        val = _split_groups(codes, gcodes, val_fraction, rng)
    return df.iloc[np.flatnonzero(~val)], df.iloc[np.flatnonzero(val)]


def _split_rows(codes: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Row-level split: each stratum (combination of classes) shuffled and cut at ``frac``."""
    n = len(codes)
    val = np.zeros(n, bool)
    strata = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)
    pool = []  # rows of single-row strata (combinations seen once), split together below
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        if len(idx) < 2:
            pool.extend(idx.tolist())
            continue
        rng.shuffle(idx)
        nv = min(len(idx) - 1, max(1, int(round(frac * len(idx)))))
        val[idx[:nv]] = True
    if pool:
        # a row holding a class seen once in some column stays in train (it cannot be learnt
        # from validation); the others are cut at the same fraction
        singles = np.zeros(n, bool)
        for j in range(codes.shape[1]):
            _, inv, cnt = np.unique(codes[:, j], return_inverse=True, return_counts=True)
            singles |= cnt[inv.reshape(-1)] == 1
        free = np.array([i for i in pool if not singles[i]], np.int64)
        rng.shuffle(free)
        val[free[: int(round(frac * len(free)))]] = True
    _repair_rows(codes, val, rng)
    return val


def _repair_rows(codes: np.ndarray, val: np.ndarray, rng: np.random.Generator) -> None:
    """Move single rows so every class with >= 2 rows of every column is on both sides."""
    for _ in range(3):
        changed = False
        for j in range(codes.shape[1]):
            col = codes[:, j]
            for c in np.unique(col):
                idx = np.flatnonzero(col == c)
                if len(idx) < 2:
                    continue
                nv = int(val[idx].sum())
                if nv == 0 or nv == len(idx):
                    side = val[idx[0]]  # the side that holds them all
                    # move the row whose own classes are most plentiful on that side
                    best, best_score = None, -1
                    for i in rng.permutation(idx)[:50]:
                        score = min(
                            int(((codes[:, m] == codes[i, m]) & (val == side)).sum())
                            for m in range(codes.shape[1])
                        )
                        if score > best_score:
                            best, best_score = i, score
                    val[best] = not side
                    changed = True
        if not changed:
            return


def _split_groups(
    codes: np.ndarray, gcodes: np.ndarray, frac: float, rng: np.random.Generator
) -> np.ndarray:
    """Group-level split: whole groups assigned greedily to match each class's target share."""
    ncols = codes.shape[1]
    ngroups = int(gcodes.max()) + 1 if len(gcodes) else 0
    # per column, a (groups, classes) count matrix
    counts = []
    for j in range(ncols):
        m = np.zeros((ngroups, int(codes[:, j].max()) + 1), np.int64)
        np.add.at(m, (gcodes, codes[:, j]), 1)
        counts.append(m)
    totals = [m.sum(0) for m in counts]
    targets = [frac * t for t in totals]
    total_rows = len(codes)
    sizes = np.bincount(gcodes, minlength=ngroups)

    def cost(cs: list[np.ndarray], rows: float) -> float:
        c = sum(
            float((((x - t) / np.maximum(tot, 1)) ** 2).sum())
            for x, t, tot in zip(cs, targets, totals, strict=True)
        )
        return c + ((rows - frac * total_rows) / max(total_rows, 1)) ** 2

    def greedy(order: np.ndarray) -> tuple[float, np.ndarray]:
        chosen = np.zeros(ngroups, bool)
        cur = [np.zeros_like(t, dtype=np.float64) for t in totals]
        rows = 0.0
        for g in order:
            with_g = [x + m[g] for x, m in zip(cur, counts, strict=True)]
            if cost(with_g, rows + sizes[g]) < cost(cur, rows):
                chosen[g] = True
                cur = with_g
                rows += sizes[g]
        return cost(cur, rows), chosen

    # greedy placement, big groups first (random order among equals), then a few random orders
    # (few groups: one big group first can overshoot the fraction); the best assignment wins
    first = rng.permutation(ngroups)
    orders = [first[np.argsort(-sizes[first], kind="stable")]]
    restarts = 32 if ngroups <= 500 else (4 if ngroups <= 20_000 else 0)
    orders += [rng.permutation(ngroups) for _ in range(restarts)]
    best_cost, in_val = math.inf, np.zeros(ngroups, bool)
    for order in orders:
        c, chosen = greedy(order)
        if c < best_cost - 1e-12:
            best_cost, in_val = c, chosen
    # repair: each class with >= 2 rows and >= 2 groups on both sides, if some group can move
    for _ in range(3):
        changed = False
        for m in counts:
            for c in range(m.shape[1]):
                holders = np.flatnonzero(m[:, c] > 0)
                if m[:, c].sum() < 2 or len(holders) < 2:
                    continue
                nv = int(in_val[holders].sum())
                if 0 < nv < len(holders):
                    continue
                side = bool(in_val[holders[0]])
                # move the holder group whose departure leaves its other classes still covered
                best, best_score = None, None
                for g in rng.permutation(holders)[:50]:
                    ok = True
                    for mm in counts:
                        same_side = in_val == side
                        left = mm[same_side].sum(0) - mm[g]
                        lost = (mm[g] > 0) & (left == 0) & (mm.sum(0) >= 2)
                        if lost.any():
                            ok = False
                            break
                    score = (0 if ok else 1, sizes[g])
                    if best_score is None or score < best_score:
                        best, best_score = g, score
                in_val[best] = not side
                changed = True
        if not changed:
            break
    return in_val[gcodes]


__all__ = ["stratified_split"]
