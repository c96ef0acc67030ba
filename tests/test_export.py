"""ONNX export of RetinaFace, BiSeNet and a trained classifier, checked with onnxruntime on the
real shared images; RetinaFace's onnx runtime against its torch runtime; TensorRT's requirements;
a new exportable kind as one file and its registration; the backend does not import the exporter.

The released BiSeNet weights are not in ../shared: the parsing export runs on a BiSeNet in the
official key layout with seeded random weights whose BatchNorm statistics are measured on the
shared images (so activations have realistic ranges), saved as a state dict and exported by name.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from faceetl import export
from faceetl.backends.retinaface import RetinaFaceDetector, onnx_inputs
from faceetl.export import classifier as classifier_kind
from faceetl.export import registry
from faceetl.export.trt import default_profiles
from faceetl.images import encode_png
from faceetl.nets.bisenet import build_bisenet
from faceetl.nets.classifier import MultiHeadClassifier
from faceetl.predictors.parsing import preprocess
from faceetl.weights import home
from helpers import IMAGES, ROOT, iou, load_rgb

GROUP = sorted((IMAGES / "group").glob("*.jpg"))
WIDER = sorted((IMAGES / "wider").glob("*.jpg"))
ALIGNED = sorted((IMAGES / "aligned").glob("*"))


def _errors(path) -> dict[str, float]:
    return json.loads(export.read_metadata(path)["faceetl.check_max_rel_error"])


def _matched_max_diff(a, b) -> float:
    """Largest box/landmark coordinate difference between each face of ``a`` and its match in ``b``."""
    j = iou(a.boxes, b.boxes).argmax(axis=1)
    return float(
        max(np.abs(a.boxes - b.boxes[j]).max(), np.abs(a.landmarks - b.landmarks[j]).max())
    )


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [load_rgb(p) for p in GROUP + WIDER]


# ----------------------------------------------------------------------------- RetinaFace


@pytest.mark.slow
def test_retinaface_onnx(tmp_path, photos) -> None:
    imgs = [photos[GROUP.index(IMAGES / "group" / "facenet_multiface.jpg")], *photos[-2:]]
    path = export.onnx("retinaface", tmp_path / "rf.onnx", network="mobilenet0.25", images=imgs)
    errors = _errors(path)
    print("retinaface onnx max relative error:", errors)
    assert set(errors) == {"loc", "conf", "landmarks"}
    assert max(errors.values()) < 1e-3
    meta = export.read_metadata(path)
    assert meta["faceetl.kind"] == "retinaface" and meta["faceetl.network"] == "mobilenet0.25"

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str)
    assert isinstance(inp.shape[2], str) and isinstance(inp.shape[3], str)  # dynamic H, W
    assert [o.name for o in sess.get_outputs()] == ["loc", "conf", "landmarks"]
    # a batch of 3 at a size never exported gives each image's own outputs; conf is softmaxed
    x = np.stack([onnx_inputs([im[:301, :403]])[0][0] for im in photos[:3]])
    loc, conf, ldm = sess.run(None, {"input": x})
    assert conf.shape == (3, loc.shape[1], 2) and np.allclose(conf.sum(-1), 1, atol=1e-5)
    for k in range(3):
        one = sess.run(None, {"input": x[k : k + 1]})
        assert np.abs(one[0][0] - loc[k]).max() < 1e-3
        assert np.abs(one[2][0] - ldm[k]).max() < 1e-3
    # the same errors measured again from the file alone (its recorded source)
    again = export.check_onnx(path, images=[load_rgb(IMAGES / "single" / "fr_obama_small.jpg")])
    assert max(again.values()) < 1e-3


@pytest.mark.slow
def test_retinaface_onnx_runtime_matches_torch(photos) -> None:
    t0 = time.perf_counter()
    onnx_det = RetinaFaceDetector(runtime="onnx")
    first = time.perf_counter() - t0
    cached = sorted((home() / "onnx").glob("retinaface_mobilenet0.25_2979b33ffafda5d7_*.onnx"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    t0 = time.perf_counter()
    again = RetinaFaceDetector(runtime="onnx")  # loads the cached graph, exports nothing
    second = time.perf_counter() - t0
    assert cached[0].stat().st_mtime_ns == mtime and second < first
    assert again.provenance()["runtime"] == "onnx" and not again.provenance()["fp16"]

    torch_det = RetinaFaceDetector()
    worst, n_faces = 0.0, 0
    for name, img in zip([p.name for p in GROUP + WIDER], photos, strict=True):
        a = torch_det.detect_batch([img])[0]
        b = onnx_det.detect_batch([img])[0]
        assert len(a) == len(b) > 0, name
        d = _matched_max_diff(a, b)
        assert d <= 1.0, (name, d)
        assert np.abs(np.sort(a.scores) - np.sort(b.scores)).max() < 1e-3
        worst, n_faces = max(worst, d), n_faces + len(a)
    print(f"onnx vs torch runtime: {n_faces} faces, max coordinate difference {worst:.4f} px")

    # mixed sizes: with exact_padding each image runs alone, so a batch equals single runs
    imgs = [photos[0], photos[3], load_rgb(IMAGES / "single" / "fr_obama_small.jpg")]
    many = RetinaFaceDetector(runtime="onnx", batch_pixels=10**9, pad_waste=math.inf)
    for img, b in zip(imgs, many.detect_batch(imgs), strict=True):
        a = onnx_det.detect_batch([img])[0]
        assert len(a) == len(b) and _matched_max_diff(a, b) == 0.0
    # without it they share the (unmasked) mean-colour canvas, as the torch runtime does then
    kw = dict(batch_pixels=10**9, pad_waste=math.inf, exact_padding=False)
    canvas_onnx = RetinaFaceDetector(runtime="onnx", **kw).detect_batch(imgs)
    canvas_torch = RetinaFaceDetector(**kw).detect_batch(imgs)
    for a, b in zip(canvas_torch, canvas_onnx, strict=True):
        assert len(a) == len(b) > 0 and _matched_max_diff(a, b) <= 1.0


def test_runtime_is_checked() -> None:
    with pytest.raises(ValueError, match="runtime"):
        RetinaFaceDetector(runtime="tensorrt")


def test_backend_does_not_import_the_exporter() -> None:
    """The onnx runtime uses faceetl.onnx_graph: importing the backend leaves the exporter out."""
    code = "import sys, faceetl.backends.retinaface; print(sorted(m for m in sys.modules if m.startswith('faceetl.export')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout


# ----------------------------------------------------------------------------- BiSeNet


@pytest.mark.slow
def test_parsing_onnx(tmp_path) -> None:
    crops = [load_rgb(IMAGES / "parsing" / "faceparsing_116_ori.png")]
    crops += [load_rgb(p) for p in ALIGNED if p.name.startswith("fairface")][:2]
    torch.manual_seed(0)
    net = build_bisenet()
    for m in net.modules():  # BatchNorm statistics of these very inputs, not mean 0 / var 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(preprocess(crops)))
    weights = tmp_path / "bisenet_random.pth"
    torch.save(net.state_dict(), weights)

    path = export.onnx("parsing", tmp_path / "parsing.onnx", weights=str(weights), images=crops)
    errors = _errors(path)
    print("parsing onnx max relative error:", errors)
    assert list(errors) == ["logits"] and errors["logits"] < 1e-3

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [3, 512, 512]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # dynamic batch
    x = preprocess(crops)
    (logits,) = sess.run(None, {"input": x})
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x)).numpy()
    assert logits.shape == (3, 19, 512, 512)
    assert np.abs(ref - logits).max() / np.abs(ref).max() < 1e-3
    assert (ref.argmax(1) == logits.argmax(1)).mean() > 0.999
    assert len(np.unique(ref.argmax(1))) > 1  # a real (non-constant) output was compared


# ----------------------------------------------------------------------------- classifier


def test_classifier_onnx(tmp_path) -> None:
    from faceetl.train import classifier

    rows = []
    for p in ALIGNED:
        img = load_rgb(p)
        small = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
        for turned in (False, True):
            crop = np.ascontiguousarray(np.rot90(small)) if turned else small
            rows.append(
                {
                    "crop": encode_png(crop),
                    "status": "ok",
                    "orientation": "turned" if turned else "upright",
                    "source": p.name.split("_")[0],
                }
            )
    table = pd.DataFrame(rows)
    ck = tmp_path / "run"
    model, metrics = classifier(
        table, label_columns=["orientation", "source"], backbone="small", epochs=2,
        batch_size=7, progress=False, checkpoint_dir=ck,
    )  # fmt: skip
    assert len(metrics) == 2

    imgs = [load_rgb(p) for p in ALIGNED]
    path = export.onnx(ck, tmp_path / "clf.onnx", size=64, images=imgs)
    errors = _errors(path)
    print("classifier onnx max relative error:", errors)
    assert list(errors) == ["orientation", "source"] and max(errors.values()) < 1e-3
    meta = export.read_metadata(path)
    assert json.loads(meta["faceetl.classes"]) == model.classes

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["orientation", "source"]
    x = classifier_kind.prepare(imgs, size=80)[0]  # another size: H and W are dynamic too
    outs = sess.run(None, {"input": x})
    with torch.no_grad():
        ref = model.cpu().eval()(torch.from_numpy(x))
    for name, got in zip(["orientation", "source"], outs, strict=True):
        assert got.shape == (len(imgs), len(model.classes[name]))
        assert np.abs(ref[name].numpy() - got).max() / np.abs(ref[name].numpy()).max() < 1e-3

    # the module in memory exports too (no source recorded: check_onnx needs the model)
    model.train()  # the export runs in eval mode and leaves the module as it found it
    p2 = export.onnx(model, tmp_path / "clf_mem.onnx", size=64, images=imgs[:2], dynamo=False)
    assert model.training and model.backbone.training
    assert max(_errors(p2).values()) < 1e-3
    with pytest.raises(export.ExportError, match="pass the torch model"):
        export.check_onnx(p2)
    assert max(export.check_onnx(p2, model, images=imgs[:2], size=64).values()) < 1e-3


def test_bad_requests(tmp_path) -> None:
    clf = MultiHeadClassifier("small", {"a": ["x", "y"]})
    with pytest.raises(export.ExportError, match="cannot export"):
        export.onnx("nothing-like-this", tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="unexpected parameters"):
        export.onnx("retinaface", tmp_path / "x.onnx", colour="red")
    with pytest.raises(export.ExportError, match="cannot export a Linear"):
        export.onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(
        TypeError, match=r"unexpected parameters for a classifier export: \['network'\]"
    ):
        export.onnx(clf, tmp_path / "x.onnx", network="resnet50")
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("not a model")
    with pytest.raises(export.ExportError, match="cannot export"):
        export.onnx(not_a_checkpoint, tmp_path / "x.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing half-written


# ----------------------------------------------------------------------------- TensorRT


def _tensorrt_imports() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def test_tensorrt(tmp_path) -> None:
    from faceetl.train import MultiHeadClassifier

    torch.manual_seed(0)
    net = MultiHeadClassifier("small", {"a": ["x", "y"], "b": ["u", "v", "w"]}).eval()
    onnx_path = export.onnx(net, tmp_path / "small.onnx", size=64, check=False)
    engine = tmp_path / "small.engine"
    if not (_tensorrt_imports() and torch.cuda.is_available()):  # the error says what is missing
        with pytest.raises(export.ExportError) as e:
            export.tensorrt(onnx_path, engine, fp16=True)
        msg = str(e.value)
        print("TensorRT here:", msg)
        if not torch.cuda.is_available():
            assert "GPU" in msg and "CUDA" in msg
        if not _tensorrt_imports():
            assert "pip install tensorrt" in msg and "import tensorrt" in msg
        assert not engine.exists()
        with pytest.raises(FileNotFoundError):
            export.tensorrt(tmp_path / "missing.onnx", engine)
        return
    images = [load_rgb(p) for p in ALIGNED]
    out = export.tensorrt(onnx_path, engine, fp16=True, model=net, images=images)
    report = json.loads(out.with_name(out.name + ".json").read_text())
    print("TensorRT fp16 vs torch:", report["check_max_rel_error"])
    assert out.stat().st_size > 0 and max(report["check_max_rel_error"].values()) < 2e-2


def test_tensorrt_profiles(tmp_path) -> None:
    """Each kind's registered (min, opt, max) input shapes, found from a file's metadata alone."""
    torch.manual_seed(0)
    net = MultiHeadClassifier("small", {"a": ["x", "y"]}).eval()
    path = export.onnx(net, tmp_path / "small.onnx", size=64, check=False)
    assert default_profiles(export.read_metadata(path)) == {
        "input": ((1, 3, 64, 64), (32, 3, 64, 64), (256, 3, 64, 64))
    }
    assert default_profiles({"faceetl.kind": "retinaface"}) == {
        "input": ((1, 3, 32, 32), (1, 3, 640, 640), (4, 3, 2048, 2048))
    }
    assert default_profiles({"faceetl.kind": "parsing"}) == {
        "input": ((1, 3, 512, 512), (8, 3, 512, 512), (32, 3, 512, 512))
    }
    for meta in ({}, {"faceetl.kind": "no-such-kind"}):
        with pytest.raises(export.ExportError, match="not a faceetl ONNX export"):
            default_profiles(meta)


# ----------------------------------------------------------------------------- a new kind

#: a whole exportable model: the module and its registration, in one file of its own
TINY_KIND = '''
"""A tiny exportable model: one file, one registration."""

import cv2
import numpy as np
import torch
from torch import nn

from faceetl.export import register_exportable


class TinyNet(nn.Module):
    """Conv-BN-ReLU, global average pool, a linear head: (B, 3, H, W) -> (B, n) scores."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def prepare(images: list[np.ndarray], size: int = 32) -> list[np.ndarray]:
    """RGB uint8 images -> one (N, 3, size, size) batch in [0, 1]."""
    xs = [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]
    return [np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2), np.float32) / 255]


