"""The backend contract, checked once on every registered backend (``list_backends()``).

A backend answers an empty batch with ``[]`` and refuses anything but RGB uint8 (H, W, 3)
images with one ValueError; gives one well-formed Detections per image, in order, the same as
the image alone (boxes inside the image, scores in [score_threshold, 1] best first, landmark
points finite or NaN: :func:`helpers.assert_valid_detections`); records JSON provenance with
``backend``, ``weights`` (sha256) and ``device``; keeps exactly the faces scoring above its
``score_threshold``. The parameter names replaced by the shared vocabulary still work for one
release, with a FutureWarning. And a new backend is one file plus its registration: one
written here runs through ``faceetl.extract_faces`` and this contract.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import faceetl
from faceetl.backends.base import (
    REGISTRY,
    Detections,
    Detector,
    backend_spec,
    evaluation_params,
    get_backend,
    list_backends,
)
from faceetl.backends.params import VOCABULARY
from faceetl.boxes import box_iou
from helpers import IMAGES, assert_valid_detections, load_rgb

BACKENDS = list_backends()

#: photos with several faces, one face, and tight aligned crops (where a detector's raw boxes
#: hang off the image)
PHOTOS = [
    IMAGES / "group" / "facenet_multiface.jpg",
    IMAGES / "group" / "fr_two_people.jpg",
    IMAGES / "landmarks" / "takeo.ppm",
    IMAGES / "single" / "fr_obama_small.jpg",
    *sorted((IMAGES / "aligned").iterdir()),
]
#: images with nothing in them: black, tiny grey, small white
BLANK = [
    np.zeros((240, 320, 3), np.uint8),
    np.full((20, 30, 3), 128, np.uint8),
    np.full((64, 48, 3), 255, np.uint8),
]
#: indices of the images also run alone (group, portrait, aligned crop, black)
ALONE = [0, 2, 4, len(PHOTOS)]

#: inputs that are not RGB uint8 (H, W, 3) images
NOT_RGB = {
    "gray": np.zeros((40, 30), np.uint8),
    "rgba": np.zeros((40, 30, 4), np.uint8),
    "one channel": np.zeros((40, 30, 1), np.uint8),
    "float": np.zeros((40, 30, 3), np.float32),
    "uint16": np.zeros((40, 30, 3), np.uint16),
    "no pixels": np.zeros((0, 30, 3), np.uint8),
    "batch array": np.zeros((2, 40, 30, 3), np.uint8),
}
REFUSAL = r"expected an RGB uint8 image \(H, W, 3\), got \w+ \(.*\) \(image 1 of the batch\)"


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [load_rgb(p) for p in PHOTOS] + BLANK


@pytest.fixture(scope="module", params=BACKENDS)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def detector(name: str) -> Detector:
    return get_backend(name)


@pytest.fixture(scope="module")
def found(detector: Detector, images: list[np.ndarray]) -> list[Detections]:
    return detector.detect_batch(images)


# ----------------------------------------------------------------------------- the checks


def check_inputs(detector: Detector, image: np.ndarray) -> None:
    """An empty batch gives []; a batch holding a non-RGB-uint8 image is refused, naming it."""
    assert detector.detect_batch([]) == []
    for bad in NOT_RGB.values():
        with pytest.raises(ValueError, match=REFUSAL):
            detector.detect_batch([image, bad])


def check_results(detector: Detector, images: list[np.ndarray], found: list[Detections]) -> None:
    """One well-formed Detections per image, faces in the photos, none in the blank images,
    and each image's result the same as when it runs alone."""
    assert len(found) == len(images)
    for det, image in zip(found, images, strict=True):
        assert_valid_detections(det, image, detector.score_threshold)
    assert sum(len(d) for d in found[:2]) >= 2
    assert [len(d) for d in found[len(PHOTOS) :]] == [0] * len(BLANK)
    for i in ALONE:
        alone = detector.detect_batch([images[i]])[0]
        assert len(alone) == len(found[i]), i
        np.testing.assert_allclose(alone.boxes, found[i].boxes, atol=1e-3)
        np.testing.assert_allclose(alone.scores, found[i].scores, atol=1e-5)
        np.testing.assert_allclose(alone.landmarks, found[i].landmarks, atol=1e-3)


def check_provenance(name: str, detector: Detector) -> None:
    """JSON (no NaN) with the backend's name, weight hashes, device and score threshold."""
    prov = json.loads(json.dumps(detector.provenance(), allow_nan=False))
    assert prov["backend"] == name
    assert prov["weights"] and all(
        re.fullmatch("[0-9a-f]{64}", v) for v in prov["weights"].values()
    )
    assert prov["device"].split(":")[0] in ("cpu", "cuda")
    assert prov["score_threshold"] == detector.score_threshold


