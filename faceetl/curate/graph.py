"""Graph clustering of faces (Chinese Whispers) and clustering quality measures.

:func:`chinese_whispers` is Biemann's algorithm as dlib runs it for faces
(``dlib.chinese_whispers_clustering``: an edge between two faces closer than a threshold, every
edge of weight 1, each node in random order takes the label most of its neighbours carry, 100
passes at most). Written here with numpy, vectorised over blocks of nodes, because dlib's takes
a Python list of edge tuples (about 1.5 GB for the 10^7 edges of a million faces) and is an
optional extra; it is tested against dlib's on real descriptors. Each pass updates the nodes in
eight random blocks, one after the other, so that labels spread within a pass as in dlib's
one-node-at-a-time order, and a fully synchronous update cannot oscillate.
"""

from __future__ import annotations

import numpy as np

#: each pass updates the nodes in this many random blocks
BLOCKS = 8


def _csr(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of each undirected edge, as (row pointers, neighbours)."""
    a = np.concatenate([src, dst]).astype(np.int64)
    b = np.concatenate([dst, src]).astype(np.int64)
    keep = a != b
    a, b = a[keep], b[keep]
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(a, minlength=n), out=indptr[1:])
    return indptr, b


def chinese_whispers(
    src: np.ndarray, dst: np.ndarray, n: int, iterations: int = 100, seed: int = 0
) -> np.ndarray:
    """Cluster labels (0.., the largest cluster first) of ``n`` nodes joined by the undirected
    edges ``src[i] - dst[i]``; nodes without edges are clusters of their own."""
    indptr, nbr = _csr(np.asarray(src), np.asarray(dst), n)
    labels = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    degree = np.diff(indptr)
    active = np.flatnonzero(degree)
    for _ in range(int(iterations)):
        changed = 0
        for block in np.array_split(rng.permutation(active), BLOCKS):
            if len(block):
                changed += _update(block, indptr, nbr, labels, rng)
        if not changed:
            break
    return _dense(labels)


def _update(
    nodes: np.ndarray,
    indptr: np.ndarray,
    nbr: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
) -> int:
    """Give each of ``nodes`` the label most frequent among its neighbours (ties at random);
    the number of labels that changed."""
    starts, counts = indptr[nodes], indptr[nodes + 1] - indptr[nodes]
    owner = np.repeat(np.arange(len(nodes)), counts)
    # the positions of every node's neighbours in nbr, without a Python loop
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    lab = labels[nbr[np.repeat(starts, counts) + offsets]]
    key, votes = np.unique(owner * np.int64(len(labels)) + lab, return_counts=True)
    who, what = key // len(labels), key % len(labels)
    # the most votes wins; a random key breaks ties (dlib: whichever comes first)
    order = np.lexsort((rng.random(len(key)), -votes, who))
    first = np.ones(len(order), bool)
    first[1:] = who[order][1:] != who[order][:-1]
    win = order[first]
    new = what[win]
    target = nodes[who[win]]
    changed = int((labels[target] != new).sum())
    labels[target] = new
    return changed


def _dense(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0.. by cluster size (largest first; ties by smallest member)."""
    uniq, first, inverse, size = np.unique(
        labels, return_index=True, return_inverse=True, return_counts=True
    )
    rank = np.lexsort((first, -size))
    out = np.empty(len(uniq), np.int64)
    out[rank] = np.arange(len(uniq))
    return out[inverse]


def pair_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Pairwise precision, recall and F1 (over all pairs of items put together) and BCubed
    precision, recall and F1 (Amigó et al. 2009) of a clustering ``pred`` against ``truth``."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    cell, n_cell = np.unique(p.astype(np.int64) * (t.max() + 1) + t, return_counts=True)
    n_pred = np.bincount(p)
    n_true = np.bincount(t)

    def pairs(c: np.ndarray) -> float:
        return float((c.astype(np.float64) * (c - 1) / 2).sum())

    tp = pairs(n_cell)
    precision = tp / pairs(n_pred) if pairs(n_pred) else 1.0
    recall = tp / pairs(n_true) if pairs(n_true) else 1.0
    # BCubed: each item's share of its cluster that is its class, and of its class that is
    # its cluster; summed per cell (all items of a cell share both numbers)
    cell_p, cell_t = cell // (t.max() + 1), cell % (t.max() + 1)
    b_precision = float((n_cell**2 / n_pred[cell_p]).sum() / len(t))
    b_recall = float((n_cell**2 / n_true[cell_t]).sum() / len(t))
    return {
        "pairwise_precision": precision,
        "pairwise_recall": recall,
        "pairwise_f": _f(precision, recall),
        "bcubed_precision": b_precision,
        "bcubed_recall": b_recall,
        "bcubed_f": _f(b_precision, b_recall),
    }


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0
