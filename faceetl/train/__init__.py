"""Training on the face DataFrame: multi-head classifiers fine-tuned on extracted crops.

``faceetl.train.classifier(train, val, label_columns=[...])`` trains and returns
``(model, metrics)``; ``load_classifier`` reloads a checkpoint and ``predict`` runs a model over a
:class:`faceetl.data.FaceDataset`. ``faceetl.train.parsing`` trains BiSeNet face parsing on the
CelebAMask-HQ layout; ``faceetl.train.retinaface`` trains RetinaFace on WIDER-layout annotations.
"""

from . import parsing, retinaface
from .classifier import (
    BACKBONES,
    MultiHeadClassifier,
    ResNet18,
    SmallCNN,
    classifier,
    evaluate,
    load_classifier,
    make_backbone,
    predict,
)

__all__ = [
    "parsing",
    "retinaface",
    "BACKBONES",
    "MultiHeadClassifier",
    "ResNet18",
    "SmallCNN",
    "classifier",
    "evaluate",
    "load_classifier",
    "make_backbone",
    "predict",
]
