"""The ``parsing`` predictor: BiSeNet face parsing (zllrunning/face-parsing.PyTorch, 79999_iter.pth).

The released weights are not in ../shared, so the loader is tested on a state dict of random
tensors in the official key layout (tests/predictor_weights.py, written out from the official
model.py/resnet.py, not taken from faceetl's module), saved under the registered file name in the temporary FACEETL_HOME
and loaded through the normal fetch -> sha256 check -> strict load path. The reproduction test on
the real weights runs when 79999_iter.pth (right sha256) is in FACEETL_HOME or ~/.cache/faceetl.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import torch

import faceetl
from faceetl import weights
from faceetl.align import align_face, transform_points
from faceetl.backends.base import get_backend
from faceetl.nets.bisenet import load_bisenet
from faceetl.predictors import base as pbase
from faceetl.predictors import parsing
from faceetl.predictors.parsing import (
    ParsingPredictor,
    class_fractions,
    colorize,
    decode_mask,
    parsing_classes,
    preprocess,
)
from faceetl.weights import WeightsError
from helpers import IMAGES, load_rgb
from predictor_weights import bisenet_layout as released_layout
from predictor_weights import bisenet_state_dict as random_state_dict

SAMPLE = IMAGES / "parsing" / "faceparsing_116_ori.png"
OBAMA = IMAGES / "single" / "fr_obama_small.jpg"
REAL_SHA = "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567"


# ---------------------------------------------------------------- the released key layout
# bisenet_layout / bisenet_state_dict (tests/predictor_weights.py): written from the official
# model.py/resnet.py, not taken from faceetl's module


@pytest.fixture
def random_weights(faceetl_home: Path, monkeypatch: pytest.MonkeyPatch):
    """A random state dict saved as 79999_iter.pth in FACEETL_HOME, registered with its hash."""
    path = faceetl_home / parsing.WEIGHTS_FILE
    backup = None
    if path.exists():  # the real file (from ../shared/weights): set it aside for this test
        backup = path.with_suffix(".real")
        shutil.move(path, backup)
    sd = random_state_dict()
    torch.save(sd, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    wf = weights.weights_info(parsing.WEIGHTS_NAME)
    monkeypatch.setitem(weights._WEIGHTS, parsing.WEIGHTS_NAME, dataclasses.replace(wf, sha256=sha))
    pbase.REGISTRY.clear()  # no cached predictor outlives the test
    yield path, sd, sha
    pbase.REGISTRY.clear()
    path.unlink()
    if backup is not None:
        shutil.move(backup, path)


# ---------------------------------------------------------------- loader
def test_registered_weights_entry():
    wf = weights.weights_info(parsing.WEIGHTS_NAME)
    assert wf.filename == "79999_iter.pth"
    assert wf.sha256 == REAL_SHA
    assert wf.url.startswith("https://") and wf.url.endswith("/79999_iter.pth")


def test_loader_on_released_key_layout(random_weights):
    path, sd, sha = random_weights
    layout = released_layout()
    assert len(layout) == 191
    p = ParsingPredictor(device="cpu")
    own = p.net.state_dict()
    assert set(own) == set(layout)
    for k in ("cp.resnet.layer3.0.downsample.0.weight", "ffm.conv2.weight", "conv_out.conv_out.weight",
              "cp.arm32.bn_atten.running_var", "conv_out32.conv.bn.bias"):  # fmt: skip
        assert torch.equal(own[k], sd[k]), k
    assert not p.net.training
    prov = p.provenance()  # its weights entry: tests/test_predictor_contract.py
    assert prov["align"] == {"template": "dlib", "size": 512, "padding": parsing.DEFAULT_PADDING}
    assert prov["classes"] == list(parsing_classes)


def test_loader_accepts_module_prefix_and_no_num_batches_tracked(tmp_path: Path):
    sd = {f"module.{k}": v for k, v in random_state_dict(1).items() if "num_batches" not in k}
    torch.save(sd, tmp_path / "ddp.pth")
    net = load_bisenet(tmp_path / "ddp.pth")
    assert torch.equal(
        net.state_dict()["cp.resnet.conv1.weight"], sd["module.cp.resnet.conv1.weight"]
    )


def test_wrong_state_dict_fails_clearly(tmp_path: Path):
    sd = random_state_dict(2)
    renamed = {k.replace("cp.resnet.", "backbone."): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(WeightsError, match=r"not a face-parsing.PyTorch BiSeNet") as e:
        load_bisenet(tmp_path / "renamed.pth")
    msg = str(e.value)
    assert "missing: cp.resnet." in msg and "unexpected: backbone." in msg and "in all)" in msg

    sd20 = dict(sd, **{"conv_out.conv_out.weight": torch.zeros(20, 256, 1, 1)})
    torch.save(sd20, tmp_path / "20classes.pth")
    with pytest.raises(
        WeightsError, match=r"shape: conv_out.conv_out.weight: file \(20, 256, 1, 1\)"
    ):
        load_bisenet(tmp_path / "20classes.pth")

    # through the predictor: a wrong file given explicitly, and a file with the wrong hash
    with pytest.raises(WeightsError, match="missing"):
        ParsingPredictor(device="cpu", weights=tmp_path / "renamed.pth")


def test_wrong_hash_in_home_is_refused(faceetl_home: Path, monkeypatch: pytest.MonkeyPatch):
    path = faceetl_home / parsing.WEIGHTS_FILE
    if path.exists():
        pytest.skip("the real 79999_iter.pth is in FACEETL_HOME")
    torch.save(random_state_dict(3), path)
    try:
        with pytest.raises(WeightsError, match="expected 468e13ca"):
            ParsingPredictor(device="cpu")
    finally:
        path.unlink()


def test_missing_weights_offline_names_url(faceetl_home: Path):
    if (faceetl_home / parsing.WEIGHTS_FILE).exists():
        pytest.skip("the real 79999_iter.pth is in FACEETL_HOME")
    with pytest.raises(WeightsError, match=r"79999_iter\.pth.*huggingface\.co"):
        ParsingPredictor(device="cpu")


# ---------------------------------------------------------------- pre/post-processing
def test_preprocessing_values():
    crop = np.zeros((512, 512, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 255, 0, 128
    x = preprocess([crop])
    assert x.shape == (1, 3, 512, 512) and x.dtype == np.float32
    want = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[0, :, 100, 200], want, rtol=1e-6)

    # other sizes: PIL bilinear resize to 512 first, as the repo's test.py
    rgb = load_rgb(OBAMA)  # 320x240
    x2 = preprocess([rgb])
    assert x2.shape == (1, 3, 512, 512)
    back = x2[0].transpose(1, 2, 0) * parsing.STD + parsing.MEAN
    from PIL import Image

    ref = np.asarray(Image.fromarray(rgb).resize((512, 512), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(back, ref, atol=1e-5)
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess([rgb.astype(np.float32)])


def test_fractions_png_and_colorize():
    mask = np.zeros((512, 512), np.uint8)
    mask[:256] = 1  # half skin
    mask[256:, :128] = 17  # an eighth hair
    mask[511, 511] = 18
    f = class_fractions(mask)
    assert f.dtype == np.float32 and f.shape == (19,)
    assert f[1] == pytest.approx(0.5) and f[17] == pytest.approx(0.125)
    assert f[18] == pytest.approx(1 / 512**2) and f.sum() == pytest.approx(1.0, abs=1e-6)
    png = parsing.encode_mask(mask)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_mask(png), mask)
    rgb = colorize(png)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] != rgb[-1, 0]).any() and (rgb[300, 300] == 0).all()
    assert len(set(map(tuple, parsing._PALETTE))) == 19


def test_predict_batch_outputs(random_weights):
    p = ParsingPredictor(device="cpu")
    crops = [load_rgb(SAMPLE), np.full((512, 512, 3), 90, np.uint8)]
    seen: list[np.ndarray] = []
    masks_fn = p.masks
    p.masks = lambda c: seen.append(masks_fn(c)) or seen[-1]  # keep the masks predict_batch made
    out = p.predict_batch(crops)
    masks = seen[0]
    assert masks.shape == (2, 512, 512) and masks.dtype == np.uint8
    assert masks.max() < 19
    for png, frac, m in zip(out["parsing_mask"], out["parsing_fractions"], masks, strict=True):
        np.testing.assert_array_equal(decode_mask(png), m)
        assert len(frac) == 19 and sum(frac) == pytest.approx(1.0, abs=1e-5)
        assert np.argmax(frac) == np.bincount(m.ravel()).argmax()
    assert masks_fn([]).shape == (0, 512, 512)


# ---------------------------------------------------------------- crop geometry
def test_crop_keeps_the_whole_head():
    """On the repo's CelebAMask-HQ-style sample the crop has about the training framing."""
    rgb = load_rgb(SAMPLE)
    det = get_backend("dlib").detect_batch([rgb])[0]
    assert len(det.boxes) == 1
    lm = det.landmarks[0]
    crop, m, method = align_face(rgb, lm, det.boxes[0], ParsingPredictor.align)
    assert method == "landmarks" and crop.shape == (512, 512, 3)
    eyes = transform_points(m, lm[:2])
    scale = np.linalg.norm(eyes[1] - eyes[0]) / np.linalg.norm(lm[1] - lm[0])
    assert 0.8 < scale < 1.0  # a little looser than the 512 px training images, never tighter
    # the four image corners of the sample fall near the crop's corners: the same head framing
    corners = transform_points(m, np.array([[0, 0], [511, 0], [0, 511], [511, 511]], float))
    assert np.abs(corners - [[0, 0], [511, 0], [0, 511], [511, 511]]).max() < 0.15 * 512


