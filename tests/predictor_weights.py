"""Random state dicts in the key layouts of the predictors' released weight files.

The released files are not all in ../shared (and FairFace's are not downloadable), so loaders and
predictors are tested on random tensors saved in the released layouts. The BiSeNet and FairFace
layouts are written out here from the official code (face-parsing.PyTorch's model.py/resnet.py,
torchvision's resnet34 with FairFace's 18-output ``fc``), not taken from faceetl's modules;
FaceNet's comes from faceetl's InceptionResnetV1 and is checked name by name against
facenet-pytorch's in test_predictor_embedding.py.
"""

from __future__ import annotations

import numpy as np
import torch

# ---------------------------------------------------------------- BiSeNet (79999_iter.pth)


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def _cbr(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple]:
    """ConvBNReLU: ``.conv`` (no bias) + ``.bn``."""
    return {f"{prefix}.conv.weight": (cout, cin, k, k), **_bn(f"{prefix}.bn", cout)}


def bisenet_layout() -> dict[str, tuple]:
    """Key -> shape of 79999_iter.pth as the official BiSeNet(n_classes=19) defines it."""
    s: dict[str, tuple] = {"cp.resnet.conv1.weight": (64, 3, 7, 7), **_bn("cp.resnet.bn1", 64)}
    cin = 64
    for li, cout in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"cp.resnet.layer{li}.{b}"
            i = cin if b == 0 else cout
            s[f"{p}.conv1.weight"] = (cout, i, 3, 3)
            s.update(_bn(f"{p}.bn1", cout))
            s[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            s.update(_bn(f"{p}.bn2", cout))
            if b == 0 and cin != cout:
                s[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                s.update(_bn(f"{p}.downsample.1", cout))
        cin = cout
    for name, c in (("arm16", 256), ("arm32", 512)):
        s.update(_cbr(f"cp.{name}.conv", c, 128, 3))
        s[f"cp.{name}.conv_atten.weight"] = (128, 128, 1, 1)
        s.update(_bn(f"cp.{name}.bn_atten", 128))
    s.update(_cbr("cp.conv_head32", 128, 128, 3))
    s.update(_cbr("cp.conv_head16", 128, 128, 3))
    s.update(_cbr("cp.conv_avg", 512, 128, 1))
    s.update(_cbr("ffm.convblk", 256, 256, 1))
    s["ffm.conv1.weight"] = (64, 256, 1, 1)
    s["ffm.conv2.weight"] = (256, 64, 1, 1)
    for head, cin_, mid in (
        ("conv_out", 256, 256),
        ("conv_out16", 128, 64),
        ("conv_out32", 128, 64),
    ):
        s.update(_cbr(f"{head}.conv", cin_, mid, 3))
        s[f"{head}.conv_out.weight"] = (19, mid, 1, 1)
    return s


def bisenet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in :func:`bisenet_layout` (finite through the network)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in bisenet_layout().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(80000, dtype=torch.long)
        elif k.endswith("running_var") or (len(shape) == 1 and k.endswith(".weight")):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1:  # bias, running_mean
            sd[k] = torch.randn(shape, generator=g) * 0.1
        else:
            sd[k] = torch.randn(shape, generator=g) / np.sqrt(np.prod(shape[1:]))
    return sd


# ---------------------------------------------------------------- FairFace (ResNet-34, fc 512->18)
# torchvision resnet34 keys, fc 512 -> 18, no "module." prefix (FairFace's predict.py loads the
# file strictly into a plain torchvision resnet34)


def fairface_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's resnet34 state dict with an 18-output fc."""
    spec: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            spec[f"{prefix}.{k}"] = (c,)
        spec[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    cin = 64
    for li, (c, n) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], 1):
        for b in range(n):
            p = f"layer{li}.{b}"
            first_in = cin if b == 0 else c
            spec[f"{p}.conv1.weight"] = (c, first_in, 3, 3)
            bn(f"{p}.bn1", c)
            spec[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if b == 0 and li > 1:
                spec[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                bn(f"{p}.downsample.1", c)
        cin = c
    spec["fc.weight"] = (18, 512)
    spec["fc.bias"] = (18,)
    return spec


def fairface_state_dict(seed: int = 0, n_out: int = 18) -> dict[str, torch.Tensor]:
    """Random tensors in :func:`fairface_layout` (``n_out`` outputs of ``fc``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in fairface_layout().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(".weight") and len(shape) == 1:  # BatchNorm scale
            # small on the residual branches so 16 blocks do not blow the activations up
            small = k.endswith("bn2.weight") or k.endswith("downsample.1.weight")
            sd[k] = torch.rand(shape, generator=g) * (0.2 if small else 0.5) + (
                0.1 if small else 0.5
            )
        elif k.startswith("fc."):
            shape = (n_out, *shape[1:])
            sd[k] = torch.randn(shape, generator=g) * 0.5
        elif len(shape) == 4:  # conv: He init keeps activations finite through 34 layers
            fan_in = shape[1] * shape[2] * shape[3]
            sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    return sd


# ---------------------------------------------------------------- FaceNet (20180402-114759-vggface2.pt)


def facenet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the key layout and shapes of 20180402-114759-vggface2.pt."""
    from faceetl.nets.inception_resnet_v1 import InceptionResnetV1

    g = torch.Generator().manual_seed(seed)
    sd = {}
    with torch.device("meta"):
        shapes = InceptionResnetV1().state_dict()
    for k, v in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("bn.weight", "last_bn.weight")):
            sd[k] = torch.ones(v.shape)
        else:
            sd[k] = torch.randn(v.shape, generator=g) * 0.02
    return sd
