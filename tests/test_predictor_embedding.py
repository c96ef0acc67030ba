"""Embedding predictor: dlib identity descriptors on real photos, the FaceNet loader, the Dask path.

dlib numbers measured here (dlib 20.0.1, 5-point dlib chips from the dlib backend's landmarks):
the same face under a mirror flip, a re-crop, darkening (x0.6) or brightening (+50) moves at most
0.18 (Euclidean); the same person in two different photos (obama_small / two_people, img5 /
couple) 0.33-0.34; different people 0.64-1.05, EXCEPT facexlib_test vs takeo (two grey-scale
photos of East-Asian men with glasses): 0.53, a false match at dlib's 0.6 threshold, left out of
the "different people" assertions below and reported.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import faceetl.weights as fw
from faceetl import extract_faces, predict
from faceetl.align import align_face
from faceetl.backends.base import get_backend
from faceetl.nets.inception_resnet_v1 import FACENET_WEIGHTS
from faceetl.predictors.base import get_predictor, output_columns
from faceetl.predictors.embedding import (
    DLIB_ALIGN,
    FACENET_ALIGN,
    EmbeddingPredictor,
    dlib_model_path,
)
from faceetl.weights import WeightsError, sha256sum, weights_info
from helpers import IMAGES
from predictor_weights import facenet_state_dict

SAME_PERSON = 0.6  # dlib's own decision threshold (Euclidean distance of raw descriptors)
SINGLES = {
    "obama": IMAGES / "single" / "fr_obama_small.jpg",
    "img5": IMAGES / "single" / "deepface_img5.jpg",
    "facexlib": IMAGES / "single" / "facexlib_test.jpg",
    "takeo": IMAGES / "landmarks" / "takeo.ppm",
}
FALSE_MATCH = {frozenset({"facexlib", "takeo"})}  # measured 0.53: dlib confuses these two


def _load(path: Path, max_side: int = 700) -> np.ndarray:
    """RGB image, downscaled so dlib's upsampling HOG detector stays fast."""
    img = Image.open(path).convert("RGB")
    s = max_side / max(img.size)
    if s < 1:
        img = img.resize((round(img.width * s), round(img.height * s)), Image.LANCZOS)
    return np.asarray(img)


@pytest.fixture(scope="module")
def dlib_emb() -> EmbeddingPredictor:
    return get_predictor("embedding")


@pytest.fixture(scope="module")
def embed_faces(dlib_emb):
    """image -> (embeddings of every face found, boxes), left to right."""
    det = get_backend("dlib")

    def run(img: np.ndarray, spec=DLIB_ALIGN) -> tuple[np.ndarray, np.ndarray]:
        d = det.detect_batch([np.ascontiguousarray(img)])[0]
        order = np.argsort(d.boxes[:, 0])
        crops = [align_face(img, d.landmarks[i], d.boxes[i], spec)[0] for i in order]
        return dlib_emb.embed(crops), d.boxes[order]

    return run


@pytest.fixture(scope="module")
def identities(embed_faces):
    """name -> descriptor of the 4 single-face photos and the 4 faces of the two 2-face photos."""
    out = {}
    for name, path in SINGLES.items():
        v, _ = embed_faces(_load(path))
        assert len(v) == 1, name
        out[name] = v[0]
    v, _ = embed_faces(_load(IMAGES / "group" / "deepface_couple.jpg"))
    assert len(v) == 2
    out["couple_left"], out["couple_right"] = v  # left: the person of img5
    v, _ = embed_faces(_load(IMAGES / "group" / "fr_two_people.jpg"))
    assert len(v) == 2
    out["two_left"], out["two_right"] = v  # left: Obama
    return out


def test_dlib_descriptor_shape_and_provenance(dlib_emb, identities) -> None:
    v = identities["obama"]
    assert v.shape == (128,) and v.dtype == np.float32
    assert 0.5 < np.linalg.norm(v) < 3  # raw: not normalised (measured 1.3-1.6)
    prov = dlib_emb.provenance()
    path = dlib_model_path()
    assert prov["weights"] == {path.name: sha256sum(path)}
    assert prov["network"] == "dlib" and prov["l2_normalized"] is False
    assert prov["align"] == {"template": "dlib", "size": 150, "padding": 0.25}
    assert dlib_emb.align == DLIB_ALIGN