def check_score_threshold(name: str, images: list[np.ndarray], found: list[Detections]) -> None:
    """A higher ``score_threshold`` keeps the faces scoring above it (same scores, same faces)."""
    k = max(range(len(found)), key=lambda i: len(np.unique(found[i].scores)))
    scores = np.unique(found[k].scores)[::-1]
    assert len(scores) >= 2
    mid = len(scores) // 2
    t = float(scores[mid - 1] + scores[mid]) / 2  # between two of the scores
    high = get_backend(name, score_threshold=t).detect_batch([images[k]])[0]
    want = found[k].select(found[k].scores > t)
    assert 0 < len(high) == len(want) < len(found[k])
    np.testing.assert_allclose(high.scores, want.scores, atol=1e-6)
    assert (np.diag(box_iou(high.boxes, want.boxes)) > 0.5).all()


# ----------------------------------------------------------------------------- every backend


def test_inputs(detector: Detector, images: list[np.ndarray]) -> None:
    check_inputs(detector, images[3])


def test_results(detector: Detector, images: list[np.ndarray], found: list[Detections]) -> None:
    check_results(detector, images, found)


def test_provenance(name: str, detector: Detector) -> None:
    check_provenance(name, detector)


def test_score_threshold(name: str, images: list[np.ndarray], found: list[Detections]) -> None:
    check_score_threshold(name, images, found)


def test_parameters_speak_the_vocabulary(name: str) -> None:
    """``score_threshold`` everywhere; old names only as deprecated aliases of shared ones;
    the evaluation settings are parameters of the backend."""
    spec = backend_spec(name)
    params = inspect.signature(spec.factory).parameters
    assert "score_threshold" in params
    renames = getattr(spec.factory.__init__, "renamed", {})
    assert not set(renames) & set(params)
    for new in renames.values():
        assert not isinstance(new, str) or (new in VOCABULARY and new in params)
    assert set(spec.evaluation) <= set(params)


# ----------------------------------------------------------------------------- old names

#: (backend, deprecated parameters, the same in the shared vocabulary); each changes the result
RENAMED = [
    ("retinaface", {"conf_threshold": 0.02}, {"score_threshold": 0.02}),
    ("retinaface", {"max_size": 640}, {"max_side": 640}),
    ("mediapipe", {"min_detection_confidence": 0.3}, {"score_threshold": 0.3}),
    ("mediapipe", {"min_suppression_threshold": 0.9}, {"nms_threshold": 0.9}),
    ("ssd", {"confidence": 0.98}, {"score_threshold": 0.98}),
    ("ssd", {"min_box": 100}, {"min_face_size": 100}),
    ("opencv", {"min_size": 100}, {"min_face_size": 100}),
    # dlib's old threshold was in raw margin units; the score is its sigmoid
    ("dlib", {"threshold": 1.0}, {"score_threshold": 1.0 / (1.0 + np.exp(-1.0))}),
    (
        "mtcnn",
        {"thresholds": (0.6, 0.7, 0.999)},
        {"stage_thresholds": (0.6, 0.7), "score_threshold": 0.999},
    ),
]