# ---------------------------------------------------------------- through the Dask pipeline
def test_predict_through_dask_pipeline(random_weights, tmp_path: Path):
    missing = str(tmp_path / "nope.jpg")
    paths = [str(SAMPLE), str(OBAMA), missing]
    with dask.config.set(scheduler="sync"):
        faces = faceetl.extract_faces(paths, backend="dlib")
        out = faceetl.predict(faces, model="parsing")
        assert "parsing_mask" in out.columns and "parsing_fractions" in out.columns
        df = out.compute()
    ok = df["status"] == "ok"
    assert ok.sum() == 2 and (~ok).sum() == 1
    assert set(df.loc[ok, "path"]) == {str(SAMPLE), str(OBAMA)}
    assert df.loc[~ok, "path"].tolist() == [missing]
    assert isinstance(df["parsing_mask"].dtype, pd.ArrowDtype)
    assert str(df["parsing_mask"].dtype) == "binary[pyarrow]"
    assert str(df["parsing_fractions"].dtype) == "list<item: float>[pyarrow]"
    for _, row in df[ok].iterrows():
        mask = decode_mask(row["parsing_mask"])
        assert mask.shape == (512, 512) and mask.dtype == np.uint8 and mask.max() < 19
        frac = np.asarray(row["parsing_fractions"], np.float64)
        assert frac.shape == (19,) and frac.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(frac, class_fractions(mask), atol=1e-7)
        assert '"79999_iter.pth"' in row["parsing_provenance"]
    bad = df[~ok].iloc[0]
    assert pd.isna(bad["parsing_mask"]) and pd.isna(bad["parsing_fractions"])
    assert pd.isna(bad["parsing_provenance"])


