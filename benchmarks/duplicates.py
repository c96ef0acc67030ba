"""Near-duplicate measure: pHash bits against dlib embedding distance on images/identities.

    FACEETL_HOME=... FACEETL_OFFLINE=1 .venv/bin/python benchmarks/duplicates.py [--backend B]

Faces by the dlib backend (or ``--backend``: retinaface, mtcnn; one per chip), crops ArcFace
112 px, dlib embeddings in the same pass (distances of the unit vectors, as duplicates() uses). Prints, for each measure, the distance of each known duplicate pair, the nearest other pair
and the relative margin (nearest other - farthest duplicate) / nearest other. A third measure, not
one duplicates() could use (it needs the chips aligned alike), checks which pairs are one photo:
1 - the correlation of the chips' grey pixels.

Then copies of 7 photos (images/single and a two-face photo), JPEG quality 70 and 50 and resized to
3/4 and 1/2 (LANCZOS / box): each face's distance to its original's (faces matched by box
centre; retinaface), the detector's landmarks as they fall, and, for the resized copies, with the
original's landmarks scaled instead (what the hash gives without the detector's jitter).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import dask
import numpy as np
from PIL import Image

import faceetl
from faceetl.align import align_face
from faceetl.curate.duplicates import PHASH_ALIGN, phash, popcount
from faceetl.images import load_image
from faceetl.pipeline.predict import _crops_for

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
#: the pairs DATA.md names (byte-identical, then the two re-encoded ones)
KNOWN = [
    ("John_Shimkus/000378_02340151.jpg", "John_Shimkus/000378_03227610.jpg"),
    ("John_Shimkus/000375_03227651.jpg", "John_Shimkus/000376_02340068.jpg"),
    ("John_Salley/000189_02159361.jpg", "John_Salley/000192_02159531.jpg"),
]
#: closest to them by both measures: the same photograph brightened and softened
EDITED = ("John_Simm/000300_00470148.jpg", "John_Simm/000304_00470122.jpg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--backend", default="dlib")
    args = ap.parse_args()
    args.images = args.shared / "images" / "identities"
    with dask.config.set(scheduler="sync"):
        faces = faceetl.extract_faces(
            str(args.images), backend=args.backend, template=PHASH_ALIGN.template,
            size=PHASH_ALIGN.size, predict=["embedding"],
        ).compute()  # fmt: skip
    faces = faces[faces["status"] == "ok"].sort_values("path", ignore_index=True)
    names = [str(Path(p).relative_to(args.images)) for p in faces["path"]]
    assert len(set(names)) == len(names), "one face per chip expected"
    at = {n: i for i, n in enumerate(names)}
    crops = _crops_for(faces, np.arange(len(faces)), PHASH_ALIGN)
    codes = np.array([phash(crops[i]) for i in range(len(faces))], np.int64)
    vectors = np.stack([np.asarray(v, np.float64) for v in faces["embedding_vector_normalized"]])
    grey = np.stack([np.asarray(Image.open(args.images / n).convert("L"), float).ravel()
                     for n in names])  # fmt: skip
    measures = {
        "pHash bits": popcount(codes[:, None] ^ codes[None, :]).astype(float),
        "embedding L2 (unit)": np.linalg.norm(vectors[:, None] - vectors[None], axis=-1),
        "1 - grey correlation": 1 - np.corrcoef(grey),
    }
    pairs = [*KNOWN, EDITED]
    print(f"{len(names)} faces; pair: " + ", ".join(measures))
    for a, b in pairs:
        print(f"  {a} / {b}: " + ", ".join(f"{d[at[a], at[b]]:.4g}" for d in measures.values()))
    for name, d in measures.items():
        for label, dups in (("the known pairs", KNOWN), ("with the edited pair", pairs)):
            ids = {frozenset((at[a], at[b])) for a, b in dups}
            worst = max(d[at[a], at[b]] for a, b in dups)
            others = [(d[i, j], i, j) for i, j in itertools.combinations(range(len(names)), 2)
                      if frozenset((i, j)) not in ids]  # fmt: skip
            near, i, j = min(others)
            print(f"{name}, {label}: farthest duplicate {worst:.4g}, nearest other {near:.4g} "
                  f"({names[i]} / {names[j]}), relative margin {(near - worst) / near:.3f}")  # fmt: skip
    copies(args.shared)


#: name -> (scale, JPEG quality) of each copy
COPIES = {"q70": (1.0, 70), "q50": (1.0, 50), "x0.75": (0.75, 90), "x0.5": (0.5, 90)}


def copies(shared: Path) -> None:
    """pHash bits and embedding distance of re-saved and resized copies to their originals."""
    photos = sorted((shared / "images" / "single").glob("*.jpg"))
    photos.append(shared / "images" / "group" / "fr_two_people.jpg")
    with tempfile.TemporaryDirectory() as tmp:
        for p in photos:
            im = Image.open(p).convert("RGB")
            im.save(f"{tmp}/{p.stem}__orig.jpg", quality=95)
            for name, (scale, quality) in COPIES.items():
                size = (round(im.width * scale), round(im.height * scale))
                im.resize(size, Image.LANCZOS).save(f"{tmp}/{p.stem}__{name}.jpg", quality=quality)
        with dask.config.set(scheduler="sync"):
            faces = faceetl.extract_faces(tmp, predict=["embedding"]).compute()
        faces = faces[faces["status"] == "ok"].reset_index(drop=True)
        faces["photo"] = [Path(p).stem.split("__")[0] for p in faces["path"]]
        faces["copy"] = [Path(p).stem.split("__")[1] for p in faces["path"]]
        print(f"\ncopies of {len(photos)} photos ({len(faces)} faces, retinaface): pHash bits "
              "(with the original's landmarks scaled), embedding L2 (unit)")  # fmt: skip
        for (photo, name), copy in faces[faces["copy"] != "orig"].groupby(["photo", "copy"]):
            scale = COPIES[name][0]
            for _, c in copy.iterrows():
                orig = faces[(faces["photo"] == photo) & (faces["copy"] == "orig")]
                gap = np.hypot((orig["x1"] + orig["x2"]) * scale - c["x1"] - c["x2"],
                               (orig["y1"] + orig["y2"]) * scale - c["y1"] - c["y2"])  # fmt: skip
                o = orig.iloc[int(np.argmin(gap.to_numpy()))]
                own = [align_face(load_image(r["path"]), np.reshape(r["landmarks"], (5, 2)),
                                  None, PHASH_ALIGN)[0] for r in (o, c)]  # fmt: skip
                moved = align_face(load_image(c["path"]),
                                   np.reshape(o["landmarks"], (5, 2)) * scale, None,
                                   PHASH_ALIGN)[0]  # fmt: skip
                bits = [int(popcount(np.array([phash(own[0]) ^ phash(x)]))[0])
                        for x in (own[1], moved)]  # fmt: skip
                emb = np.linalg.norm(np.asarray(o["embedding_vector_normalized"]) -
                                     np.asarray(c["embedding_vector_normalized"]))  # fmt: skip
                print(f"  {photo} face {o['face']} {name}: {bits[0]} ({bits[1]}), {emb:.3f}")


if __name__ == "__main__":
    main()
