"""Duplicate faces: byte-identical files, and near-duplicates (the same photo saved again).

``faceetl.duplicates(faces)`` gives the face frame (pandas or Dask) back with three columns:

- ``duplicate_group``: an id shared by the members of a group (0, 1, ... in the order of each
  group's first member by ``path``, ``face``), null for a face in no group;
- ``duplicate_kind``: ``"exact"`` where every member comes from byte-identical files (same
  ``file_sha256``: face k of one file goes with face k of the other; an image without a face
  is grouped with its copies too), ``"near"`` where some member comes from other bytes;
- ``duplicate_keep``: True for the one member kept per group, and for every face in no group
  (``faces[faces["duplicate_keep"]]`` is the frame without its duplicates).

The member kept is the best face, compared in this order: larger ``face_size`` (inter-ocular
pixels; the box area ``(x2 - x1) * (y2 - y1)`` where the frame has no ``face_size``), then the
sharper ``blur`` (higher is sharper; only where the frame has the column), then the higher
detector ``score``, then the first by ``path`` and ``face``. Missing values come last.

Near-duplicates (the same photo saved again, resized or edited) are found by embedding distance
where the frame has embeddings (``near="auto"``: ``faceetl.predict(faces, "embedding")`` first),
else by a 64-bit perceptual hash (DCT pHash of the grey ArcFace 112 px crop, :func:`phash`);
groups are the connected components of the pairs. Measured on ``images/identities`` (55 aligned
chips of 5 people) with each backend's own alignment (``benchmarks/duplicates.py`` for the dlib
backend's table; the same for retinaface and mtcnn), the copies of one photo against the
nearest other pair, pHash bits and the Euclidean distance of dlib's unit embeddings:

=========================================  ===============  ==============  ==============
pair (pHash bits / embedding distance)      dlib backend     retinaface      mtcnn
=========================================  ===============  ==============  ==============
Shimkus 000378 pair (same bytes)            0 / 0            0 / 0           0 / 0
Shimkus 000375 / 000376 (re-encoded)        2 / 0.041        0 / 0.057       0 / 0.039
Salley 000189 / 000192 (re-encoded)         4 / 0.056        2 / 0.047       6 / 0.067
Simm 000300 / 000304 (edited copy)          4 / 0.062        10 / 0.072      6 / 0.101
nearest other pair, pHash                   8 / 0.114        6 / 0.126       6 / 0.144
nearest other pair, embedding               8 / 0.114        12 / 0.117      16 / 0.134
=========================================  ===============  ==============  ==============

The pHash parts the copies from the other pairs only on the dlib backend's chips (at 6 bits);
on RetinaFace's and MTCNN's alignments a same-person pair of two photos (Simm 000297 / 000300)
is as close as the copies, and RetinaFace's Simm copy is 10 bits apart. The embedding parts
them on all three (copies at most 0.101, other pairs at least 0.114): the default,
:data:`EMBEDDING_DISTANCE` 0.107 for dlib's network; the pHash is the fallback for frames
without embeddings. dlib's same-person threshold (0.4 on unit vectors) is far above both.
The John_Simm pair is the same photograph, brightened and softened: its chips' grey pixels
correlate 0.992, as the re-encoded pairs' 0.993 and 0.997, where no other pair passes 0.89.

The pHash's integer code blocks exactly: pigeonhole on ``max_distance + 1`` bands of the 64
bits (two codes within ``max_distance`` bits agree on at least one band); ``max_distance=6``.
The embeddings' pairs come from the kNN index of :mod:`faceetl.curate.index` (each face's ``k``
nearest), built and queried on the workers.

Copies of 6 photos (7 faces, retinaface; the same benchmark): re-saved at JPEG quality 70 or
50, 0-2 bits (embedding 0.02-0.11); resized to 3/4 or 1/2, 0-14 bits (embedding 0.10-0.18),
as the detector's landmarks move 2-7 px between the sizes (the original's landmarks scaled
instead: 0-4 bits). A resized copy is found where its face is aligned alike: 11 of the 14 here.

At scale nothing is quadratic on the driver: the workers compute the hashes (the stored crop
where it is a lossless ArcFace 112 px crop, else the face aligned again from the original),
shuffle the rows by ``file_sha256`` and by each band's value, and compare codes within a
bucket only; the driver receives the members of groups alone and joins their components.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pandas as pd

from .. import config, schema
from ..align import AlignSpec

#: the crop the hash is taken from: the extraction's default, so its stored crops serve as they are
PHASH_ALIGN = AlignSpec("arcface", 112)
MAX_DISTANCE = 6
#: near-duplicate faces by embedding: the largest Euclidean distance of unit embeddings, per
#: network (dlib: copies of one photo at most 0.101, other pairs at least 0.114, over the
#: retinaface, mtcnn and dlib backends' alignments; see the table above)
EMBEDDING_DISTANCE: dict[str, float] = {"dlib": 0.107}
EMBEDDINGS = "embedding_vector_normalized"
NPROBE = 8
#: what the index keeps beside each vector: what a linked neighbour's signature needs
_INDEX_KEEP = ("file_sha256", "face_size", "blur", "score", "x1", "y1", "x2", "y2")
COLUMNS: dict[str, Any] = {
    "duplicate_group": "Int64",
    "duplicate_kind": schema.STRING,
    "duplicate_keep": "bool",
}
#: the few values of a face the grouping needs: who it is, its file's hash, its code, its quality
_SIGNATURE: dict[str, Any] = {
    "path": schema.STRING,
    "face": "int64",
    "file_sha256": schema.STRING,
    "phash": "Int64",
    "size": "float64",
    "blur": "float64",
    "score": "float64",
}
#: a member of a group as a bucket found it: its signature and a member it is linked to
_LINK = {**_SIGNATURE, "link_path": schema.STRING, "link_face": "int64"}


def phash(rgb: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash of an RGB uint8 image, as a signed int64.

    The grey image shrunk to 32x32 (area averaging), its 2-D DCT, the 8x8 lowest frequencies
    against their median: one bit each, row by row, the first the highest (the pHash of
    Zauner's thesis and of the ``imagehash`` package, hand-written here on OpenCV: the few
    lines do not warrant a dependency, and OpenCV's ``img_hash`` is only in its contrib build).
    """
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].reshape(-1)
    return int(np.packbits(low > np.median(low)).view(">i8")[0])


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each int64 (numpy's ``bitwise_count`` is 2.0+; faceetl supports 1.26)."""
    x = np.ascontiguousarray(x, dtype=np.int64)
    if hasattr(np, "bitwise_count"):  # unsigned: on signed numbers it counts |x|'s bits
        return np.bitwise_count(x.view(np.uint64)).astype(np.int64)
    return popcount_bytes(x)


def popcount_bytes(x: np.ndarray) -> np.ndarray:
    """:func:`popcount` by unpacking the bytes, for numpy before 2.0."""
    x = np.ascontiguousarray(x, dtype=np.int64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1, dtype=np.int64)


def band_masks(bands: int) -> np.ndarray:
    """The 64-bit masks of ``bands`` interleaved bands (bit i, from the highest, in band i %
    bands): the low frequencies, alike in every face, are spread over the bands."""
    masks = np.zeros(bands, np.uint64)
    for i in range(64):
        masks[i % bands] |= np.uint64(1) << np.uint64(63 - i)
    return masks.view(np.int64)


def duplicates(
    faces: Any,
    max_distance: int = MAX_DISTANCE,
    storage_options: dict[str, Any] | None = None,
    *,
    near: str = "auto",
    embedding_distance: float | None = None,
    k: int = 8,
) -> Any:
    """``faces`` (pandas or Dask) with ``duplicate_group``, ``duplicate_kind`` and
    ``duplicate_keep`` (see :mod:`faceetl.curate.duplicates`): byte-identical files by
    ``file_sha256``, near-duplicate faces by ``near``: ``"embedding"`` (unit embeddings at most
    ``embedding_distance`` apart, default :data:`EMBEDDING_DISTANCE` for the frame's network,
    among each face's ``k`` nearest in a :class:`faceetl.FaceIndex`), ``"phash"`` (pHashes
    within ``max_distance`` bits of 64), or ``"auto"``: embeddings where the frame has them
    (``faceetl.predict(faces, "embedding")``), else the pHash.

    A Dask frame is read once now for the groups (on the workers) and comes back lazy; a lazy
    extraction then runs again when the result is computed, so write it first
    (:func:`faceetl.write_faces`) or persist it. ``storage_options``: those of the
    ``crop_path`` and ``path`` URLs the crops are read from (pHash).
    """
    import dask.dataframe as dd

    if not isinstance(faces, (pd.DataFrame, dd.DataFrame)):
        raise TypeError(f"duplicates takes a face frame (pandas or Dask), not {type(faces)}")
    clash = sorted(set(COLUMNS) & set(faces.columns))
    if clash:
        raise ValueError(f"columns {clash} exist already: duplicates() was applied before")
    missing = sorted({"path", "face"} - set(faces.columns))
    if missing:
        raise KeyError(f"the face frame has no {missing} column")
    if not 0 <= max_distance < 64:
        raise ValueError(f"max_distance is a number of bits of 64, not {max_distance}")
    if near not in ("auto", "embedding", "phash"):
        raise ValueError(f"near must be 'auto', 'embedding' or 'phash', not {near!r}")
    if near == "auto":
        near = "embedding" if EMBEDDINGS in faces.columns else "phash"
    if near == "embedding":
        return _by_embedding(faces, _embedding_distance(faces, embedding_distance), k)
    bands = max_distance + 1
    if isinstance(faces, pd.DataFrame):
        sig = signatures(faces, storage_options)
        links = pd.concat([exact_links(sig), near_links(band_rows(sig, bands), max_distance)])
        return attach(faces, groups(links))
    import dask

    sig = faces.map_partitions(signatures, storage_options, config.capture(),
                               meta=_meta(_SIGNATURE))  # fmt: skip
    meta = _meta(_LINK)
    hashed = sig[sig["file_sha256"].notnull()]
    exact = hashed.shuffle(on="file_sha256").map_partitions(exact_links, meta=meta)
    banded = sig.map_partitions(band_rows, bands, meta=_meta({**_SIGNATURE, "band": "int64",
                                                              "value": "int64"}))  # fmt: skip
    shuffled = banded.shuffle(on=["band", "value"])
    near_found = shuffled.map_partitions(near_links, max_distance, meta=meta)
    found = dask.compute(exact, near_found)  # one graph: the signatures are computed once
    return _attached(faces, pd.concat(found))


def _attached(faces: Any, found: pd.DataFrame) -> Any:
    """``faces`` (Dask) with the group columns of ``found``'s links, lazily."""
    out_meta = faces._meta.copy()
    for c, dtype in COLUMNS.items():
        out_meta[c] = pd.Series([], dtype=dtype)
    return faces.map_partitions(attach, groups(found), meta=out_meta)


def _embedding_distance(faces: Any, distance: float | None) -> float:
    """``distance``, or the measured one of the frame's network (dlib's where a Dask frame is
    not read to say: pass ``embedding_distance=`` for another network's vectors)."""
    if distance is not None:
        return float(distance)
    network = "dlib"
    if isinstance(faces, pd.DataFrame) and "embedding_network" in faces.columns:
        named = faces["embedding_network"].dropna()
        network = str(named.iloc[0]) if len(named) else network
    if network not in EMBEDDING_DISTANCE:
        raise ValueError(f"no measured near-duplicate distance for {network!r} embeddings: "
                         "pass embedding_distance=")  # fmt: skip
    return EMBEDDING_DISTANCE[network]


def _by_embedding(faces: Any, distance: float, k: int) -> Any:
    """Exact groups by file hash and near ones by embedding distance, from one pass over the
    partitions (the index's shards, the hashes and the queries share it)."""
    import dask
    from dask import delayed

    from . import index as ix
    from .identities import FaceIndex, _parts

    parts = _parts(faces)
    index = FaceIndex._of(parts, "dlib", ix.COLUMN, None, _INDEX_KEEP, 0)
    merged = index._merged()
    near = [delayed(_near_links)(p, i, merged, k, distance) for i, p in enumerate(parts)]
    # exact groups: the signatures split by file hash into as many buckets as partitions (a
    # shuffle in delayed tasks, so that one graph holds the index's and the buckets' tasks)
    sigs = [delayed(_hash_buckets)(p, len(parts)) for p in parts]
    exact = [delayed(_exact_bucket)([s[b] for s in sigs]) for b in range(len(parts))]
    eager = isinstance(faces, pd.DataFrame)
    with dask.config.set(scheduler="sync") if eager else contextlib.nullcontext():
        links = pd.concat(dask.compute(*exact, *near), ignore_index=True)
    return attach(faces, groups(links)) if eager else _attached(faces, links)


def _hash_buckets(part: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """The partition's hashed faces' signatures in ``n`` buckets by their file's hash."""
    sig = signatures(part, None, None, False)
    sig = sig[sig["file_sha256"].notna()]
    bucket = pd.util.hash_pandas_object(sig["file_sha256"], index=False).to_numpy() % n
    return [sig[bucket == b] for b in range(n)]


def _exact_bucket(pieces: list[pd.DataFrame]) -> pd.DataFrame:
    return exact_links(pd.concat(pieces, ignore_index=True))


def _near_links(part: pd.DataFrame, i: int, m: Any, k: int, distance: float) -> pd.DataFrame:
    """The partition's faces each linked to its indexed neighbours at most ``distance`` away
    (both ways: the neighbour's signature comes from the index's rows)."""
    from . import index as ix

    pos, x = ix.vectors_of(part, ix.COLUMN)
    if not len(pos):
        return _meta(_LINK)
    dist, ids = ix.search(m, x, k + 1, NPROBE)
    own = ix.global_ids(i, pos)
    q, r = np.nonzero((dist <= distance) & (ids >= 0) & (ids != own[:, None]))
    if not len(q):
        return _meta(_LINK)
    a = _signature_of(part.iloc[pos[q]])
    b = _signature_of(m.rows.loc[ids[q, r]].reset_index(drop=True))
    return pd.concat([_links(a, b["path"], b["face"]), _links(b, a["path"], a["face"])],
                     ignore_index=True)  # fmt: skip


def _signature_of(rows: pd.DataFrame) -> pd.DataFrame:
    out = _quality(rows.reset_index(drop=True))
    out.insert(3, "phash", pd.array([None] * len(out), "Int64"))
    return out


def _meta(columns: dict[str, Any]) -> pd.DataFrame:
    """An empty frame of ``columns`` (name -> dtype)."""
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in columns.items()})


