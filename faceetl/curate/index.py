"""A nearest-neighbour index of face embeddings, built and queried partition by partition.

The index is faiss's inverted file (IVF, ``IndexIVFFlat`` on inner products of unit vectors):
k-means centroids trained on a sample of every partition, then one *shard* per partition (its
vectors in the lists of their nearest centroid, the centroids shared), built by the workers. A
query is compared with the vectors of its ``nprobe`` nearest lists in every shard; each worker
merges the shards once (cached) and answers its query partitions. The driver holds the sample's
centroids only, never the vectors.

Why faiss's IVF (measured with ``python benchmarks/curate.py --ann``: 10^5 planted 128-d unit
vectors, one thread, every vector a query, k=10): IVF (1,024 lists, nprobe 8) built in 1.9 s and
answered in 6.0 s, recall@10 0.93 against exact search; HNSW graphs at M=16, ef 64/48 took
5-9x longer to build and 1.5-3x longer to query, for a recall of 0.83-0.85: faiss HNSW 10.8 s +
9.3 s, hnswlib 11.3 + 8.9 s, usearch 16.8 + 18.0 s (f16: 10.7 + 10.7 s). What identities need
is the same-person neighbours within the threshold, which lie in a face's own list and the
adjacent ones (the benchmark's pairwise F at 10^6 faces). IVF shards also merge without being
rebuilt (one list per centroid), which HNSW graphs do not.

A saved index is a folder at any fsspec URL: ``index.json`` (what it holds), ``centroids.npy``,
and per shard ``shard-NNNNN.faiss`` (faiss's serialisation) and ``rows-NNNNN.parquet`` (each
vector's id, ``path``, ``face`` and the label columns kept).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import storage

#: the column of unit vectors searched by default (the embedding predictor's)
COLUMN = "embedding_vector_normalized"
#: per partition, at most this many vectors go to the k-means sample
SAMPLE_PER_PARTITION = 4096
#: faiss warns below 39 training points per centroid: the lists follow the sample's size
POINTS_PER_CENTROID = 39
FORMAT = "faceetl-ivf"


def _faiss() -> Any:
    from ..extras import require

    return require("faiss", "curate", "the face index (identities, search)")


@contextlib.contextmanager
def task_threads() -> Iterator[None]:
    """faiss on one thread inside a task that runs beside others (a worker's or the threaded
    scheduler's thread: the partitions are the parallelism), on all cores in the main thread."""
    faiss = _faiss()
    if threading.current_thread() is threading.main_thread():
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # OpenMP's setting is the calling thread's own
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def vectors_of(part: pd.DataFrame, column: str = COLUMN) -> tuple[np.ndarray, np.ndarray]:
    """(positions, float32 vectors) of the rows of ``part`` that have a vector in ``column``,
    read from the Arrow list buffer without a Python object per row."""
    if column not in part.columns:
        raise ValueError(
            f"the faces have no {column!r} column: add embeddings first "
            "(faceetl.predict(faces, 'embedding'))"
        )
    arr = pa.chunked_array(pa.array(part[column], from_pandas=True)).combine_chunks()
    valid = np.flatnonzero(~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool))
    if not len(valid):
        return valid, np.zeros((0, 0), np.float32)
    arr = arr.filter(pa.array(np.isin(np.arange(len(arr)), valid)))
    lengths = np.asarray(arr.value_lengths().to_numpy(zero_copy_only=False))
    if (lengths != lengths[0]).any():
        raise ValueError(f"the vectors of {column!r} differ in length")
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float32)
    return valid, np.ascontiguousarray(flat.reshape(len(valid), int(lengths[0])))


def global_ids(partition: int, positions: np.ndarray) -> np.ndarray:
    """Ids unique across a frame's partitions without knowing their lengths: the partition
    number in the high 32 bits, the row's position in the low ones."""
    return (np.int64(partition) << np.int64(32)) | positions.astype(np.int64)


def sample(part: pd.DataFrame, partition: int, column: str, seed: int) -> tuple[int, np.ndarray]:
    """(vectors in the partition, a random sample of them for k-means)."""
    _, x = vectors_of(part, column)
    n = len(x)
    rng = np.random.default_rng([seed, partition])
    if n > SAMPLE_PER_PARTITION:
        x = x[np.sort(rng.choice(n, SAMPLE_PER_PARTITION, replace=False))]
    return n, x