def load(weights: str) -> TinyNet:
    """A TinyNet with the state dict of the file ``weights`` (export.onnx("tiny", weights=...))."""
    net = TinyNet()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net


register_exportable(
    "tiny",
    modules=(TinyNet,),
    outputs=("scores",),
    dynamic={0: "batch", 2: "height", 3: "width"},
    example=lambda size: (2, 3, size, size),
    prepare=prepare,
    metadata=lambda net, size: {"tiny.classes": str(net.head.out_features)},
    profiles=lambda meta: ((1, 3, 32, 32), (8, 3, 64, 64), (32, 3, 256, 256)),
    load=load,
    params={"size": 32},
)
'''


def test_new_kind_is_one_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))  # the kind lives in this test
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tiny_kind.py").write_text(textwrap.dedent(TINY_KIND))
    monkeypatch.delitem(sys.modules, "tiny_kind", raising=False)
    tiny = importlib.import_module("tiny_kind")
    assert "tiny" in export.kinds()

    torch.manual_seed(0)
    net = tiny.TinyNet()
    bn = net.bn  # running statistics that are not the identity
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    imgs = [load_rgb(p) for p in ALIGNED]
    path = export.onnx(net, tmp_path / "tiny.onnx", images=imgs, size=48)
    errors = _errors(path)
    assert list(errors) == ["scores"] and errors["scores"] < 1e-3
    meta = export.read_metadata(path)
    assert meta["faceetl.kind"] == "tiny" and meta["tiny.classes"] == "3"
    assert "faceetl.source" not in meta  # made from a module in memory

    # onnxruntime on its own, at a size never exported, against the torch module
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["scores"]
    (x,) = tiny.prepare(imgs, size=40)
    (got,) = sess.run(None, {"input": x})
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x)).numpy()
    assert got.shape == (len(imgs), 3)
    assert np.abs(ref - got).max() / np.abs(ref).max() < 1e-3

    # by kind name from a weights file: the file alone says how to check it again
    weights = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), weights)
    by_name = export.onnx("tiny", tmp_path / "tiny_named.onnx", weights=weights, images=imgs)
    meta = export.read_metadata(by_name)
    assert meta["faceetl.source"] == "tiny"
    assert json.loads(meta["faceetl.params"]) == {"size": 32, "weights": str(weights)}
    again = export.check_onnx(by_name, images=imgs[:2])
    assert list(again) == ["scores"] and again["scores"] < 1e-3
    assert default_profiles(meta) == {"input": ((1, 3, 32, 32), (8, 3, 64, 64), (32, 3, 256, 256))}
    with pytest.raises(TypeError, match="unexpected parameters for a tiny export"):
        export.onnx("tiny", tmp_path / "x.onnx", weights=weights, colour="red")


# ----------------------------------------------------------------------------- onnx_graph


def test_cached_export_and_sessions(tmp_path, monkeypatch) -> None:
    """One checked file per weights sha256 and opset; a foreign or truncated one is redone;
    sessions are shared per file version and device."""
    from faceetl import onnx_graph

    monkeypatch.setenv("FACEETL_HOME", str(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()

    def prepare(images: list[np.ndarray]) -> list[np.ndarray]:
        return [
            np.ascontiguousarray(im[None, :64, :64].transpose(0, 3, 1, 2), np.float32) / 255
            for im in images
        ]

    def cached(sha: str) -> Path:
        return onnx_graph.cached_export(
            net, "conv", sha, outputs=["y"], dynamic={0: "batch", 2: "h", 3: "w"},
            example=torch.zeros(1, 3, 32, 32), prepare=prepare, metadata={"faceetl.kind": "conv"},
        )  # fmt: skip

    sha = "ab" * 32
    path = cached(sha)
    assert path == tmp_path / "onnx" / f"conv_{sha[:16]}_opset18_v1.onnx"
    meta = onnx_graph.read_metadata(path)
    assert meta["faceetl.weights_sha256"] == sha and meta["faceetl.kind"] == "conv"
    assert json.loads(meta["faceetl.check_max_rel_error"])["y"] < 1e-3
    mtime = path.stat().st_mtime_ns
    assert cached(sha) == path and path.stat().st_mtime_ns == mtime  # found, not exported again

    s1 = onnx_graph.cached_session(path, "cpu")
    assert onnx_graph.cached_session(path, "cpu") is s1
    x = prepare(onnx_graph.synthetic_images())[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert onnx_graph.max_rel_error(ref, s1.run(None, {"input": x})[0]) < 1e-3

    path.write_bytes(path.read_bytes()[:100])  # truncated: exported again, a new session
    assert cached(sha) == path and onnx_graph.read_metadata(path)["faceetl.weights_sha256"] == sha
    assert onnx_graph.cached_session(path, "cpu") is not s1
    twin = sha[:16] + "ef" * 24  # the same file name, other weights: exported again over it
    assert cached(twin) == path and onnx_graph.read_metadata(path)["faceetl.weights_sha256"] == twin
    other = "cd" * 32  # other weights: a file of their own
    assert cached(other) != path and len(list((tmp_path / "onnx").glob("conv_*.onnx"))) == 2
    assert not list((tmp_path / "onnx").glob(".*.tmp"))