def signatures(
    part: pd.DataFrame,
    storage_options: dict[str, Any] | None = None,
    settings: config.Settings | None = None,
    hashed: bool = True,
) -> pd.DataFrame:
    """One partition's faces reduced to what the grouping needs (see ``_SIGNATURE``): the pHash
    of each ``ok`` face's crop (null where it cannot be read, or with ``hashed=False``), the
    file's hash, the quality. ``settings``: faceetl's, captured on the driver (the pixel limit
    of originals read again)."""
    with config.applied(settings):
        return _signatures(part, storage_options, hashed)


def _signatures(
    part: pd.DataFrame, storage_options: dict[str, Any] | None, hashed: bool = True
) -> pd.DataFrame:
    from ..pipeline.predict import _crops_for  # the crops as the predictors get them

    out = _quality(part)
    codes: list[Any] = [None] * len(part)
    if "status" in part.columns:
        ok = np.flatnonzero((part["status"] == schema.STATUS_OK).fillna(False).to_numpy(bool))
    else:
        ok = np.flatnonzero((part["face"] >= 0).to_numpy(bool))
    if hashed and len(ok):
        crops = _crops_for(part, ok, PHASH_ALIGN, storage_options)
        for i, crop in crops.items():
            codes[i] = None if isinstance(crop, Exception) else phash(crop)
    out.insert(3, "phash", pd.array(codes, "Int64"))
    return out.drop_duplicates(["path", "face"], ignore_index=True)


