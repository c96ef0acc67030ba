"""The Dask layer, model-agnostic: read paths and extract faces (:mod:`.extract`), add
predictions (:mod:`.predict`), start a cluster (:mod:`.cluster`)."""
