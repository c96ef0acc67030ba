"""Export RetinaFace, BiSeNet face parsing, trained classifiers (and any registered kind of model)
to ONNX, and ONNX to TensorRT.

>>> from faceetl import export
>>> export.onnx("retinaface", "retinaface.onnx", network="mobilenet0.25")
>>> export.onnx("parsing", "parsing.onnx")                       # the registered 79999_iter.pth
>>> export.onnx("runs/fairface", "fairface.onnx", size=224)      # a classifier checkpoint
>>> export.tensorrt("retinaface.onnx", "retinaface.engine", fp16=True)   # CUDA + TensorRT only

What each graph takes and gives (input ``"input"``, float32, NCHW):

- ``retinaface``: BGR pixels minus the training mean (104, 117, 123), dynamic batch, height and
  width (any size; the detector pads nothing when an image runs alone). Outputs ``loc`` (B, P, 4)
  box deltas, ``conf`` (B, P, 2) softmaxed (background, face) and ``landmarks`` (B, P, 10)
  deltas, over the priors of :func:`faceetl.nets.retinaface_priors.priors_for` (decode with
  ``decode_boxes`` / ``decode_landmarks``, variances 0.1 / 0.2).
- ``parsing``: 512x512 RGB in [0, 1] normalised with the ImageNet mean and std (as
  :func:`faceetl.predictors.parsing.preprocess`), dynamic batch; output ``logits`` (B, 19, 512,
  512) of the main head (label = argmax over axis 1).
- ``classifier`` (:class:`faceetl.nets.classifier.MultiHeadClassifier`): RGB in [0, 1] (the model
  normalises inside), dynamic batch, height and width; one output of logits per head, named by
  its label column, in ``model.label_columns`` order. The vocabularies are in the file's
  metadata (``faceetl.classes``, JSON).

Every export is checked against torch with onnxruntime (CPU) on real inputs, preprocessed as the
model's own code does (pass ``images=``; otherwise a deterministic synthetic image): the largest
error of each output relative to that output's largest magnitude must stay below ``tolerance``
(1e-3). The measured errors are stored in the file's metadata (``faceetl.check_max_rel_error``)
and :func:`check_onnx` measures them again. Graphs are made with torch's ``torch.export``-based
exporter (``dynamo=True``, torch's default since 2.9, opset 18); the legacy TorchScript exporter
(``dynamo=False``) gives the same graphs and is used as a fallback when the dynamo export fails.

What is needed for TensorRT: an NVIDIA GPU with a CUDA build of torch that sees it
(``torch.cuda.is_available()``) and the TensorRT Python package (``pip install tensorrt``, 10.x,
matching the machine's CUDA major version; it brings its own ONNX parser). :func:`tensorrt`
parses the ONNX file, builds a serialized engine (fp16 where the GPU has fast fp16) with one
optimisation profile (min / opt / max shapes of the dynamic dimensions: RetinaFace 1x32x32 /
1x640x640 / 4x2048x2048, parsing batch 1 / 8 / 32, classifier batch 1 / 32 / 256 at its input
size; ``profiles=`` overrides them), checks the engine's outputs against torch on CUDA (fp16:
relative error < 2e-2) and writes the measured errors beside the engine (``<engine>.json``).
Engines are specific to the GPU model and TensorRT version that built them. Without a GPU or
without TensorRT it raises :class:`ExportError` saying which is missing; the ONNX file itself
runs anywhere with onnxruntime.

Each kind is a registration (:func:`register_exportable`, one module per kind: :mod:`.retinaface`,
:mod:`.parsing`, :mod:`.classifier`): how its graph is built from a name, a checkpoint or a
module, its outputs and dynamic axes, how check inputs are made from RGB images, its metadata
and its TensorRT shapes. The model-free machinery is :mod:`faceetl.onnx_graph`.
"""

from __future__ import annotations

from ..onnx_graph import DEFAULT_OPSET, TOLERANCE, ExportError, read_metadata
from ..onnx_graph import session as onnx_session
from .exporter import check_onnx, onnx
from .registry import Exportable, Loaded, exportable, kinds, register_exportable
from .trt import FP16_TOLERANCE, tensorrt

__all__ = [
    "DEFAULT_OPSET",
    "FP16_TOLERANCE",
    "TOLERANCE",
    "ExportError",
    "Exportable",
    "Loaded",
    "check_onnx",
    "exportable",
    "kinds",
    "onnx",
    "onnx_session",
    "read_metadata",
    "register_exportable",
    "tensorrt",
]
