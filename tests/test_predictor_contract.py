"""The predictor contract, checked on every registered predictor (``list_predictors()``).

A predictor declares its columns (name -> dtype) and its crop (``align``) without loading a
model; ``predict_batch`` gives one value of the declared dtype per crop for every column (none
for no crop) and refuses crops of another size or kind; a crop's values do not depend on its
batch; ``provenance()`` is JSON with the sha256 of the weight file loaded; through
``faceetl.predict`` (Dask) the columns come out with the declared dtypes, empty where there is no
face. Predictors whose released weights are not in ../shared run on random state dicts saved in
the released key layout (tests/predictor_weights.py) in a FACEETL_HOME of their own. A predictor
that says ``uses_rows`` gets its crops' face rows too (``predict_batch(crops, rows=...)``); one
without weights (quality) records none.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import torch

import faceetl.weights as fw
from faceetl import extract_faces, predict
from faceetl.align import AlignSpec, align_face
from faceetl.nets.bisenet import WEIGHTS_FILE as BISENET_FILE
from faceetl.nets.bisenet import WEIGHTS_NAME as BISENET_NAME
from faceetl.nets.inception_resnet_v1 import FACENET_WEIGHTS
from faceetl.predictors.base import (
    REGISTRY,
    Predictor,
    get_predictor,
    list_predictors,
    output_columns,
    predictor_spec,
    uses_rows,
)
from faceetl.predictors.embedding import dlib_model_path
from faceetl.predictors.fairface import release_for
from faceetl.weights import sha256sum
from helpers import IMAGES, load_rgb
from predictor_weights import bisenet_state_dict, facenet_state_dict, fairface_state_dict

PHOTOS = [IMAGES / "single" / "fr_obama_small.jpg", IMAGES / "group" / "fr_two_people.jpg"]

Setup = Callable[[Path, pytest.MonkeyPatch], tuple[dict[str, Any], dict[str, str]]]


def _pinned(monkeypatch: pytest.MonkeyPatch, name: str, path: Path) -> dict[str, str]:
    """Register ``path``'s hash for release ``name`` (for this test): fetched and verified."""
    sha = sha256sum(path)
    monkeypatch.setitem(fw._WEIGHTS, name, dataclasses.replace(fw.weights_info(name), sha256=sha))
    return {path.name: sha}


