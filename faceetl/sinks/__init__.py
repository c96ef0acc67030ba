"""Training sets where trainers read them, written by the workers: WebDataset shards
(:func:`write_webdataset`), Hugging Face parquet (:func:`write_huggingface`) and torchvision's
ImageFolder layout (:func:`write_imagefolder`), each finished by its ``index.json``."""

from .base import Export, SplitFiles
from .huggingface import load_huggingface, write_huggingface
from .imagefolder import write_imagefolder
from .plan import Split, folder_name, sample_key
from .webdataset import write_webdataset

__all__ = [
    "Export",
    "Split",
    "SplitFiles",
    "folder_name",
    "load_huggingface",
    "sample_key",
    "write_huggingface",
    "write_imagefolder",
    "write_webdataset",
]
