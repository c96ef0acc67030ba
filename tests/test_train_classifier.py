"""Training a multi-head classifier on real extracted crops (CPU, small backbone, a few epochs).

The learnable label: each dlib crop as it is ("upright") and flipped horizontally then rotated
by 90 degrees ("turned"), held out by photo so no face of a validation photo is trained on.
"""

from __future__ import annotations

import logging

import dask
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import faceetl
from faceetl import decode_png, extract_faces
from faceetl.datasets import FaceDataset, stratified_split
from faceetl.images import encode_png
from faceetl.train import MultiHeadClassifier, ResNet18, classifier, load_classifier, predict
from faceetl.train.classifier import evaluate
from helpers import IMAGES

SIDE = 48  # crops are shrunk for speed on CPU: the orientation is plain at this size


def shrink(im: Image.Image) -> torch.Tensor:
    """Transform: PIL crop -> (3, SIDE, SIDE) float tensor in [0, 1]."""
    a = np.asarray(im.resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


@pytest.fixture(scope="module")
def orientation() -> pd.DataFrame:
    """~60 real faces twice: upright, and mirrored + rotated 90 degrees, in one face table."""
    paths = sorted((IMAGES / "group").glob("*.jpg")) + sorted((IMAGES / "single").glob("*.jpg"))
    with dask.config.set(scheduler="sync"):
        faces = extract_faces([str(p) for p in paths], backend="dlib").compute()
    faces = faces[faces["status"] == "ok"].reset_index(drop=True)
    assert len(faces) >= 50
    upright = faces.assign(orientation="upright")
    turned = faces.assign(orientation="turned")
    turned["crop"] = pd.Series(
        [encode_png(np.ascontiguousarray(np.rot90(decode_png(c)[:, ::-1]))) for c in faces["crop"]],
        dtype=faces["crop"].dtype,
        index=faces.index,
    )
    return pd.concat([upright, turned], ignore_index=True)


@pytest.fixture(scope="module")
def split(orientation):
    train, val = stratified_split(
        orientation, by="orientation", val_fraction=0.3, seed=0, group="path"
    )
    assert not set(train["path"]) & set(val["path"])  # held out by photo
    assert set(val["orientation"]) == {"upright", "turned"}
    return (
        train,
        FaceDataset(train, ["orientation"], transform=shrink),
        FaceDataset(val, ["orientation"], transform=shrink),
    )


@pytest.mark.slow
def test_learns_a_held_out_label(split, tmp_path):
    _, train, val = split
    model, metrics = classifier.train(
        train, val, label_columns=["orientation"], backbone="small", epochs=5, batch_size=16,
        lr=3e-3, progress=False, checkpoint_dir=tmp_path, seed=0,
    )  # fmt: skip
    assert list(metrics["epoch"]) == [1, 2, 3, 4, 5]
    assert {"train_loss", "val_loss", "val_acc_orientation", "train_acc_orientation"} <= set(
        metrics.columns
    )
    assert metrics["train_loss"].iloc[-1] < 0.6 * metrics["train_loss"].iloc[0]
    assert metrics["val_loss"].iloc[-1] < metrics["val_loss"].iloc[0]
    assert metrics["val_acc_orientation"].iloc[-1] >= 0.8  # chance is 0.5
    assert model.classes == {"orientation": ["turned", "upright"]}
    # predictions agree with the reported accuracy, and a reloaded checkpoint predicts the same
    preds = predict(model, val)
    assert list(preds.index) == list(val.frame.index) and len(preds) == len(val)
    acc = (preds["orientation_pred"] == val.frame["orientation"]).mean()
    assert acc == pytest.approx(metrics["val_acc_orientation"].iloc[-1])
    assert preds["orientation_score"].between(0.5, 1.0).all()
    loaded, classes = load_classifier(tmp_path)
    assert classes == model.classes
    again = predict(loaded, val, probabilities=True)
    assert (again["orientation_pred"] == preds["orientation_pred"]).all()
    np.testing.assert_allclose(again["orientation_score"], preds["orientation_score"], atol=1e-5)
    assert np.allclose(np.stack(again["orientation_probs"]).sum(1), 1.0, atol=1e-5)
    ev = evaluate(loaded, val)
    assert ev["acc_orientation"] == pytest.approx(acc)


def test_resume_continues_from_the_last_checkpoint(split, tmp_path, caplog):
    train_df, train, val = split
    kw = dict(
        label_columns=["orientation"], backbone="small", batch_size=16, progress=False,
        checkpoint_dir=tmp_path,
    )  # fmt: skip
    _, first = classifier.train(train, val, epochs=1, **kw)
    assert len(first) == 1
    assert (tmp_path / "epoch_001.pt").is_file() and (tmp_path / "last.pt").is_file()
    with caplog.at_level(logging.INFO, logger="faceetl.train.classifier"):
        model, metrics = classifier.train(train, val, epochs=2, **kw)
    assert "at epoch 2 of 2" in caplog.text
    assert list(metrics["epoch"]) == [1, 2]
    pd.testing.assert_series_equal(metrics.iloc[0], first.iloc[0])  # epoch 1 was not redone
    assert (tmp_path / "epoch_002.pt").is_file()
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["classes"] == {"orientation": ["turned", "upright"]}
    assert "optimizer" in ck and len(ck["metrics"]) == 2
    # asking for epochs already done trains nothing more
    _, same = classifier.train(train, val, epochs=2, **kw)
    pd.testing.assert_frame_equal(same, metrics)
    # resume=False starts over in the same folder
    _, fresh = classifier.train(train, None, epochs=1, **{**kw, "resume": False})
    assert list(fresh["epoch"]) == [1] and "val_loss" not in fresh.columns
    # a checkpoint of other classes is not silently resumed
    relabelled = train_df.assign(orientation="x" + train_df["orientation"])
    with pytest.raises(ValueError, match="other labels"):
        classifier.train(relabelled, epochs=3, **kw)


def test_resnet18_has_torchvision_names_and_trains(split):
    train_df = split[0]
    sd = ResNet18().state_dict()
    assert len(sd) == 120  # torchvision's resnet18 has 122 entries, fc.weight and fc.bias aside
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["layer4.1.bn2.running_var"].shape == (512,)
    # a torchvision-style state dict (with its fc) loads as pretrained weights
    donor = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in sd.items()}
    donor["fc.weight"], donor["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    few = pd.concat([train_df.head(3), train_df.tail(3)])
    tiny = FaceDataset(few, ["orientation"], transform=shrink)
    assert tiny.classes["orientation"] == ["turned", "upright"]
    model, metrics = classifier.train(
        tiny, label_columns=["orientation"], backbone="resnet18", epochs=1, batch_size=3,
        lr=0.0, progress=True, pretrained_state_dict=donor,
    )  # fmt: skip
    assert torch.equal(model.backbone.conv1.weight, donor["conv1.weight"])  # lr 0: unchanged
    assert len(metrics) == 1 and np.isfinite(metrics["train_loss"].iloc[0])
    out = model(torch.rand(2, 3, SIDE, SIDE))
    assert out["orientation"].shape == (2, 2)
    with pytest.raises(ValueError, match="do not fit"):
        MultiHeadClassifier("small", {"a": [0, 1]}).load_backbone(donor)


def test_multi_head_sums_losses_and_ignores_missing_labels(orientation):
    df = orientation.iloc[::4].copy()
    df["size"] = np.where(df["x2"] - df["x1"] > (df["x2"] - df["x1"]).median(), "big", "small")
    df.loc[df.index[:3], "size"] = None  # missing labels are ignored, not a class
    ds = FaceDataset(df, ["orientation", "size"], transform=shrink)
    assert ds.classes["size"] == ["big", "small"]
    model, metrics = classifier.train(
        ds, ds, label_columns=["orientation", "size"], backbone="small", epochs=1, batch_size=8,
        progress=False,
    )  # fmt: skip
    assert len(model.heads) == 2
    assert {"val_acc_orientation", "val_acc_size"} <= set(metrics.columns)
    ev = evaluate(model, ds)
    assert np.isfinite(ev["loss"])
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        out = model(x)
        ys = {c: torch.as_tensor(ds.labels(c)) for c in ds.label_columns}
        ce = sum(
            torch.nn.functional.cross_entropy(out[c], ys[c], ignore_index=-100).item()
            for c in ds.label_columns
        )
    assert ev["loss"] == pytest.approx(ce, rel=1e-4)  # one batch: the sum of both heads' CE
    with pytest.raises(ValueError, match="regression"):
        classifier.train(df.assign(w=1.5), label_columns=["w"], backbone="small", epochs=1)


def test_calling_the_module_is_the_deprecated_train(split):
    """``faceetl.train.classifier(...)`` (and ``classifier.classifier``) still train, with a
    DeprecationWarning, exactly as ``faceetl.train.classifier.train(...)`` does."""
    train_df = split[0]
    few = FaceDataset(pd.concat([train_df.head(5), train_df.tail(5)]), ["orientation"],
                      transform=shrink)  # fmt: skip
    kw = dict(label_columns=["orientation"], backbone="small", epochs=1, batch_size=4,
              progress=False, seed=3)  # fmt: skip
    model, metrics = classifier.train(few, **kw)
    assert callable(faceetl.train.classifier) and faceetl.train.classifier is classifier
    with pytest.warns(DeprecationWarning, match=r"classifier\.train"):
        old_model, old_metrics = faceetl.train.classifier(few, **kw)
    with pytest.warns(DeprecationWarning, match=r"classifier\.train"):
        named_model, _ = classifier.classifier(few, **kw)
    cols = [c for c in metrics.columns if c != "seconds"]
    pd.testing.assert_frame_equal(old_metrics[cols], metrics[cols])
    for k, v in model.state_dict().items():
        assert torch.equal(old_model.state_dict()[k], v), k
        assert torch.equal(named_model.state_dict()[k], v), k


@pytest.mark.slow
def test_ddp_two_processes(split, tmp_path):
    """torch.distributed with gloo: two CPU processes, each half of every batch."""
    train_df = split[0]
    few = FaceDataset(pd.concat([train_df.head(4), train_df.tail(4)]), ["orientation"])
    model, metrics = classifier.train(
        few, few, label_columns=["orientation"], backbone="small", epochs=2, batch_size=4,
        lr=3e-3, progress=False, world_size=2, checkpoint_dir=tmp_path, keep_checkpoints=1,
    )  # fmt: skip
    assert list(metrics["epoch"]) == [1, 2]
    assert (metrics["images"] == 8).all()  # summed over both processes
    assert metrics["val_acc_orientation"].notna().all() and np.isfinite(metrics["train_loss"]).all()
    assert [p.name for p in tmp_path.glob("epoch_*.pt")] == ["epoch_002.pt"]
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["config"]["world_size"] == 2 and ck["epoch"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(ck["model"][k], v), k
    torch.manual_seed(0)  # train() draws its initial weights the same way
    start = MultiHeadClassifier("small", model.classes).state_dict()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(start[k], v)]
    assert any(k.startswith("heads.") for k in changed) and len(changed) > len(start) // 2
    loaded, _ = load_classifier(tmp_path)
    assert evaluate(loaded, few)["acc_orientation"] == pytest.approx(
        metrics["val_acc_orientation"].iloc[-1]
    )