@pytest.mark.slow
def test_same_face_under_flip_crop_and_brightness(embed_faces, identities) -> None:
    for name, path in SINGLES.items():
        img = _load(path)
        base = identities[name]
        h, w = img.shape[:2]
        _, (box,) = embed_faces(img)
        bw, bh = box[2] - box[0], box[3] - box[1]
        x1, y1 = int(max(0, box[0] - 0.8 * bw)), int(max(0, box[1] - 0.8 * bh))
        x2, y2 = int(min(w, box[2] + 0.8 * bw)), int(min(h, box[3] + 0.8 * bh))
        variants = {
            "flip": img[:, ::-1],
            "crop": img[y1:y2, x1:x2],
            "dark": (img * 0.6).astype(np.uint8),
            "bright": np.clip(img.astype(np.int16) + 50, 0, 255).astype(np.uint8),
        }
        for what, im in variants.items():
            v, _ = embed_faces(im)
            assert len(v) == 1, (name, what)
            d = float(np.linalg.norm(v[0] - base))
            assert d < SAME_PERSON, (name, what, d)
            assert d < 0.3, (name, what, d)  # measured <= 0.18


def test_same_person_across_photos_and_different_people(identities) -> None:
    def dist(a: str, b: str) -> float:
        return float(np.linalg.norm(identities[a] - identities[b]))

    assert dist("obama", "two_left") < SAME_PERSON  # measured 0.33
    assert dist("img5", "couple_left") < SAME_PERSON  # measured 0.34
    same = [{"obama", "two_left"}, {"img5", "couple_left"}]
    names = list(identities)
    n_pairs = 0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = {a, b}
            if pair in same or frozenset(pair) in FALSE_MATCH:
                continue
            assert dist(a, b) > SAME_PERSON, (a, b, dist(a, b))
            n_pairs += 1
    assert n_pairs == 8 * 7 // 2 - 3
    assert dist("couple_left", "couple_right") > SAME_PERSON  # the two faces of one photo
    assert dist("two_left", "two_right") > SAME_PERSON


def test_five_point_chip_matches_dlib_own_alignment(dlib_emb) -> None:
    """faceetl's 5-point dlib chip gives nearly dlib's own descriptor (68-point get_face_chip)."""
    import dlib

    det = get_backend("dlib")
    for path in SINGLES.values():
        img = _load(path)
        d = det.detect_batch([img])[0]
        x1, y1, x2, y2 = (int(round(c)) for c in d.boxes[0])
        pts = [dlib.point(int(round(x)), int(round(y))) for x, y in d.extra["landmarks68"][0]]
        shape = dlib.full_object_detection(dlib.rectangle(x1, y1, x2 - 1, y2 - 1), pts)
        ref = np.asarray(dlib_emb._model.compute_face_descriptor(img, shape), np.float32)
        ours = dlib_emb.embed([align_face(img, d.landmarks[0], d.boxes[0], DLIB_ALIGN)[0]])[0]
        assert np.linalg.norm(ours - ref) < 0.25, path.name  # measured 0.06-0.14


def test_bad_input_and_params(dlib_emb) -> None:
    with pytest.raises(ValueError, match="150x150"):
        dlib_emb.embed([np.zeros((112, 112, 3), np.uint8)])
    assert dlib_emb.embed([]).shape == (0, 128)
    with pytest.raises(ValueError, match="unknown embedding network"):
        EmbeddingPredictor(network="arcface")
    with pytest.raises(ValueError, match="unknown embedding network"):
        output_columns("embedding", network="vgg")
    cols = output_columns("embedding", network="facenet")
    assert list(cols) == [
        "embedding_vector",
        "embedding_vector_normalized",
        "embedding_network",
        "embedding_provenance",
    ]


# -- FaceNet: the real release file is not obtainable offline; its layout is


