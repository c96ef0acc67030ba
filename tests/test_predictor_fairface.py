"""FairFace predictor: preprocessing, the loader on the released key layout, Dask predictions,
the 300 px dlib chip, and (with the real weights) FairFace's own reference outputs."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from faceetl import weights as fw
from faceetl.align import AlignSpec, align_face, dlib_template, transform_points
from faceetl.predictors import base
from faceetl.predictors.fairface import (
    AGES,
    GENDERS,
    MEAN,
    RACES_4,
    RACES_7,
    RELEASES,
    STD,
    FairFacePredictor,
    Release,
    fairface_table,
    preprocess,
    resize_224,
)
from faceetl.weights import WeightsError
from helpers import ANNOTATIONS, IMAGES, load_rgb
from predictor_weights import fairface_layout as released_layout
from predictor_weights import fairface_state_dict as random_state_dict

FILE7 = "res34_fair_align_multi_7_20190809.pt"
FILE4 = "res34_fair_align_multi_4_20190809.pt"
FILE4_REFERENCE = (
    "fairface_alldata_4race_20191111.pt"  # race4 of test_outputs.csv (predict.py@dd0f2886)
)
SINGLE = sorted((IMAGES / "single").glob("*.jpg"))
FLOATS = pd.ArrowDtype(pa.list_(pa.float32()))


# ---------------------------------------------------------------------------------------------
# the released layout: fairface_layout / fairface_state_dict (tests/predictor_weights.py)


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ResNet-34 forward written with torch.nn.functional straight from the state dict."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t,
            sd[f"{p}.running_mean"],
            sd[f"{p}.running_var"],
            sd[f"{p}.weight"],
            sd[f"{p}.bias"],
            False,
            0.0,
            1e-5,
        )

    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for li, n in enumerate([3, 4, 6, 3], 1):
        for b in range(n):
            p = f"layer{li}.{b}"
            stride = 2 if (b == 0 and li > 1) else 1
            out = F.relu(
                bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1")
            )
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = bn(
                    F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1"
                )
            x = F.relu(out + x)
    x = x.mean(dim=(2, 3))
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


@pytest.fixture()
def random_home(tmp_path, monkeypatch):
    """A FACEETL_HOME of its own holding random weights under the released file names."""
    monkeypatch.setenv("FACEETL_HOME", str(tmp_path))
    base.REGISTRY.clear()  # no predictor loaded from another home
    sd = random_state_dict(0)
    torch.save(sd, tmp_path / FILE7)
    torch.save(random_state_dict(1), tmp_path / FILE4)
    yield tmp_path, sd
    base.REGISTRY.clear()


def chips() -> tuple[list[str], list[np.ndarray]]:
    paths = sorted((IMAGES / "aligned").glob("fairface_*_face0.jpg"))
    return [p.name for p in paths], [load_rgb(p) for p in paths]


# ---------------------------------------------------------------------------------------------
# preprocessing


def pil_bilinear_reference(img: np.ndarray, size: int = 224) -> np.ndarray:
    """PIL's bilinear resampling (triangle filter widened by the scale when shrinking), in numpy."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        scale = n_in / n_out
        fscale = max(scale, 1.0)
        w = np.zeros((n_out, n_in))
        for o in range(n_out):
            centre = (o + 0.5) * scale
            lo = max(int(centre - fscale + 0.5), 0)
            hi = min(int(centre + fscale + 0.5), n_in)
            for i in range(lo, hi):
                w[o, i] = max(0.0, 1.0 - abs((i - centre + 0.5) / fscale))
            w[o] /= w[o].sum()
        return w

    h, w, _ = img.shape
    wx, wy = weights(w, size), weights(h, size)
    horiz = np.clip(np.rint(np.einsum("oi,hic->hoc", wx, img.astype(np.float64))), 0, 255)
    return np.einsum("oh,hwc->owc", wy, horiz)