def _same(a: list[Detections], b: list[Detections]) -> bool:
    return all(
        len(x) == len(y)
        and np.array_equal(x.boxes, y.boxes)
        and np.array_equal(x.scores, y.scores)
        and np.array_equal(x.landmarks, y.landmarks, equal_nan=True)
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(
    "name,old,new", RENAMED, ids=[f"{n}-{next(iter(o))}" for n, o, _ in RENAMED]
)
def test_old_name_warns_and_behaves_the_same(
    name: str, old: dict[str, Any], new: dict[str, Any], images: list[np.ndarray]
) -> None:
    factory = backend_spec(name).factory
    (old_name,) = old
    new_names = " and ".join(f"'{n}'" for n in new)
    with pytest.warns(FutureWarning, match=f"'{old_name}' is deprecated.*use {new_names}"):
        before = factory(**old)
    after = factory(**new)
    assert before.provenance() == after.provenance()
    photos = images[:4]
    got = before.detect_batch(photos)
    assert _same(got, after.detect_batch(photos))
    assert not _same(got, get_backend(name).detect_batch(photos))  # the parameter is in effect
    with pytest.raises(TypeError, match=f"got both '{old_name}' and '.*': pass only"):
        factory(**old, **new)


def test_evaluation_params() -> None:
    """The WIDER FACE settings come from the backends' registrations, overridable, old names too."""
    assert evaluation_params("retinaface") == {"score_threshold": 0.02, "max_side": None}
    assert evaluation_params("opencv") == {"max_side": None}
    assert evaluation_params("dlib") == {}
    want = {"score_threshold": 0.3, "max_side": None}
    assert evaluation_params("retinaface", score_threshold=0.3) == want
    with pytest.warns(FutureWarning, match="use 'score_threshold'"):
        assert evaluation_params("retinaface", conf_threshold=0.3) == want
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        evaluation_params("nope")


# ----------------------------------------------------------------------------- a new backend

PLUGIN = '''"""A whole backend in one file: OpenCV's default face cascade, scored by neighbours."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceetl.backends.base import BaseDetector, Detections, register_backend

CASCADE = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"


@register_backend("NAME", workers=1, evaluation={"min_face_size": 20})
class HaarDetector(BaseDetector):
    def __init__(self, *, score_threshold: float = 0.0, min_face_size: int = 30) -> None:
        self.score_threshold = float(score_threshold)
        self.min_face_size = int(min_face_size)
        self._cascade = cv2.CascadeClassifier(str(CASCADE))
        self._weights = {CASCADE.name: hashlib.sha256(CASCADE.read_bytes()).hexdigest()}

    def _detect_one(self, image: np.ndarray) -> Detections:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        size = (self.min_face_size, self.min_face_size)
        rects, neighbours = self._cascade.detectMultiScale2(gray, 1.1, 3, minSize=size)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        n = np.asarray(neighbours, np.float32).reshape(-1)
        scores = n / (n + 5)
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= self.score_threshold]
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        return Detections(boxes[order], scores[order], None)

    def _parameters(self) -> dict[str, Any]:
        return {"score_threshold": self.score_threshold, "min_face_size": self.min_face_size}
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a backend registered by a module file written to ``tmp_path`` (forgotten
    afterwards)."""
    name = f"haar_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN.replace("NAME", name))
    monkeypatch.setattr(REGISTRY, "_specs", dict(REGISTRY._specs))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert name not in list_backends()
    importlib.import_module(name)
    try:
        yield name
    finally:
        sys.modules.pop(name, None)


def test_a_new_backend_is_one_file(plugin: str, images: list[np.ndarray]) -> None:
    assert plugin in list_backends() and backend_spec(plugin).workers == 1
    cascade = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    sha = hashlib.sha256(cascade.read_bytes()).hexdigest()
    paths = [str(p) for p in PHOTOS[:4]]
    df = faceetl.extract_faces(paths, backend=plugin, keep_crops=False).compute(scheduler="sync")
    assert set(df["backend"]) == {plugin}
    ok = df[df["status"] == "ok"]
    assert set(ok["path"]) == set(paths) and len(ok) >= 9  # 6 + 1 + 1 + 1 faces
    prov = json.loads(ok["provenance"].iloc[0])["backend"]
    assert prov["backend"] == plugin and prov["weights"] == {cascade.name: sha}
    assert evaluation_params(plugin) == {"min_face_size": 20}

    detector = get_backend(plugin)
    check_inputs(detector, images[3])
    found = detector.detect_batch(images)
    check_results(detector, images, found)
    check_provenance(plugin, detector)
    check_score_threshold(plugin, images, found)


@pytest.mark.parametrize("name", BACKENDS)
def test_extreme_aspect_ratios_have_no_face(name: str) -> None:
    """Valid but extreme images (10 x 100000 and the other way round, 1 px thin) give no face,
    never an error: OpenCV's resize failed on them and MediaPipe aborted the whole process."""
    rng = np.random.default_rng(0)
    det = get_backend(name)
    for shape in ((10, 100_000, 3), (100_000, 10, 3), (1, 5000, 3), (40_000, 64, 3)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        (found,) = det.detect_batch([img])
        assert len(found) == 0, (name, shape)


def test_extreme_aspect_ratio_is_a_no_face_row(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    cv2.imwrite(str(path), np.full((10, 100_000, 3), 127, np.uint8))
    for name in ("opencv", "mediapipe"):
        df = faceetl.extract_faces([str(path)], backend=name).compute(scheduler="sync")
        assert df["status"].tolist() == ["no_face"], name


def test_an_old_name_warns_once_at_the_users_line() -> None:
    """The FutureWarning (shown by default) points at the line the user wrote, once, whatever
    runs after: the workers get the new name."""
    import warnings

    import dask

    import faceetl
    from helpers import IMAGES

    photo = str(IMAGES / "single" / "fr_obama_small.jpg")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        faces = faceetl.extract_faces([photo], backend="retinaface", conf_threshold=0.5)
        pife_line = sys._getframe().f_lineno + 1
        pife = faceetl.Pife("retinaface", 1, conf_threshold=0.5)
        with dask.config.set(scheduler="threads"):
            faces.compute()
    ours = [w for w in seen
            if issubclass(w.category, FutureWarning) and "conf_threshold" in str(w.message)]
    assert [(w.filename, w.lineno) for w in ours] == [(__file__, line), (__file__, pife_line)]
    assert "use 'score_threshold'" in str(ours[0].message)
    assert pife.backend_params == {"score_threshold": 0.5}