@pytest.fixture(scope="module")
def layout() -> dict[str, torch.Tensor]:
    """Random tensors in the key layout and shapes of 20180402-114759-vggface2.pt."""
    return facenet_state_dict(0)


def test_released_layout_is_facenet_pytorch(layout) -> None:
    """Names and shapes written from facenet-pytorch's inception_resnet_v1.py, not from our model."""
    sd = layout
    expect = {
        "conv2d_1a.conv.weight": (32, 3, 3, 3),
        "conv2d_4b.bn.running_mean": (256,),
        "repeat_1.4.branch2.2.conv.weight": (32, 32, 3, 3),
        "repeat_1.0.conv2d.bias": (256,),
        "mixed_6a.branch1.2.conv.weight": (256, 192, 3, 3),
        "repeat_2.9.branch1.2.conv.weight": (128, 128, 7, 1),
        "mixed_7a.branch2.2.conv.weight": (256, 256, 3, 3),
        "repeat_3.4.branch1.1.conv.weight": (192, 192, 1, 3),
        "block8.conv2d.weight": (1792, 384, 1, 1),
        "last_linear.weight": (512, 1792),
        "last_bn.running_var": (512,),
        "logits.weight": (8631, 512),
        "logits.bias": (8631,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "last_linear.bias" not in sd
    # 27.94 M float32 values = 111.76 MB, as the 111,898,327-byte release file (plus pickle)
    assert sum(v.numel() for v in sd.values()) == 27_940_039
    assert len(sd) == 716


@pytest.fixture(scope="module")
def layout_file(layout, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("facenet") / "random_vggface2_layout.pt"
    torch.save(layout, path)
    return path


@pytest.fixture
def facenet_file(faceetl_home, layout, layout_file):
    """The random state dict put in FACEETL_HOME under the release's file name."""
    path = faceetl_home / weights_info(FACENET_WEIGHTS).filename
    shutil.copyfile(layout_file, path)
    yield path, layout
    path.unlink(missing_ok=True)


def test_facenet_missing_offline_names_the_file(faceetl_home) -> None:
    assert not (faceetl_home / "20180402-114759-vggface2.pt").exists()
    with pytest.raises(WeightsError, match="20180402-114759-vggface2.pt"):
        EmbeddingPredictor(network="facenet")


def test_facenet_loads_released_layout(facenet_file, monkeypatch) -> None:
    path, sd = facenet_file
    # the registry pins the official file's hash: a different file is refused ...
    with pytest.raises(WeightsError, match="refusing"):
        EmbeddingPredictor(network="facenet")
    # ... and loads through the normal fetch path once the registry names its hash
    info, sha = weights_info(FACENET_WEIGHTS), sha256sum(path)
    monkeypatch.setitem(fw._WEIGHTS, FACENET_WEIGHTS, dataclasses.replace(info, sha256=sha))
    p = EmbeddingPredictor(network="facenet", device="cpu")
    own = p._model.state_dict()
    assert own.keys() == sd.keys()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert p.align == FACENET_ALIGN and p.align.size == 160
    assert p.provenance()["weights"] == {path.name: sha}
    assert p.provenance()["l2_normalized"] is True

    face = np.asarray(
        Image.open(IMAGES / "aligned" / "facenet_kate_siegel_aligned.png").convert("RGB")
    )
    rng = np.random.default_rng(0)
    crops = [face, face[:, ::-1].copy(), rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)]
    out = p.predict_batch(crops)
    v = np.stack(out["embedding_vector"])
    assert v.shape == (3, 512) and v.dtype == np.float32 and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert out["embedding_network"] == ["facenet"] * 3
    # eval mode: a crop's vector does not depend on its batch
    np.testing.assert_allclose(p.embed([crops[2]])[0], v[2], atol=1e-5)
    with pytest.raises(ValueError, match="160x160"):
        p.embed([np.zeros((150, 150, 3), np.uint8)])

    t = time.perf_counter()
    p.embed([face] * 4)
    print(f"facenet CPU: {4 / (time.perf_counter() - t):.1f} embeddings/s (batch 4)")


def test_facenet_features_only_file_and_wrong_dicts(tmp_path, layout) -> None:
    sd = layout
    feats = {k: v for k, v in sd.items() if not k.startswith("logits.")}
    torch.save(feats, tmp_path / "features.pt")  # facenet-pytorch's older split download
    p = EmbeddingPredictor(network="facenet", device="cpu", weights=str(tmp_path / "features.pt"))
    assert torch.equal(p._model.state_dict()["last_linear.weight"], sd["last_linear.weight"])

    bad = dict(sd)
    bad["last_linear.weight"] = torch.zeros(128, 1792)  # a 128-d FaceNet: wrong shape
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="does not fit facenet-pytorch"):
        EmbeddingPredictor(network="facenet", weights=str(tmp_path / "bad.pt"))
    missing = {k: v for k, v in sd.items() if not k.startswith("repeat_3.4.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="repeat_3.4"):
        EmbeddingPredictor(network="facenet", weights=str(tmp_path / "missing.pt"))
    pnet = IMAGES.parent / "weights" / "mtcnn" / "pnet.pt"  # some other network's state dict
    with pytest.raises(WeightsError, match="not a facenet-pytorch"):
        EmbeddingPredictor(network="facenet", weights=str(pnet))
    with pytest.raises(WeightsError, match="does not exist"):
        EmbeddingPredictor(network="facenet", weights=str(tmp_path / "nope.pt"))


# -- through the Dask pipeline


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    d = tmp_path_factory.mktemp("emb")
    Image.new("RGB", (200, 150), (120, 120, 120)).save(d / "blank.jpg")
    (d / "broken.jpg").write_bytes(b"not an image")
    paths = [
        str(IMAGES / "single" / "fr_obama_small.jpg"),
        str(IMAGES / "group" / "fr_two_people.jpg"),
        str(d / "blank.jpg"),
        str(d / "broken.jpg"),
    ]
    with dask.config.set(scheduler="sync"):
        return extract_faces(paths, backend="dlib", batch_size=2)


def test_predict_through_dask(faces) -> None:
    with dask.config.set(scheduler="sync"):
        lazy = predict(faces, model="embedding")
        assert {"embedding_vector", "embedding_network", "embedding_provenance"} <= set(
            lazy.columns
        )
        t = time.perf_counter()
        df = lazy.compute()
        dt = time.perf_counter() - t
    ok = df["status"] == "ok"
    assert ok.sum() == 3 and (~ok).sum() == 2
    assert (df.loc[ok, "embedding_network"] == "dlib").all()  # dtypes, empty rows: the contract
    vecs = {
        (r.path.rsplit("/", 1)[-1], r.x1): np.asarray(r.embedding_vector, np.float32)
        for r in df[ok].itertuples()
    }
    assert all(v.shape == (128,) for v in vecs.values())
    obama = next(v for (p, _), v in vecs.items() if p == "fr_obama_small.jpg")
    two = sorted((x1, v) for (p, x1), v in vecs.items() if p == "fr_two_people.jpg")
    assert np.linalg.norm(obama - two[0][1]) < SAME_PERSON  # Obama again, on the left
    assert np.linalg.norm(obama - two[1][1]) > SAME_PERSON
    print(f"pipeline: detect + align + embed {ok.sum()} faces in {dt:.2f} s")


def test_predict_facenet_on_pandas(layout_file, tmp_path) -> None:
    paths = [str(IMAGES / "single" / "fr_obama_small.jpg"), str(tmp_path / "missing.jpg")]
    with dask.config.set(scheduler="sync"):
        df = extract_faces(paths, backend="dlib").compute()
    assert list(df["status"].str[:5]) == ["ok", "error"]
    out = predict(df, model="embedding", network="facenet", weights=str(layout_file))
    ok = out["status"] == "ok"
    assert out.loc[ok, "embedding_vector"].map(len).eq(512).all()
    assert out.loc[~ok, "embedding_vector"].isna().all()
    assert isinstance(out["embedding_vector"].dtype, pd.ArrowDtype)
