"""Train and fine-tune RetinaFace (Deng et al. 2019) as biubug6/Pytorch_Retinaface does.

>>> model, metrics = train("widerface/train/label.txt", network="mobilenet0.25",
...                        checkpoint_dir="runs/retinaface")
>>> det = RetinaFaceDetector(weights="runs/retinaface/last.pt")   # faceetl's retinaface backend

Annotations are read by :mod:`faceetl.datasets` (re-exported here): the official WIDER FACE
``wider_face_train_bbx_gt.txt`` layout (:func:`read_wider_bbx_gt`), the RetinaFace ``label.txt``
layout with five landmarks (:func:`read_retinaface_labels`) or dlib imglab XML
(:func:`read_dlib_xml`, 68 points reduced to the five). :class:`RetinaFaceDataset` (:mod:`.data`)
takes the parsed annotations and an image root, applies the published training augmentation
(:mod:`.augmentation`: random square crop of 0.3, 0.45, 0.6, 0.8 or 1 times the short side,
photometric distortion, mirror with landmark swap, resize to 640 / 840, BGR mean subtraction)
and gives ``(image, targets)`` with targets ``(N, 15)``: x1 y1 x2 y2, ten landmark coordinates
(all normalised to [0, 1]) and a label (1: the face has landmarks, -1: it has not).

The loss (:mod:`.loss`) is the multibox loss of the reference code: priors matched to faces at
IoU 0.35 (each face also gets its best prior), offsets encoded with variances (0.1, 0.2)
(:mod:`faceetl.nets.retinaface_priors`), hard negative mining at 7 negatives per positive,
smooth-L1 on boxes (weight 2) and on the landmarks of faces that have them. SGD (momentum 0.9,
weight decay 5e-4, lr 1e-3) divides the learning rate by ten at 76 % and 88 % of the epochs
(mobilenet: 190 and 220 of 250; resnet50: 70 and 90 of 100; :mod:`.schedule`). The loop
(:mod:`.loop`) runs mixed precision on CUDA; with ``world_size > 1`` (or under ``torchrun``)
training is data-parallel with ``torch.distributed`` (DDP). Every epoch writes a resumable
checkpoint whose ``state_dict`` has the released files' key layout, so it loads into the backend
as ``weights=`` (:mod:`.model` resolves ``init=`` and reloads checkpoints).
"""

from ...align import five_from_68
from ...datasets.annotation import ImageAnnotation
from ...datasets.dlib_xml import read_dlib_xml
from ...datasets.formats import annotation_format, read_annotations
from ...datasets.wider import (
    WIDER_ATTRIBUTES,
    default_image_root,
    read_retinaface_labels,
    read_wider_bbx_gt,
    write_retinaface_labels,
)
from ...nets.nms import box_iou
from ...nets.retinaface_priors import encode, encode_landm, match, normalised_priors, point_form
from .augmentation import (
    PRE_SCALES,
    augment,
    distort,
    draw_crop_scale,
    matrix_iof,
    mirror,
    pad_to_square,
    preprocess,
    random_crop,
)
from .data import RetinaFaceDataset, collate
from .loop import evaluate_loss, train
from .loss import LossOutput, MultiBoxLoss, hard_negatives
from .model import infer_network, load_init, load_model, resolve_init
from .schedule import PUBLISHED, default_milestones, learning_rate

__all__ = [
    "PRE_SCALES",
    "PUBLISHED",
    "WIDER_ATTRIBUTES",
    "ImageAnnotation",
    "LossOutput",
    "MultiBoxLoss",
    "RetinaFaceDataset",
    "annotation_format",
    "augment",
    "box_iou",
    "collate",
    "default_image_root",
    "default_milestones",
    "distort",
    "draw_crop_scale",
    "encode",
    "encode_landm",
    "evaluate_loss",
    "five_from_68",
    "hard_negatives",
    "infer_network",
    "learning_rate",
    "load_init",
    "load_model",
    "match",
    "mirror",
    "matrix_iof",
    "normalised_priors",
    "pad_to_square",
    "point_form",
    "preprocess",
    "random_crop",
    "read_annotations",
    "read_dlib_xml",
    "read_retinaface_labels",
    "read_wider_bbx_gt",
    "resolve_init",
    "train",
    "write_retinaface_labels",
]
