"""Who is who: identity clusters over a face frame, and nearest-face search, on the workers.

:func:`identities` adds an ``identity`` column: a kNN graph over the unit embeddings (the
:mod:`faceetl.curate.index` IVF index, built and queried partition by partition), edges between
faces closer than ``threshold``, then Chinese Whispers (:mod:`faceetl.curate.graph`) in one task
on a worker. :func:`search` answers, for each query face, its nearest gallery faces, from the same
index: built from a gallery frame, or a saved one (:meth:`FaceIndex.save`) at any fsspec URL.

A Dask frame gives a Dask frame: the face frame's partitions are computed once for the whole
graph (sample, shards, queries, labels), so ``identities(extract_faces(...))`` detects each image
once. The driver holds the k-means centroids only, never the vectors or the edges.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd
from dask import delayed
from dask.base import tokenize

from . import index as ix
from .graph import chinese_whispers

#: same-person thresholds on the Euclidean distance of unit embeddings. dlib: its 0.6 on raw
#: descriptors is 0.41 at their mean norm (1.45 on shared/images/identities, where same-person
#: pairs reach 0.38 and other-person pairs start at 0.47); FaceNet publishes none
THRESHOLDS: dict[str, float | None] = {"dlib": 0.4, "facenet": None}
IDENTITY = {"identity": "Int64", "identity_size": "Int64"}


def _with_embeddings(faces: Any, model: str, column: str) -> Any:
    if column in faces.columns:
        return faces
    from ..pipeline.predict import predict

    return predict(faces, "embedding", network=model)


def _threshold(model: str, threshold: float | None) -> float:
    if threshold is None:
        threshold = THRESHOLDS.get(model)
    if threshold is None:
        raise ValueError(f"no published same-person threshold for {model!r}: pass threshold=")
    if not 0 < threshold <= 2:
        raise ValueError("threshold is a distance of unit vectors: between 0 and 2")
    return float(threshold)


class FaceIndex:
    """A face index: k-means centroids and one shard per partition (in the cluster's memory,
    or the files of a saved index). Build one with :meth:`build`, open a saved one with
    :meth:`load`; :meth:`search` and :func:`identities` query it."""

    def __init__(self, centroids: Any, shards: list[Any], meta: dict[str, Any],
                 storage_options: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.centroids, self.shards, self.meta = centroids, shards, meta
        self.storage_options = storage_options
        self.token = tokenize(meta, [getattr(s, "key", s) for s in shards],
                              getattr(centroids, "key", None))  # fmt: skip

    @classmethod
    def build(cls, faces: Any, model: str = "dlib", column: str = ix.COLUMN,
              nlist: int | None = None, keep: tuple[str, ...] = ("identity",),
              seed: int = 0) -> FaceIndex:  # fmt: skip
        """The index of ``faces``' embeddings (computed with ``model`` where the frame has
        none). ``nlist``: the lists (default about 4 sqrt(faces)); ``keep``: the columns saved
        beside each vector (present ones), given back by :meth:`search` as ``match_<name>``."""
        faces = _with_embeddings(faces, model, column)
        kept = tuple(c for c in keep if c in faces.columns)
        return cls._of(_parts(faces), model, column, nlist, kept, seed)

    @classmethod
    def _of(cls, parts: list[Any], model: str, column: str, nlist: int | None,
            kept: tuple[str, ...], seed: int) -> FaceIndex:  # fmt: skip
        samples = [delayed(ix.sample)(p, i, column, seed) for i, p in enumerate(parts)]
        centroids = delayed(ix.train)(samples, nlist, seed)
        shards = [delayed(ix.build_shard)(p, i, centroids, column, kept)
                  for i, p in enumerate(parts)]  # fmt: skip
        return cls(centroids, shards, {"column": column, "model": model, "keep": list(kept)})

    @classmethod
    def load(cls, url: str, storage_options: dict[str, Any] | None = None) -> FaceIndex:
        """A saved index (:meth:`save`) at ``url``; its shards are read by the workers."""
        meta, centroids = ix.read_meta(url, storage_options)
        shards = [ix.shard_urls(url, i) for i in range(int(meta["shards"]))]
        return cls(centroids, shards, meta, storage_options)

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> str:
        """Write the index to ``url`` (a folder, local or any fsspec URL), shard by shard on
        the workers; ``index.json`` is written last. Returns ``url``."""
        import dask

        opts = storage_options
        writes = [delayed(ix.write_shard)(s if not isinstance(s, ix.ShardFiles) else
                                          delayed(ix.read_shard)(s, self.storage_options),
                                          url, i, opts)
                  for i, s in enumerate(self.shards)]  # fmt: skip
        centroids, *counts = dask.compute(self.centroids, *writes)
        meta = {**self.meta, "shards": len(self.shards), "count": int(sum(counts)),
                "dim": int(centroids.shape[1]), "nlist": int(len(centroids)),
                "saved": uuid.uuid4().hex}  # fmt: skip  # a worker's cached copy is this one's
        ix.write_meta(url, meta, np.asarray(centroids), opts)
        return url

    def _merged(self) -> Any:
        return delayed(ix.merged)(self.token, self.centroids, self.shards, self.storage_options)

    def search(self, queries: Any, k: int = 5, nprobe: int = 8) -> Any:
        """The ``k`` nearest indexed faces of each query face (see :func:`search`)."""
        queries = _with_embeddings(queries, self.meta.get("model", "dlib"), self.meta["column"])
        column, keep = self.meta["column"], list(self.meta.get("keep", []))
        meta = _matches_meta(keep)
        import dask.dataframe as dd

        if isinstance(queries, pd.DataFrame):  # the index is merged where the tasks run (a
            # cluster's worker, when there is one), not in this process
            one = dd.from_pandas(queries, npartitions=1, sort=False)
            return self.search(one, k=k, nprobe=nprobe).compute().reset_index(drop=True)

        m = self._merged()
        out = [delayed(_matches)(p, i, m, column, k, nprobe, keep)
               for i, p in enumerate(_parts(queries))]  # fmt: skip
        return dd.from_delayed(out, meta=meta, verify_meta=False)


def _now(d: Any) -> Any:
    return d.compute(scheduler="sync")


def _parts(faces: Any) -> list[Any]:
    """The partitions of ``faces`` as delayed objects (one, for a pandas frame)."""
    if isinstance(faces, pd.DataFrame):
        return [delayed(faces, traverse=False)]
    return list(faces.to_delayed(optimize_graph=True))


def _matches_meta(keep: list[str]) -> pd.DataFrame:
    cols = {"query_path": "string[pyarrow]", "query_face": "int64", "rank": "int64",
            "distance": "float32", "match_path": "string[pyarrow]", "match_face": "int64"}  # fmt: skip
    out = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in cols.items()})
    for c in keep:
        out[f"match_{c}"] = pd.Series([], dtype="object")
    return out


def _matches(part: pd.DataFrame, i: int, m: Any, column: str, k: int, nprobe: int,
             keep: list[str]) -> pd.DataFrame:  # fmt: skip
    """One query partition's matches: a row per (query face, rank)."""
    pos, x = ix.vectors_of(part, column)
    if not len(pos):
        return _matches_meta(keep)
    dist, ids = ix.search(m, x, k, nprobe)
    q, r = np.nonzero(ids >= 0)
    found = m.rows.loc[ids[q, r]]
    out = pd.DataFrame({
        "query_path": part["path"].iloc[pos[q]].to_numpy(),
        "query_face": part["face"].iloc[pos[q]].to_numpy(np.int64),
        "rank": r.astype(np.int64),
        "distance": dist[q, r],
        "match_path": found["path"].to_numpy(),
        "match_face": found["face"].to_numpy(np.int64),
    })  # fmt: skip
    out["query_path"] = out["query_path"].astype("string[pyarrow]")
    out["match_path"] = out["match_path"].astype("string[pyarrow]")
    for c in keep:
        out[f"match_{c}"] = found[c].to_numpy(object) if c in found.columns else None
    return out


