"""CelebAMask-HQ (Lee et al. 2020): per-part masks, merged label maps and the folder layouts.

The release holds ``CelebA-HQ-img/<id>.jpg`` (1024x1024) and
``CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png``, one 512x512 binary mask per part
present. :func:`merge_part_masks` turns them into one label map as zllrunning/face-parsing.PyTorch
prepares its training labels: the parts of :data:`PARTS` are painted in that order with
``label = index + 1`` (0 = background), so a pixel in two part masks gets the later part
(hair over skin, for instance). This is the order of the parsing model's 19 outputs
(:data:`faceetl.nets.bisenet.CLASSES`). CelebAMask-HQ's own
``face_parsing/Data_preprocessing/g_mask.py`` paints in another order (:data:`G_MASK_PARTS`,
labels 1..18 in *that* order); pass ``parts=G_MASK_PARTS`` to reproduce its label maps. A
prepared layout — images plus one label PNG per image with the same stem (``CelebA-HQ-img`` +
``mask``, as face-parsing.PyTorch writes it, or ``images`` + ``labels``) — is read as is;
:func:`write_label_maps` writes one from the per-part layout. :func:`find_layout` tells the two
apart; :meth:`CelebAMaskFolder.sample` reads one image and its label map at a size (images PIL
bilinear, label maps nearest neighbour).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..nets.parsing_classes import CLASSES

log = logging.getLogger(__name__)

#: the CelebAMask-HQ parts in face-parsing.PyTorch's merge order; label = index + 1 (the
#: parsing model's outputs after the background, :data:`faceetl.nets.bisenet.CLASSES`)
PARTS: tuple[str, ...] = CLASSES[1:]
#: the order of CelebAMask-HQ's own g_mask.py ("list2"), for reproducing its label maps
G_MASK_PARTS: tuple[str, ...] = (
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)
#: the side of the released part masks (and of the label maps by default)
IMAGE_SIZE = 512
FOLDER_SIZE = 2000  # CelebAMask-HQ-mask-anno/<id // 2000>/

IMAGE_DIRS = ("CelebA-HQ-img", "images", "imgs", "img")
ANNO_DIR = "CelebAMask-HQ-mask-anno"
LABEL_DIRS = ("mask", "masks", "labels", "CelebAMask-HQ-mask", "CelebAMaskHQ-mask")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def part_mask_path(anno_dir: str | os.PathLike, image_id: int, part: str) -> Path:
    """``<anno_dir>/<id // 2000>/<id:05d>_<part>.png``, the CelebAMask-HQ file of one part."""
    image_id = int(image_id)
    return Path(anno_dir) / str(image_id // FOLDER_SIZE) / f"{image_id:05d}_{part}.png"


def _read_gray(path: str | os.PathLike) -> np.ndarray:
    a = cv2.imread(os.fspath(path), cv2.IMREAD_GRAYSCALE)
    if a is None:
        raise ValueError(f"cannot read the mask {path}")
    return a


def merge_part_masks(
    masks: Mapping[str, np.ndarray | None],
    size: int | tuple[int, int] | None = None,
    parts: Sequence[str] = PARTS,
) -> np.ndarray:
    """One (H, W) uint8 label map from binary part masks (part name -> (H, W) array).

    Parts are painted in the order of ``parts`` with label ``index + 1`` wherever their mask is
    non-zero, so later parts overwrite earlier ones; absent parts (missing or ``None``) are
    skipped, unknown part names refused. ``size`` (H, W) is needed when no mask is given.
    """
    unknown = sorted(set(masks) - set(parts))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; known: {list(parts)}")
    given = [np.asarray(m) for m in masks.values() if m is not None]
    if size is None:
        if not given:
            raise ValueError("no part mask given: pass size=")
        size = given[0].shape[:2]
    elif isinstance(size, int):
        size = (size, size)
    out = np.zeros(tuple(size), np.uint8)
    for label, part in enumerate(parts, start=1):
        m = masks.get(part)
        if m is None:
            continue
        m = np.asarray(m)
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != out.shape:
            raise ValueError(f"mask of {part!r} is {m.shape}, expected {out.shape}")
        out[m != 0] = label
    return out


def read_part_masks(
    anno_dir: str | os.PathLike, image_id: int, parts: Sequence[str] = PARTS
) -> dict[str, np.ndarray]:
    """The part masks of ``image_id`` that exist under ``anno_dir`` (part name -> (H, W) uint8)."""
    out = {}
    for part in parts:
        p = part_mask_path(anno_dir, image_id, part)
        if p.is_file():
            out[part] = _read_gray(p)
    return out


def read_label_map(
    anno_dir: str | os.PathLike,
    image_id: int,
    size: int = IMAGE_SIZE,
    parts: Sequence[str] = PARTS,
) -> np.ndarray:
    """The merged (size, size) uint8 label map of ``image_id`` from its per-part masks."""
    masks = read_part_masks(anno_dir, image_id, parts)
    shapes = {m.shape for m in masks.values()}
    if len(shapes) > 1:
        raise ValueError(f"part masks of image {image_id} differ in size: {sorted(shapes)}")
    label = merge_part_masks(masks, next(iter(shapes)) if shapes else size, parts)
    if label.shape != (size, size):
        label = cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)
    return label


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _list_images(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    }


