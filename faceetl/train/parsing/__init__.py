"""Train and evaluate the BiSeNet face parser on CelebAMask-HQ (face-parsing.PyTorch recipe).

>>> ds = CelebAMaskHQ("data/CelebAMask-HQ")               # augmented training view
>>> model, metrics = train("data/CelebAMask-HQ", epochs=40, batch_size=16, lr=1e-2,
...                        checkpoint_dir="runs/parsing")
>>> evaluate(model, CelebAMaskHQ("data/val", augment=False))["miou"]
>>> ParsingPredictor(weights="runs/parsing/last.pt")      # the checkpoint is a parsing model

**Data** (:mod:`faceetl.datasets.celebamask`, re-exported here): the release layout
(``CelebA-HQ-img/`` + ``CelebAMask-HQ-mask-anno/``, one binary mask per part) merged into label
maps in face-parsing.PyTorch's order (:data:`PARTS`; :data:`G_MASK_PARTS` reproduces
CelebAMask-HQ's own ``g_mask.py``), or a prepared layout of label PNGs
(:func:`write_label_maps`). :class:`CelebAMaskHQ` (:mod:`.data`) serves them as tensors, images
resized to 512 (PIL bilinear), label maps of another size with nearest neighbour.

**Training** (:func:`train`, :mod:`.loop`) follows face-parsing.PyTorch's ``train.py``: the
augmentations of its ``face_dataset.py``/``transform.py`` (colour jitter of
brightness/contrast/saturation by 0.5, a horizontal flip that swaps the left/right classes, a
random scale of 0.75/1/1.25/1.5/1.75/2, a random 448x448 crop), the sum of three
:class:`OhemCELoss` terms (:mod:`.loss`; main head + the two auxiliary heads
``conv_out16``/``conv_out32``; threshold 0.7, at least 1/16 of the pixels of a batch =
``16*448*448//16`` for the published batch of 16), SGD with momentum 0.9 and weight decay 5e-4
(none on biases and BatchNorm), 10x the learning rate on the fusion module and the output heads
(:mod:`.model`), an exponential warm-up from 1e-5 followed by the poly schedule
``lr * (1 - it/max_iter) ** 0.9``. The published run is 80,000 iterations of 16 images (about 43
epochs of the 30,000 images) at ``lr=1e-2`` from an ImageNet ResNet-18; this module has no
ImageNet weights of its own — pass one with ``init`` (a torchvision ``resnet18`` state dict) or
start from a BiSeNet state dict such as ``79999_iter.pth``. ``world_size > 1`` trains with DDP.

**Evaluation** (:func:`evaluate`, :mod:`.metrics`): one confusion matrix over all pixels of the
dataset; ``IoU_c = TP / (TP + FP + FN)``; a class absent from both the predictions and the
labels has no IoU (NaN) and is left out of the mean; mIoU includes the background unless
``include_background=False``.
"""

from ...datasets.celebamask import (
    ANNO_DIR,
    G_MASK_PARTS,
    IMAGE_SIZE,
    PARTS,
    merge_part_masks,
    part_mask_path,
    read_label_map,
    read_part_masks,
    write_label_maps,
)
from .data import (
    CLASSES,
    CROP_SIZE,
    FLIP_PAIRS,
    IGNORE_LABEL,
    JITTER,
    MEAN,
    N_CLASSES,
    SCALES,
    STD,
    CelebAMaskHQ,
    to_tensor,
)
from .loop import learning_rate, train
from .loss import OhemCELoss
from .metrics import confusion_matrix, evaluate, iou_from_confusion
from .model import (
    TrainingHeads,
    build_model,
    export_weights,
    forward_heads,
    load_model,
    param_groups,
)

__all__ = [
    "ANNO_DIR",
    "CLASSES",
    "CROP_SIZE",
    "FLIP_PAIRS",
    "G_MASK_PARTS",
    "IGNORE_LABEL",
    "IMAGE_SIZE",
    "JITTER",
    "MEAN",
    "N_CLASSES",
    "PARTS",
    "SCALES",
    "STD",
    "CelebAMaskHQ",
    "OhemCELoss",
    "TrainingHeads",
    "build_model",
    "confusion_matrix",
    "evaluate",
    "export_weights",
    "forward_heads",
    "iou_from_confusion",
    "learning_rate",
    "load_model",
    "merge_part_masks",
    "param_groups",
    "part_mask_path",
    "read_label_map",
    "read_part_masks",
    "to_tensor",
    "train",
    "write_label_maps",
]