def search(gallery: Any, queries: Any, k: int = 5, model: str = "dlib", nprobe: int = 8,
           storage_options: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """For each query face, its ``k`` nearest gallery faces: one row per (query, rank) with
    ``query_path``, ``query_face``, ``rank`` (0 nearest), ``distance`` (Euclidean distance of
    unit embeddings; dlib's same person is at most 0.4), ``match_path``, ``match_face`` and the
    gallery's kept labels (``match_identity``, ...). ``gallery``: a face frame (indexed here) or
    the URL of a saved :class:`FaceIndex`; faces without embeddings get them with ``model``.
    A Dask frame of queries gives a Dask frame."""
    if isinstance(gallery, str):
        index = FaceIndex.load(gallery, storage_options)
    elif isinstance(gallery, FaceIndex):
        index = gallery
    else:
        index = FaceIndex.build(gallery, model=model)
    return index.search(queries, k=k, nprobe=nprobe)


# -- identities ------------------------------------------------------------------------------------


def _edges(part: pd.DataFrame, i: int, m: Any, column: str, k: int, nprobe: int,
           threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(the partition's ids, edge sources, edge targets): each face to its neighbours closer
    than ``threshold``."""
    pos, x = ix.vectors_of(part, column)
    ids = ix.global_ids(i, pos)
    if not len(pos):
        return ids, ids, ids
    dist, nbr = ix.search(m, x, k + 1, nprobe)  # the face itself comes back too
    near = (dist <= threshold) & (nbr >= 0) & (nbr != ids[:, None])
    return ids, np.repeat(ids, near.sum(1)), nbr[near]


def _cluster(edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]], iterations: int,
             seed: int) -> pd.DataFrame:  # fmt: skip
    """Chinese Whispers over every partition's edges (one task, on a worker): each id's
    identity and the identity's size."""
    ids = np.concatenate([e[0] for e in edges])
    src = np.searchsorted(ids, np.concatenate([e[1] for e in edges]))
    dst = np.searchsorted(ids, np.concatenate([e[2] for e in edges]))
    pair = np.unique(np.stack([np.minimum(src, dst), np.maximum(src, dst)], 1), axis=0)
    labels = chinese_whispers(pair[:, 0], pair[:, 1], len(ids), iterations, seed)
    size = np.bincount(labels)[labels]
    return pd.DataFrame({"identity": labels, "identity_size": size}, index=ids)


def _assign(part: pd.DataFrame, i: int, labels: pd.DataFrame, column: str) -> pd.DataFrame:
    pos, _ = ix.vectors_of(part, column)
    out = part.copy()
    for c, dtype in IDENTITY.items():
        values = pd.array([pd.NA] * len(part), dtype=dtype)
        if len(pos):
            values[pos] = labels[c].reindex(ix.global_ids(i, pos)).to_numpy()
        out[c] = pd.Series(values, index=part.index)
    return out


def identities(faces: Any, model: str = "dlib", threshold: float | None = None, k: int = 16,
               nprobe: int = 8, nlist: int | None = None, iterations: int = 100,
               seed: int = 0, column: str = ix.COLUMN) -> Any:  # fmt: skip
    """``faces`` with ``identity`` (0 the largest cluster; null for rows without a face) and
    ``identity_size`` (its faces).

    Faces are joined when their unit embeddings (``model``'s, computed where the frame has
    none) are at most ``threshold`` apart (default :data:`THRESHOLDS`) among each face's ``k``
    nearest (the index searches ``nprobe`` of its ``nlist`` lists), then clustered by Chinese
    Whispers (``iterations`` passes at most, ``seed`` for its random order). A Dask frame gives
    a Dask frame (lazy); a pandas frame a pandas frame.
    """
    t = _threshold(model, threshold)
    faces = _with_embeddings(faces, model, column)
    parts = _parts(faces)
    index = FaceIndex._of(parts, model, column, nlist, (), seed)
    m = index._merged()
    edges = [delayed(_edges)(p, i, m, column, k, nprobe, t) for i, p in enumerate(parts)]
    labels = delayed(_cluster)(edges, iterations, seed)
    out = [delayed(_assign)(p, i, labels, column) for i, p in enumerate(parts)]
    if isinstance(faces, pd.DataFrame):
        return _now(out[0])
    import dask.dataframe as dd

    meta = faces._meta.copy()
    for c, dtype in IDENTITY.items():
        meta[c] = pd.Series([], dtype=dtype)
    return dd.from_delayed(out, meta=meta, verify_meta=False)
