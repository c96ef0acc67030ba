"""One extraction run's settings: made and checked once on the driver, sent with every
partition task, tokenized by value."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import config
from ..align import AlignSpec
from ..backends.base import REGISTRY
from ..backends.params import canonical_params
from ..images import crop_extension
from ..predictors.base import REGISTRY as PREDICTORS

DEFAULT_BATCH_SIZE = 16

#: (model, params, plugin) of a predictor run in the extraction pass
Predictor = tuple[str, dict[str, Any], Any]


@dataclass(frozen=True)
class Job:
    """What every partition of a run does: the backend and its parameters, the alignment, the
    crops (format, where they go and the folder their layout mirrors), storage options, the
    predictors run in the same pass, the pixel limit, and faceetl's settings captured on the
    driver (weights mirror, offline, pixel limit), which apply on the workers whatever their
    environment says.

    Make it with :meth:`make`, which checks everything on the driver (an unknown backend,
    parameter, crop format or predictor fails where it is written, before any worker starts).
    ``plugin``: the registry entry of a backend registered outside faceetl, so that worker
    processes know it. Models are named, never carried: they load once per worker.
    """

    backend: str
    backend_params: dict[str, Any] = field(default_factory=dict)
    spec: AlignSpec = field(default_factory=AlignSpec)
    batch_size: int = DEFAULT_BATCH_SIZE
    crop_format: str = "png"
    crop_dir: str | None = None
    crop_root: str | None = None
    keep_crops: bool = True
    storage_options: dict[str, Any] | None = None
    predictors: tuple[Predictor, ...] = ()
    max_pixels: int | None = None
    plugin: Any = None
    settings: config.Settings | None = None

    @classmethod
    def make(
        cls,
        backend: str,
        backend_params: dict[str, Any] | None = None,
        *,
        predict: Any = (),
        **options: Any,
    ) -> Job:
        """A checked job; ``options`` are the other fields (paths may be ``os.PathLike``),
        ``predict`` the predictors as :func:`faceetl.extract_faces` takes them."""
        params = dict(backend_params or {})
        REGISTRY.check(backend, params)  # unknown names fail here, not on the workers
        # old names warned at the user's line just now: the workers get the new ones
        params = canonical_params(REGISTRY.spec(backend).factory, params, warn=False)
        crop_extension(options.get("crop_format", "png"))  # an unknown format fails here
        for key in ("crop_dir", "crop_root"):
            if options.get(key) is not None:
                options[key] = os.fspath(options[key])
        options.setdefault("plugin", REGISTRY.plugin(backend))
        options.setdefault("settings", config.capture())
        return cls(backend, params, predictors=predictor_list(predict), **options)

    def replace(self, **changes: Any) -> Job:
        """This job with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def makes_crops(self) -> bool:
        """Whether anybody keeps the crops (in the frame or as files)."""
        return self.keep_crops or self.crop_dir is not None

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        """By value: two equal jobs give the same task keys (the plugin by its own token)."""
        from dask.base import tokenize

        plain = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("plugin", "predictors", "settings")
        }
        return (
            "faceetl-job",
            json.dumps(plain, sort_keys=True, default=repr),
            tokenize(self.plugin),
            tokenize([(m, json.dumps(p, sort_keys=True, default=repr), pl)
                      for m, p, pl in self.predictors]),  # fmt: skip
            repr(self.settings),
        )


def predictor_list(predict: Any) -> tuple[Predictor, ...]:
    """(model, params, plugin) of each predictor asked for (model names, ``(name, params)``
    pairs or ``{name: params}``), checked here, not on the workers."""
    if isinstance(predict, str):
        predict = [predict]
    items: Sequence[Any] = list(predict.items()) if isinstance(predict, dict) else list(predict)
    out = []
    for item in items:
        model, params = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
        PREDICTORS.check(model, params)
        out.append((model, params, PREDICTORS.plugin(model)))
    return tuple(out)