# ---------------------------------------------------------------- real weights
def _real_weights() -> Path | None:
    for folder in (weights.home(), Path("~/.cache/faceetl").expanduser()):
        p = folder / parsing.WEIGHTS_FILE
        if p.is_file() and weights.sha256sum(p) == REAL_SHA:
            return p
    return None


def test_real_weights_reproduction():
    real = _real_weights()
    if real is None:
        pytest.skip(
            "79999_iter.pth (sha256 468e13ca...) is not in FACEETL_HOME or ~/.cache/faceetl"
        )
    p = ParsingPredictor(device="cpu", weights=real)
    rgb = load_rgb(SAMPLE)
    lm = get_backend("dlib").detect_batch([rgb])[0].landmarks[0]
    names = {n: i for i, n in enumerate(parsing_classes)}

    def check(mask: np.ndarray, pts: np.ndarray) -> None:
        f = class_fractions(mask)
        assert 0.12 < f[names["skin"]] < 0.5, f
        assert f[names["hair"]] > 0.08 and f[names["background"]] > 0.01, f
        for part in ("l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "l_lip", "neck"):
            assert f[names[part]] > 0, part
        lab = lambda xy: int(mask[int(round(xy[1])), int(round(xy[0]))])  # noqa: E731
        assert lab(pts[0]) in (names["l_eye"], names["r_eye"])
        assert lab(pts[1]) in (names["l_eye"], names["r_eye"])
        assert lab(pts[2]) == names["nose"]
        assert lab(pts[3:].mean(0)) in (names["mouth"], names["u_lip"], names["l_lip"])
        eye_mid, mouth_mid = pts[:2].mean(0), pts[3:].mean(0)
        assert lab(eye_mid - 0.6 * (mouth_mid - eye_mid)) == names["skin"]  # forehead
        hair_y = np.nonzero(mask == names["hair"])[0].mean()
        assert hair_y < mouth_mid[1]  # hair is mostly above the mouth

    # as the repo's test.py: the whole 512x512 sample
    full = p.masks([rgb])[0]
    check(full, lm)
    # as faceetl crops it: the predictor's 512 px dlib chip
    crop, m, _ = align_face(rgb, lm, None, p.align)
    check(p.masks([crop])[0], transform_points(m, lm))
