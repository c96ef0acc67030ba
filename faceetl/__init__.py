"""faceetl: folders of photos to training-ready face data on Dask.

>>> import faceetl
>>> faces = faceetl.extract_faces(faceetl.read_images("photos/**/*.jpg"), backend="retinaface")
>>> faceetl.write_faces(faces, "faces")   # computed once, one part per partition
"""

from .align import AlignSpec, align_face, arcface_template, dlib_template
from .backends.base import (
    BaseDetector,
    Detections,
    Detector,
    get_backend,
    list_backends,
    register_backend,
)
from .compare import compare, verify
from .images import ImageError, decode_png, load_image
from .pife import Pife
from .pipeline.cluster import cluster
from .pipeline.extract import compute, extract_faces, read_images
from .pipeline.lock import ConcurrentRunError
from .pipeline.manifest import SettingsError
from .pipeline.predict import predict
from .pipeline.write import write_faces
from .predictors.base import list_predictors, register_predictor
from .schema import SCHEMA, boxes_array, landmarks_array, read_faces
from .weights import WeightsError, fetch, register_weights

__version__ = "0.1.0"

_LAZY = {
    "FaceDataset": "datasets.faces",
    "stratified_split": "datasets.split",
    "read_fairface": "datasets.fairface",
    "datasets": "datasets",
    "train": "train",
    "eval": "eval",
    "show": "drawing",
    "curate": "curate",
    "duplicates": "curate.duplicates",
    "identities": "curate.identities",
    "search": "curate.identities",
    "FaceIndex": "curate.identities",
    "write_webdataset": "sinks",
    "write_huggingface": "sinks",
    "load_huggingface": "sinks",
    "write_imagefolder": "sinks",
}


def __getattr__(name: str):
    """Torch-heavy parts (datasets, training) and drawing load on first use."""
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(f".{_LAZY[name]}", __name__)
        return mod if name == _LAZY[name] else getattr(mod, name)
    raise AttributeError(f"module 'faceetl' has no attribute {name!r}")


__all__ = [
    "SCHEMA",
    "FaceDataset",
    "FaceIndex",
    "AlignSpec",
    "ConcurrentRunError",
    "SettingsError",
    "BaseDetector",
    "Detections",
    "Detector",
    "ImageError",
    "Pife",
    "WeightsError",
    "align_face",
    "arcface_template",
    "boxes_array",
    "cluster",
    "compare",
    "compute",
    "curate",
    "decode_png",
    "dlib_template",
    "duplicates",
    "extract_faces",
    "fetch",
    "get_backend",
    "identities",
    "landmarks_array",
    "list_backends",
    "list_predictors",
    "load_image",
    "predict",
    "read_fairface",
    "read_faces",
    "write_faces",
    "write_webdataset",
    "write_huggingface",
    "load_huggingface",
    "write_imagefolder",
    "read_images",
    "register_backend",
    "register_predictor",
    "search",
    "stratified_split",
    "train",
    "register_weights",
    "show",
    "verify",
]
