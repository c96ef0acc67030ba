"""Training on the face DataFrame and the detection / parsing data sets.

``faceetl.train.classifier.train(train, val, label_columns=[...])`` fine-tunes a multi-head
classifier on extracted crops and returns ``(model, metrics)``; ``load_classifier`` reloads a
checkpoint and ``predict`` runs a model over a :class:`faceetl.datasets.FaceDataset` (calling
``faceetl.train.classifier(...)`` itself still works, deprecated). ``faceetl.train.parsing``
trains BiSeNet face parsing on the CelebAMask-HQ layout; ``faceetl.train.retinaface`` trains
RetinaFace on WIDER-layout annotations. All three are one shape (:mod:`.recipe`: a frozen run
config, a shared per-process loop) on :mod:`.common`: checkpoints and resuming, seeded loaders,
mixed precision and DDP (``world_size=``).
"""

from . import classifier, common, parsing, recipe, retinaface
from .classifier import (
    BACKBONES,
    MultiHeadClassifier,
    ResNet18,
    SmallCNN,
    evaluate,
    load_classifier,
    make_backbone,
    predict,
)

__all__ = [
    "classifier",
    "common",
    "parsing",
    "recipe",
    "retinaface",
    "BACKBONES",
    "MultiHeadClassifier",
    "ResNet18",
    "SmallCNN",
    "evaluate",
    "load_classifier",
    "make_backbone",
    "predict",
]