def test_preprocess_shape_dtype_and_imagenet_normalisation():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    x = preprocess([crop, crop[::-1].copy()])
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    small = np.asarray(Image.fromarray(crop).resize((224, 224), Image.BILINEAR))
    for y, xx in [(0, 0), (57, 111), (223, 223), (100, 5)]:
        for c in range(3):
            want = (small[y, xx, c] / 255.0 - MEAN[c]) / STD[c]
            assert float(x[0, c, y, xx]) == pytest.approx(want, abs=1e-5)
    # a constant colour stays constant: black, white and a mid grey map to ImageNet's extremes
    for value in (0, 255, 128):
        t = preprocess([np.full((300, 300, 3), value, np.uint8)])
        for c in range(3):
            assert torch.allclose(
                t[0, c], torch.tensor((value / 255 - MEAN[c]) / STD[c]), atol=1e-6
            )
    with pytest.raises(ValueError, match="RGB"):
        preprocess([np.zeros((300, 300), np.uint8)])
    assert preprocess([]).shape == (0, 3, 224, 224)


def test_resize_is_pil_bilinear_with_antialias():
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    out = resize_224(crop)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # matches an independent implementation of PIL's filter (PIL rounds in fixed point: +-1)
    diff = np.abs(out.astype(float) - np.rint(pil_bilinear_reference(crop)))
    assert diff.max() <= 1.0 and diff.mean() < 0.05
    # and it antialiases: a 1-pixel checkerboard becomes flat grey, unlike plain bilinear
    checker = ((np.indices((300, 300)).sum(axis=0) % 2) * 255).astype(np.uint8)
    checker = np.repeat(checker[:, :, None], 3, axis=2)
    assert resize_224(checker).std() < 12
    assert cv2.resize(checker, (224, 224), interpolation=cv2.INTER_LINEAR).std() > 40


# ---------------------------------------------------------------------------------------------
# loading


def test_loader_reads_released_layout_and_computes_resnet34(random_home):
    home, sd = random_home
    p = FairFacePredictor(races=7, device="cpu")
    loaded = p.model.state_dict()
    assert set(loaded) == set(released_layout()) and len(loaded) == 218
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    crops = chips()[1][:2]
    got = p.logits(crops)
    want = reference_forward(sd, preprocess(crops)).numpy()
    assert got.shape == (2, 18) and np.abs(got).max() > 0.5
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    prov = p.provenance()
    assert prov["weights"] == {FILE7: fw.sha256sum(home / FILE7)}
    assert prov["races"] == 7 and prov["release"] == "20190809" and not prov["weights_pinned"]


def test_loader_accepts_module_prefix_and_old_files_without_batch_counters(tmp_path):
    sd = random_state_dict(2)
    prefixed = {f"module.{k}": v for k, v in sd.items()}  # a DataParallel save
    torch.save(prefixed, tmp_path / "prefixed.pt")
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # torch < 0.4.1
    torch.save(old, tmp_path / "old.pt")
    a = FairFacePredictor(weights=tmp_path / "prefixed.pt", device="cpu")
    b = FairFacePredictor(weights=tmp_path / "old.pt", device="cpu")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k, v in sd.items():
        assert torch.equal(sa[k], v), k
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(sb[k], v), k


def test_pinned_release_is_fetched_and_verified(random_home, monkeypatch):
    home, _ = random_home
    sha = fw.sha256sum(home / FILE7)
    rel = Release("test-fairface-pinned", FILE7, 7, sha, "https://example.invalid/" + FILE7)
    monkeypatch.setitem(RELEASES, ("20190809", 7), rel)
    monkeypatch.setitem(fw._WEIGHTS, rel.name, fw.WeightFile(rel.name, rel.url, sha, FILE7))
    p = FairFacePredictor(device="cpu")
    assert p.provenance()["weights_pinned"] and p.provenance()["weights"] == {FILE7: sha}
    bad = fw.WeightFile(rel.name, rel.url, "0" * 64, FILE7)
    monkeypatch.setitem(fw._WEIGHTS, rel.name, bad)
    monkeypatch.setitem(RELEASES, ("20190809", 7), Release(rel.name, FILE7, 7, "0" * 64, rel.url))
    with pytest.raises(WeightsError, match="refusing"):
        FairFacePredictor(device="cpu")