def train(samples: Sequence[tuple[int, np.ndarray]], nlist: int | None, seed: int) -> np.ndarray:
    """k-means centroids (unit vectors) from the partitions' samples; ``nlist=None``: about
    4 sqrt(n) lists (faiss's guideline), fewer when the sample is too small for them."""
    faiss = _faiss()
    n = sum(c for c, _ in samples)
    xs = [x for _, x in samples if len(x)]
    if not xs:
        raise ValueError("no face has an embedding: nothing to index")
    x = np.ascontiguousarray(np.concatenate(xs))
    want = int(nlist) if nlist else int(4 * np.sqrt(max(n, 1)))
    k = max(1, min(want, len(x) // POINTS_PER_CENTROID or 1))
    if k == 1:
        c = x.mean(0, keepdims=True)
    else:
        km = faiss.Kmeans(x.shape[1], k, niter=10, seed=seed, spherical=True,
                          max_points_per_centroid=256, verbose=False)  # fmt: skip
        km.train(x)
        c = km.centroids
    return np.ascontiguousarray(c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12))


def _empty(centroids: np.ndarray) -> Any:
    faiss = _faiss()
    d = centroids.shape[1]
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, d, len(centroids), faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.own_fields = True
    quantizer.this.disown()  # the index owns its quantizer from here
    return index


def build_shard(
    part: pd.DataFrame, partition: int, centroids: np.ndarray, column: str, keep: Sequence[str]
) -> tuple[bytes, pd.DataFrame]:
    """One partition's shard: its vectors in the centroids' lists (faiss bytes), and the rows
    (id, ``path``, ``face`` and the ``keep`` columns) of those vectors."""
    faiss = _faiss()
    pos, x = vectors_of(part, column)
    index = _empty(centroids)
    ids = global_ids(partition, pos)
    if len(x):
        if x.shape[1] != centroids.shape[1]:
            raise ValueError(
                f"vectors of length {x.shape[1]}, the index's are {centroids.shape[1]}"
            )
        index.add_with_ids(x, ids)
    cols = [c for c in ("path", "face", *keep) if c in part.columns]
    rows = part.iloc[pos][cols].reset_index(drop=True)
    rows.insert(0, "id", ids)
    return bytes(faiss.serialize_index(index)), rows


class _Merged:
    """Every shard merged into one searchable index, and the rows of its ids."""

    def __init__(self, centroids: np.ndarray, shards: Sequence[tuple[bytes, pd.DataFrame]]):
        faiss = _faiss()
        self.index = _empty(centroids)
        for data, _ in shards:
            self.index.merge_from(faiss.deserialize_index(np.frombuffer(data, np.uint8)), 0)
        self.rows = pd.concat([r for _, r in shards], ignore_index=True).set_index("id")


# each worker process merges an index's shards once; a couple of indexes are kept
_CACHE: OrderedDict[str, _Merged] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2


def merged(token: str, centroids: np.ndarray, shards: Sequence[Any], options: Any) -> _Merged:
    """The shards (in memory, or the URLs of a saved index's shards) merged, once a process."""
    with _CACHE_LOCK:
        if token in _CACHE:
            _CACHE.move_to_end(token)
            return _CACHE[token]
        got = [read_shard(s, options) if isinstance(s, ShardFiles) else s for s in shards]
        m = _Merged(centroids, got)
        _CACHE[token] = m
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return m


def search(m: _Merged, x: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, ids) of the ``k`` nearest indexed vectors of each row of ``x``: Euclidean
    distances of unit vectors (``sqrt(2 - 2 cos)``), ids -1 where fewer than ``k`` exist."""
    m.index.nprobe = max(1, min(int(nprobe), m.index.nlist))
    with task_threads():
        sim, ids = m.index.search(np.ascontiguousarray(x, np.float32), int(k))
    dist = np.sqrt(np.clip(2.0 - 2.0 * sim, 0.0, None)).astype(np.float32)
    dist[ids < 0] = np.inf
    return dist, ids


# -- saved indexes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardFiles:
    """Where a saved index keeps shard ``i``: faiss's bytes and the rows of its ids."""

    faiss: str
    rows: str


def shard_urls(url: str, i: int) -> ShardFiles:
    return ShardFiles(storage.join(url, f"shard-{i:05d}.faiss"),
                      storage.join(url, f"rows-{i:05d}.parquet"))  # fmt: skip


def write_shard(shard: tuple[bytes, pd.DataFrame], url: str, i: int, options: Any) -> int:
    """Write shard ``i`` of a saved index; the number of vectors it holds."""
    data, rows = shard
    files = shard_urls(url, i)
    buf = io.BytesIO()
    rows.to_parquet(buf, index=False)
    storage.write_atomic(files.rows, buf.getvalue(), options)
    storage.write_atomic(files.faiss, data, options)
    return len(rows)


def read_shard(files: ShardFiles, options: Any) -> tuple[bytes, pd.DataFrame]:
    rows = pd.read_parquet(io.BytesIO(storage.read_bytes(files.rows, options)))
    return storage.read_bytes(files.faiss, options), rows


def write_meta(url: str, meta: dict[str, Any], centroids: np.ndarray, options: Any) -> None:
    buf = io.BytesIO()
    np.save(buf, centroids)
    storage.write_atomic(storage.join(url, "centroids.npy"), buf.getvalue(), options)
    # index.json last: a folder without it is an index still being written
    data = json.dumps({"format": FORMAT, "version": 1, **meta}, indent=1).encode()
    storage.write_atomic(storage.join(url, "index.json"), data, options)


def read_meta(url: str, options: Any) -> tuple[dict[str, Any], np.ndarray]:
    try:
        meta = json.loads(storage.read_bytes(storage.join(url, "index.json"), options))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url} is not a saved face index (no index.json): save one with "
            "FaceIndex.save(url), or pass a face frame as the gallery"
        ) from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{url}/index.json is not a {FORMAT} index")
    c = np.load(io.BytesIO(storage.read_bytes(storage.join(url, "centroids.npy"), options)))
    return meta, c
