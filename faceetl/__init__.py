"""faceetl: folders of photos to training-ready face data on Dask."""

__version__ = "0.1.0"