def _quality(part: pd.DataFrame) -> pd.DataFrame:
    """Who each face is, its file's hash and what decides the member kept (no pHash)."""
    out = pd.DataFrame({"path": pd.array(part["path"].astype(str), schema.STRING),
                        "face": part["face"].to_numpy(np.int64)})  # fmt: skip
    sha = part["file_sha256"] if "file_sha256" in part.columns else None
    out["file_sha256"] = pd.array([None] * len(part) if sha is None else sha, schema.STRING)
    if "face_size" in part.columns:
        size = part["face_size"].astype("float64").to_numpy()
    else:
        box = schema.boxes_array(part)
        size = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    out["size"] = np.asarray(size, np.float64)
    blur = part["blur"] if "blur" in part.columns else pd.Series(np.nan, index=part.index)
    out["blur"] = blur.astype("float64").to_numpy()
    out["score"] = part["score"].astype("float64").to_numpy()
    return out


def band_rows(sig: pd.DataFrame, bands: int) -> pd.DataFrame:
    """Each hashed face once per band, with the band's bits as ``value``: the blocking keys."""
    sig = sig[sig["phash"].notna()]
    codes = sig["phash"].to_numpy(np.int64)
    masks = band_masks(bands)
    out = sig.iloc[np.repeat(np.arange(len(sig)), bands)].reset_index(drop=True)
    out["band"] = np.tile(np.arange(bands, dtype=np.int64), len(sig))
    out["value"] = (codes[:, None] & masks[None, :]).reshape(-1)
    return out