def _id_sort_key(stem: str) -> tuple:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def write_label_maps(
    root: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    size: int = IMAGE_SIZE,
    parts: Sequence[str] = PARTS,
) -> Path:
    """Write ``<out_dir>/<id>.png`` label maps (default ``<root>/mask``) from the per-part masks.

    The prepared layout face-parsing.PyTorch trains from; :func:`find_layout` reads it back.
    """
    root = Path(root)
    img_dir = _find_dir(root, IMAGE_DIRS)
    anno = root / ANNO_DIR
    if img_dir is None or not anno.is_dir():
        raise FileNotFoundError(f"{root} has no CelebA-HQ-img/ and {ANNO_DIR}/ folders")
    out = Path(out_dir) if out_dir is not None else root / "mask"
    out.mkdir(parents=True, exist_ok=True)
    for stem in sorted(_list_images(img_dir), key=_id_sort_key):
        if not stem.isdigit():
            raise ValueError(f"CelebAMask-HQ image names are numbers, not {stem!r}")
        label = read_label_map(anno, int(stem), size, parts)
        if not cv2.imwrite(os.fspath(out / f"{stem}.png"), label):
            raise OSError(f"cannot write {out / f'{stem}.png'}")
    return out


# --- the folder layouts -------------------------------------------------------------------------


@dataclass(frozen=True)
class CelebAMaskFolder:
    """A CelebAMask-HQ folder as found by :func:`find_layout`.

    ``layout`` is ``"parts"`` (release: part masks under ``anno_dir``, merged when read) or
    ``"labels"`` (prepared: one ``<stem>.png`` label map per image in ``label_dir``); ``ids``
    are the image stems in order, ``paths`` their image files.
    """

    root: Path
    layout: str
    image_dir: Path
    anno_dir: Path | None
    label_dir: Path | None
    ids: tuple[str, ...]
    paths: Mapping[str, Path]

    def sample(
        self, stem: str, size: int = IMAGE_SIZE, parts: Sequence[str] = PARTS
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb, label)`` of image ``stem`` at ``size``: uint8 (S, S, 3) and uint8 (S, S)."""
        with Image.open(self.paths[stem]) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            rgb = np.asarray(im, np.uint8).copy()
        if self.layout == "parts":
            assert self.anno_dir is not None
            label = read_label_map(self.anno_dir, int(stem), size, parts)
        else:
            assert self.label_dir is not None
            label = _read_gray(self.label_dir / f"{stem}.png")
            if label.shape != (size, size):
                label = cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)
        return rgb, label


def find_layout(
    root: str | os.PathLike, layout: str = "auto", ids: Sequence[str | int] | None = None
) -> CelebAMaskFolder:
    """The images and labels under ``root``: the release or a prepared layout.

    ``layout="auto"`` takes the per-part one when both exist. ``ids`` restricts the folder to
    some image stems (a split), in that order; otherwise every labelled image, sorted by id.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset folder {root}")
    img_dir = _find_dir(root, IMAGE_DIRS)
    if img_dir is None:
        raise FileNotFoundError(f"{root} has no image folder (one of {list(IMAGE_DIRS)})")
    anno = root / ANNO_DIR
    label_dir = _find_dir(root, LABEL_DIRS)
    if layout == "auto":
        layout = "parts" if anno.is_dir() else "labels"
    if layout == "parts" and not anno.is_dir():
        raise FileNotFoundError(f"{root} has no {ANNO_DIR}/ folder")
    if layout == "labels" and label_dir is None:
        raise FileNotFoundError(
            f"{root} has neither {ANNO_DIR}/ nor a label folder (one of {list(LABEL_DIRS)})"
        )
    if layout not in ("parts", "labels"):
        raise ValueError(f"layout must be 'auto', 'parts' or 'labels', not {layout!r}")
    images = _list_images(img_dir)
    if layout == "labels":
        assert label_dir is not None
        labels = {p.stem for p in label_dir.glob("*.png")}
        missing = sorted(set(images) - labels)
        if missing and ids is None:
            log.warning("%d images of %s have no label map; skipped", len(missing), img_dir)
        images = {k: v for k, v in images.items() if k in labels}
    elif any(not s.isdigit() for s in images):
        raise ValueError(f"CelebAMask-HQ image names are numbers; {img_dir} has others")
    if ids is not None:
        want = [str(i) for i in ids]
        absent = [i for i in want if i not in images]
        if absent:
            raise ValueError(f"ids not in {img_dir} (or without labels): {absent[:5]}")
    else:
        want = sorted(images, key=_id_sort_key)
    return CelebAMaskFolder(
        root,
        layout,
        img_dir,
        anno if layout == "parts" else None,
        label_dir if layout == "labels" else None,
        tuple(want),
        {i: images[i] for i in want},
    )


__all__ = [
    "ANNO_DIR",
    "G_MASK_PARTS",
    "IMAGE_DIRS",
    "LABEL_DIRS",
    "PARTS",
    "CelebAMaskFolder",
    "find_layout",
    "merge_part_masks",
    "part_mask_path",
    "read_label_map",
    "read_part_masks",
    "write_label_maps",
]