def test_wrong_state_dict_fails_with_a_clear_message(tmp_path):
    seven = random_state_dict(3, n_out=7)  # a race-only head: fc 512 -> 7
    torch.save(seven, tmp_path / "fc7.pt")
    with pytest.raises(
        WeightsError,
        match=r"not a FairFace ResNet-34(.|\n)*shape: fc\.bias: file \(7,\) != model \(18,\), "
        r"fc\.weight: file \(7, 512\) != model \(18, 512\)",
    ):
        FairFacePredictor(weights=tmp_path / "fc7.pt", device="cpu")
    missing = {k: v for k, v in random_state_dict(3).items() if not k.startswith("layer4.2.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"not a FairFace ResNet-34.*missing: layer4\.2\."):
        FairFacePredictor(weights=tmp_path / "missing.pt", device="cpu")


def test_missing_weights_message_names_file_folder_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEETL_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as e:
        FairFacePredictor(races=4, release="20191111")
    msg = str(e.value)
    assert FILE4_REFERENCE in msg and str(tmp_path) in msg and "drive.google.com" in msg
    with pytest.raises(ValueError, match="races is 7 or 4"):
        FairFacePredictor(races=5)


# ---------------------------------------------------------------------------------------------
# predict_batch and the Dask pipeline


def test_predict_batch_labels_and_softmax(random_home):
    p = FairFacePredictor(device="cpu")
    crops = chips()[1][:2]
    out = p.predict_batch(crops)  # its columns and dtypes: tests/test_predictor_contract.py
    logits = p.logits(crops)
    for head, sl, labels in [
        ("race", slice(0, 7), RACES_7),
        ("gender", slice(7, 9), GENDERS),
        ("age", slice(9, 18), AGES),
    ]:
        probs = np.array(out[f"fairface_{head}_probs"])
        want = np.exp(logits[:, sl]) / np.exp(logits[:, sl]).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)
        assert out[f"fairface_{head}"] == [labels[i] for i in want.argmax(axis=1)]
    four = FairFacePredictor(races=4, device="cpu").predict_batch(crops)
    assert set(four) == {"fairface_race", "fairface_race_probs"}
    assert all(len(v) == 4 for v in four["fairface_race_probs"])
    assert set(four["fairface_race"]) <= set(RACES_4)


def test_predict_through_dask_pipeline(random_home, tmp_path):
    import faceetl
    from faceetl import predict

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 127, np.uint8)).save(blank)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    paths = [str(p) for p in SINGLE[:3]] + [str(blank), str(broken)]
    faces = faceetl.extract_faces(paths, backend="dlib")
    df = predict(faces, model="fairface").compute()  # dtypes: tests/test_predictor_contract.py
    cols = {**FairFacePredictor.output_columns(), "fairface_provenance": "string[pyarrow]"}
    assert list(df.columns) == [*faces.columns, *cols]
    ok = df["status"] == "ok"
    assert ok.sum() >= 3 and (~ok).sum() == 2  # a face per portrait; no face, unreadable
    for _, row in df[ok].iterrows():
        assert row["fairface_race"] in RACES_7 and row["fairface_gender"] in GENDERS
        assert row["fairface_age"] in AGES
        for head, n in [("race", 7), ("gender", 2), ("age", 9)]:
            probs = np.asarray(row[f"fairface_{head}_probs"], np.float64)
            assert len(probs) == n and abs(probs.sum() - 1) < 1e-5 and (probs >= 0).all()
    assert df.loc[~ok, list(cols)].isna().all().all()
    # the pipeline's crops are the 300 px dlib chips: same numbers as predicting those directly
    first = df[ok].iloc[0]
    lm = np.asarray(first["landmarks"], np.float64).reshape(5, 2)
    box = first[["x1", "y1", "x2", "y2"]].to_numpy(float)
    chip, _, _ = align_face(
        load_rgb(first["path"]), lm, box, AlignSpec("dlib", 300, 0.25), shape=first["shape"]
    )
    direct = FairFacePredictor(device="cpu").predict_batch([chip])
    np.testing.assert_allclose(
        first["fairface_race_probs"], direct["fairface_race_probs"][0], atol=1e-6
    )
    four = predict(faces, model="fairface", races=4).compute()
    assert "fairface_gender" not in four.columns
    assert all(len(v) == 4 for v in four.loc[four["status"] == "ok", "fairface_race_probs"])