def exact_links(sig: pd.DataFrame) -> pd.DataFrame:
    """Faces of byte-identical files (one bucket per ``file_sha256`` and face index), each
    linked to the bucket's first by path."""
    sig = sig[sig["file_sha256"].notna()].sort_values(["file_sha256", "face", "path"])
    first = sig.groupby(["file_sha256", "face"], sort=False)["path"].transform("first")
    copies = sig.groupby(["file_sha256", "face"], sort=False)["path"].transform("nunique")
    members = sig[copies.to_numpy() > 1]
    return _links(members, first[copies.to_numpy() > 1].to_numpy(), members["face"].to_numpy())


def near_links(banded: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Faces within ``max_distance`` bits of each other, from the rows of some (band, value)
    buckets: within each bucket, every pair of codes is compared (the bucket's distinct codes,
    in blocks, so memory stays bounded); a pair counts only in the first band the two codes
    agree on, so each is found once. Each face is linked to the first (by path, face) of its
    connected component within the bucket."""
    masks = band_masks(int(banded["band"].max()) + 1) if len(banded) else band_masks(1)
    found: list[pd.DataFrame] = []
    crowded = banded.groupby(["band", "value"])["face"].transform("size").to_numpy() > 1
    banded = banded[crowded].sort_values(["band", "value", "path", "face"], ignore_index=True)
    for (band, _), bucket in banded.groupby(["band", "value"], sort=False):
        distinct, inverse = np.unique(bucket["phash"].to_numpy(np.int64), return_inverse=True)
        pairs = _close_pairs(distinct, max_distance, masks, int(band))
        if band != 0 and not pairs:  # equal codes agree on band 0 first: linked there
            continue
        comp = _components(len(distinct), pairs)[inverse]  # rows of one code share theirs
        shared = pd.Series(comp).duplicated(keep=False).to_numpy()
        if not shared.any():
            continue
        members, comp = bucket[shared], comp[shared]
        head = pd.Series(np.arange(len(members))).groupby(comp).transform("first").to_numpy()
        found.append(
            _links(members, members["path"].to_numpy()[head], members["face"].to_numpy()[head])
        )
    return pd.concat(found, ignore_index=True) if found else _meta(_LINK)


def _close_pairs(
    codes: np.ndarray, max_distance: int, masks: np.ndarray, band: int
) -> list[tuple[int, int]]:
    """Index pairs (i < j) of distinct ``codes`` within ``max_distance`` bits whose first
    agreeing band is ``band``; compared in blocks of rows (about 4M comparisons at a time)."""
    out: list[tuple[int, int]] = []
    n = len(codes)
    step = max(1, (1 << 22) // max(n, 1))
    for start in range(0, n, step):
        rows = np.arange(start, min(start + step, n))
        xor = codes[rows, None] ^ codes[None, :]
        close = (popcount(xor) <= max_distance) & (np.arange(n)[None, :] > rows[:, None])
        for r, j in zip(*np.nonzero(close), strict=True):
            x = xor[r, j]
            first = int(np.argmax((x & masks) == 0))
            if first == band:
                out.append((int(rows[r]), int(j)))
    return out


def _components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """The component of each of ``n`` items joined by ``pairs`` (its smallest member).

    A hand-written union-find: SciPy's ``connected_components`` would do it, but SciPy is not
    one of faceetl's dependencies, and the pairs here are few."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)])


def _links(members: pd.DataFrame, path: Any, face: Any) -> pd.DataFrame:
    """``members``' signatures, each linked to the face (``path``, ``face``) of its group."""
    out = members[list(_SIGNATURE)].reset_index(drop=True)
    out["link_path"] = pd.array(path, schema.STRING)
    out["link_face"] = np.asarray(face, np.int64)
    return out


def groups(links: pd.DataFrame) -> pd.DataFrame:
    """The groups of the faces that the buckets linked (on the driver: only group members come
    here): connected components, their kind, the member kept and the group's id."""
    links = links.reset_index(drop=True)
    cols = ["path", "face", "duplicate_group", "duplicate_kind", "duplicate_keep"]
    if links.empty:
        return pd.DataFrame({"path": pd.Series([], dtype=schema.STRING),
                             "face": pd.Series([], dtype="int64"),
                             **{c: pd.Series([], dtype=t) for c, t in COLUMNS.items()}})  # fmt: skip
    members = links.drop(columns=["link_path", "link_face"]).drop_duplicates(["path", "face"])
    members = members.sort_values(["path", "face"], ignore_index=True)
    index = pd.MultiIndex.from_frame(members[["path", "face"]].astype({"path": str}))
    a = index.get_indexer(pd.MultiIndex.from_frame(links[["path", "face"]].astype({"path": str})))
    b = index.get_indexer(
        pd.MultiIndex.from_arrays([links["link_path"].astype(str), links["link_face"]])
    )
    ok = (a >= 0) & (b >= 0)
    comp = _components(len(members), list(zip(a[ok], b[ok], strict=True)))
    members["component"] = comp  # the smallest member by (path, face): ids follow that order
    members = members[members.groupby("component")["path"].transform("size") > 1].copy()
    members["duplicate_group"] = pd.array(pd.factorize(members["component"], sort=True)[0],
                                          "Int64")  # fmt: skip
    sha = members.groupby("component")["file_sha256"]
    exact = (sha.transform("nunique") == 1) & (sha.transform("count") == sha.transform("size"))
    members["duplicate_kind"] = pd.array(np.where(exact, "exact", "near"), schema.STRING)
    ranked = members.assign(
        _size=-members["size"], _blur=-members["blur"], _score=-members["score"]
    ).sort_values(["_size", "_blur", "_score", "path", "face"], na_position="last")
    best = ranked.groupby("component", sort=False).head(1).index
    members["duplicate_keep"] = members.index.isin(best)
    return members[cols].reset_index(drop=True)


def attach(part: pd.DataFrame, found: pd.DataFrame) -> pd.DataFrame:
    """``part`` with the group columns of its faces from ``found`` (faces in no group: null
    group and kind, kept); its index and row order as they were."""
    index = pd.MultiIndex.from_frame(found[["path", "face"]].astype({"path": str}))
    key = pd.MultiIndex.from_arrays(
        [part["path"].astype(str).to_numpy(), part["face"].astype("int64").to_numpy()]
    )
    at = index.get_indexer(key)
    hit = at >= 0
    out = part.copy()
    group = pd.array([pd.NA] * len(part), "Int64")
    kind = pd.array([None] * len(part), schema.STRING)
    keep = np.ones(len(part), bool)
    group[hit] = found["duplicate_group"].to_numpy()[at[hit]]
    kind[hit] = found["duplicate_kind"].to_numpy()[at[hit]]
    keep[hit] = found["duplicate_keep"].to_numpy(bool)[at[hit]]
    out["duplicate_group"], out["duplicate_kind"], out["duplicate_keep"] = group, kind, keep
    return out