def _parsing(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    torch.save(bisenet_state_dict(0), home / BISENET_FILE)
    return {"device": "cpu"}, _pinned(monkeypatch, BISENET_NAME, home / BISENET_FILE)


def _fairface(races: int) -> Setup:
    def setup(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
        path = home / release_for(races).filename  # not pinned: found in FACEETL_HOME, hashed
        torch.save(fairface_state_dict(races), path)
        return {"races": races, "device": "cpu"}, {path.name: sha256sum(path)}

    return setup


def _dlib(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    path = dlib_model_path()  # packaged with face_recognition_models
    return {"network": "dlib"}, {path.name: sha256sum(path)}


def _facenet(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    path = home / fw.weights_info(FACENET_WEIGHTS).filename
    torch.save(facenet_state_dict(0), path)
    return {"network": "facenet", "device": "cpu"}, _pinned(monkeypatch, FACENET_WEIGHTS, path)


def _no_weights(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    return {}, {}


#: how each predictor is given weights here, per variant of its parameters
SETUPS: dict[str, dict[str, Setup]] = {
    "embedding": {"dlib": _dlib, "facenet": _facenet},
    "fairface": {"races7": _fairface(7), "races4": _fairface(4)},
    "parsing": {"default": _parsing},
    "quality": {"default": _no_weights},
}
#: predictors whose columns are named by what they measure (``yaw``, ``blur``), not
#: ``<model>_...`` (their provenance column is still ``<model>_provenance``)
UNPREFIXED = {"quality"}


def faceetl_predictors() -> list[str]:
    """The registered predictors faceetl ships (not those other tests register)."""
    return [
        n for n in list_predictors() if predictor_spec(n).factory.__module__.startswith("faceetl.")
    ]


CASES = [(n, v) for n in faceetl_predictors() for v in SETUPS.get(n, {"(none)": None})]


@dataclasses.dataclass
class Case:
    name: str
    params: dict[str, Any]
    weights: dict[str, str]  # the weight files the predictor must record: name -> sha256


@pytest.fixture(params=CASES, ids=[f"{n}-{v}" for n, v in CASES])
def case(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A predictor name with parameters that load, in a FACEETL_HOME of its own."""
    name, variant = request.param
    setup = SETUPS.get(name, {}).get(variant)
    if setup is None:
        pytest.fail(f"predictor {name!r} has no contract setup: add one to SETUPS in {__file__}")
    monkeypatch.setenv("FACEETL_HOME", str(tmp_path))
    REGISTRY.clear()  # no predictor loaded from another home
    params, weights = setup(tmp_path, monkeypatch)
    yield Case(name, params, weights)
    REGISTRY.clear()


@pytest.fixture(scope="module")
def faces() -> pd.DataFrame:
    """Three dlib faces of two photos plus a row without a face (an unreadable path)."""
    paths = [str(p) for p in PHOTOS] + [str(IMAGES / "does_not_exist.jpg")]
    with dask.config.set(scheduler="sync"):
        df = extract_faces(paths, backend="dlib").compute()
    assert (df["status"] == "ok").sum() == 3 and (df["status"] != "ok").sum() == 1
    return df.reset_index(drop=True)


def crops_for(faces: pd.DataFrame, spec: AlignSpec | None) -> list[np.ndarray]:
    """The predictor's crops of the three faces (its alignment, or the stored crops)."""
    out = []
    for _, row in faces[faces["status"] == "ok"].iterrows():
        if spec is None:
            from faceetl.images import decode_png

            out.append(decode_png(bytes(row["crop"])))
            continue
        lm = np.asarray(row["landmarks"], np.float64).reshape(5, 2)
        box = row[["x1", "y1", "x2", "y2"]].to_numpy(float)
        out.append(align_face(load_rgb(row["path"]), lm, box, spec, shape=row["shape"])[0])
    return out


def rows_of(p: Predictor, faces: pd.DataFrame, n: int | None = None) -> dict[str, Any]:
    """``rows=`` (the first ``n`` face rows) for a predictor that takes its crops' rows."""
    ok = faces[faces["status"] == "ok"]
    return {"rows": ok.iloc[:n]} if uses_rows(p) else {}


def same_dtype(values: pd.Series, dtype: Any) -> bool:
    return str(values.dtype) == str(pd.Series([], dtype=dtype).dtype)


def model_columns(case: Case) -> dict[str, Any]:
    cols = output_columns(case.name, **case.params)
    return {c: d for c, d in cols.items() if c != f"{case.name}_provenance"}


# ---------------------------------------------------------------------------------------------


def test_columns_and_crop_are_declared_without_loading(case: Case) -> None:
    cols = output_columns(case.name, **case.params)
    assert list(cols)[-1] == f"{case.name}_provenance"
    assert same_dtype(pd.Series([], dtype=cols[f"{case.name}_provenance"]), "string[pyarrow]")
    assert len(cols) >= 2
    if case.name not in UNPREFIXED:
        assert all(c.startswith(f"{case.name}_") for c in cols)
    for dtype in cols.values():
        pd.Series([], dtype=dtype)  # a dtype pandas knows
    factory = predictor_spec(case.name).factory
    assert factory.align is None or isinstance(factory.align, AlignSpec)
    assert REGISTRY.loaded() == []  # nothing was loaded to answer


def test_predict_batch_gives_the_declared_columns(case: Case, faces: pd.DataFrame) -> None:
    p = get_predictor(case.name, **case.params)
    assert isinstance(p, Predictor) and p.name == case.name
    cols = model_columns(case)
    crops = crops_for(faces, p.align)
    assert len(crops) == 3
    empty = p.predict_batch([], **rows_of(p, faces, 0))
    assert set(empty) == set(cols) and all(len(v) == 0 for v in empty.values())
    one = p.predict_batch(crops[:1], **rows_of(p, faces, 1))
    many = p.predict_batch(crops, **rows_of(p, faces))
    for out, n in ((one, 1), (many, 3)):
        assert set(out) == set(cols)
        for c, dtype in cols.items():
            assert len(out[c]) == n, c
            s = pd.Series(out[c], dtype=dtype)
            assert same_dtype(s, dtype) and s.notna().all(), c
    # a crop's values do not depend on its batch (eval mode)
    for c in cols:
        a, b = one[c][0], many[c][0]
        if isinstance(a, (bytes, bytearray)):
            continue  # encoded masks: compared through their (float) summaries
        if isinstance(a, str):
            assert a == b, c
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, err_msg=c)


def test_wrong_crops_are_refused(case: Case) -> None:
    p = get_predictor(case.name, **case.params)
    s = p.align.size if p.align is not None else 64
    bad = {
        "float": np.zeros((s, s, 3), np.float32),
        "gray": np.zeros((s, s), np.uint8),
        "rgba": np.zeros((s, s, 4), np.uint8),
    }
    if p.align is not None:
        bad["size"] = np.zeros((s + 8, s + 8, 3), np.uint8)
        bad["not square"] = np.zeros((s, s + 8, 3), np.uint8)
    good = np.zeros((s, s, 3), np.uint8)
    for what, crop in bad.items():
        with pytest.raises(ValueError, match="RGB uint8 crops of") as e:
            p.predict_batch([good, crop])
        if p.align is not None:
            assert f"{s}x{s}x3" in str(e.value), what


def test_provenance_is_json_with_the_weights_sha256(case: Case) -> None:
    p = get_predictor(case.name, **case.params)
    prov = p.provenance()
    assert json.loads(json.dumps(prov)) == prov  # JSON as it is: no default= needed
    assert prov["weights"] == case.weights
    assert all(len(sha) == 64 and int(sha, 16) >= 0 for sha in prov["weights"].values())


def test_through_the_dask_pipeline(case: Case, faces: pd.DataFrame) -> None:
    cols = output_columns(case.name, **case.params)
    with dask.config.set(scheduler="sync"):
        lazy = predict(dd.from_pandas(faces, npartitions=2), model=case.name, **case.params)
        for c, dtype in cols.items():
            assert same_dtype(lazy._meta[c], dtype), c
        df = lazy.compute()
    assert list(df.columns) == [*faces.columns, *cols]
    for c, dtype in cols.items():
        assert same_dtype(df[c], dtype), c
    ok = (df["status"] == "ok").to_numpy()
    assert df.loc[ok, list(cols)].notna().all().all()
    assert df.loc[~ok, list(cols)].isna().all().all()
    prov = json.loads(json.dumps(get_predictor(case.name, **case.params).provenance()))
    for s in df.loc[ok, f"{case.name}_provenance"]:
        assert json.loads(s) == prov
    # the pipeline's values are predict_batch's on the predictor's own crops
    p = get_predictor(case.name, **case.params)
    direct = p.predict_batch(crops_for(faces, p.align), **rows_of(p, faces))
    for c in cols:
        if c == f"{case.name}_provenance":
            continue
        got = df.loc[ok, c].tolist()
        for g, d in zip(got, direct[c], strict=True):
            if isinstance(d, str):
                assert g == d, c
            elif isinstance(d, (bytes, bytearray)):
                assert isinstance(g, bytes) and len(g) > 0, c
            else:
                np.testing.assert_allclose(np.asarray(g), np.asarray(d), atol=1e-4, err_msg=c)


def test_every_predictor_has_a_contract_setup() -> None:
    assert {"embedding", "fairface", "parsing", "quality"} <= set(faceetl_predictors())
    assert set(faceetl_predictors()) <= set(SETUPS)