# ---------------------------------------------------------------------------------------------
# the crop: faceetl's dlib chip against dlib's own get_face_chip (FairFace's pipeline)


def test_dlib_chip_matches_dlib_get_face_chip():
    import dlib

    from faceetl.backends.base import get_backend
    from faceetl.backends.dlib import predictor_path

    det = get_backend("dlib")
    sp5 = dlib.shape_predictor(str(predictor_path("5")))
    spec = AlignSpec("dlib", 300, 0.25)
    tmpl = dlib_template(300, 0.25)
    checked = 0
    for path in SINGLE:
        img = load_rgb(path)
        d = det.detect_batch([img])[0]
        if len(d.boxes) == 0:
            continue
        chip, m, method = align_face(img, d.landmarks[0], d.boxes[0], spec)
        assert chip.shape == (300, 300, 3) and method == "landmarks"
        # eyes (centres of dlib's 68-point eye contours) land on the template's eyes
        p68 = d.extra["landmarks68"][0].astype(np.float64)
        eyes = transform_points(m, np.stack([p68[36:42].mean(0), p68[42:48].mean(0)]))
        assert np.abs(eyes - tmpl[:2]).max() < 12, (path.name, eyes, tmpl[:2])
        # FairFace's own chip: dlib 5-point shape on the same box, dlib.get_face_chip
        x1, y1, x2, y2 = d.boxes[0].astype(int)
        shape = sp5(img, dlib.rectangle(int(x1), int(y1), int(x2) - 1, int(y2) - 1))
        ref = np.asarray(dlib.get_face_chip(img, shape, size=300, padding=0.25))
        a = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY).astype(np.float64)
        b = cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY).astype(np.float64)
        (dx, dy), _ = cv2.phaseCorrelate(a, b)
        ncc = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        # measured: shift 0.6-8.8 px, correlation 0.76-0.95 (faceetl fits 5 points from the
        # 68-point model, dlib its 5-point model's own template: chips differ by up to ~5% scale)
        assert np.hypot(dx, dy) < 12 and ncc > 0.7, (path.name, dx, dy, ncc)
        checked += 1
    assert checked >= 4


# ---------------------------------------------------------------------------------------------
# the released model on FairFace's own chips (needs the real weights in FACEETL_HOME)


def parse_vector(s: str) -> np.ndarray:
    return np.array(s.strip().strip("[]").split(), dtype=np.float64)


def reference_rows() -> pd.DataFrame:
    ref = pd.read_csv(ANNOTATIONS / "fairface" / "test_outputs.csv")
    ref["file"] = "fairface_" + ref["face_name_align"].str.rsplit("/", n=1).str[-1]
    return ref.set_index("file")


def real_weights(filename: str) -> Path:
    path = Path(os.environ["FACEETL_HOME"]) / filename
    if not path.is_file():
        pytest.skip(
            f"the released FairFace weights {filename} are not in FACEETL_HOME "
            f"({path.parent}); put them in ../shared/weights to check FairFace's reference outputs"
        )
    return path


def test_reproduces_fairface_reference_race_gender_age():
    path = real_weights(FILE7)
    names, crops = chips()
    ref = reference_rows().loc[names]
    got = fairface_table(crops, weights7=path, device="cpu")
    assert list(got["race"]) == list(ref["race"])
    assert list(got["gender"]) == list(ref["gender"])
    assert list(got["age"]) == list(ref["age"])
    for col in ("race_scores_fair", "gender_scores_fair", "age_scores_fair"):
        for g, r in zip(got[col], ref[col], strict=True):
            np.testing.assert_allclose(g, parse_vector(r), atol=0.02)


def test_reproduces_fairface_reference_race4():
    path = real_weights(FILE4_REFERENCE)
    names, crops = chips()
    ref = reference_rows().loc[names]
    got = fairface_table(crops, weights4=path, device="cpu")
    assert list(got["race4"]) == list(ref["race4"])
    for g, r in zip(got["race_scores_fair_4"], ref["race_scores_fair_4"], strict=True):
        np.testing.assert_allclose(g, parse_vector(r), atol=0.02)
