"""Per-core speed of each faceetl backend beside the library it wraps, in one run.

On the same photos (the shared group, single-face and PASCAL photos: 16), decoded beforehand,
one process, one thread (``OMP_NUM_THREADS=1``, ``cv2.setNumThreads(1)``,
``torch.set_num_threads(1)``), each pair is timed in turns (faceetl, peer, faceetl, peer, ...)
and the best of ``--repeat`` passes over all photos counts, after one warm-up pass each:

- opencv: faceetl's default (Haar face cascade + O-Net's five points on each box), with the
  Haar eye search (``landmarks="haar"``) and boxes only (``landmarks=None``), against OpenCV's
  Haar cascade called directly (the same ``frontalface_alt`` file, ``detectMultiScale``
  defaults, gray image; boxes only);
- ssd: the same three (the network run in torch, faceetl's default) and the network run in
  OpenCV DNN (``engine="opencv"``, O-Net's points) against OpenCV's DNN res10 SSD called
  directly (300x300 blob, the model's mean, confidence > 0.5; boxes only);
- dlib: faceetl's default (HOG, upsample 1, 68 points) against dlib's HOG detector and 68-point
  shape predictor called directly;
- mediapipe: like with like. faceetl's default (short model, O-Net's five points on each face)
  against MediaPipe plus a landmark pass: MediaPipe's own Tasks ``FaceDetector`` on the same
  model file, then dlib's 5-point shape predictor on each face it finds, timed together
  (``mediapipe_tasks_peer.py --landmarks dlib5``). Without refinement (``refine=None``) and with
  the second BlazeFace pass on small faces (``refine="blazeface"``) against the Tasks
  ``FaceDetector`` alone (``mediapipe_tasks_peer.py``); ``refine=None`` also against the same
  model through LiteRT called directly with only the work any caller must do (resize to 128,
  scale to [-1, 1], invoke, scores through a sigmoid) -- a lower bound for any wrapper, not a
  product. The Tasks peers run in an interpreter that has the ``mediapipe``, ``dlib-bin`` and
  ``face_recognition_models`` packages (``--mediapipe-python``, by default this one if it
  imports mediapipe), pinned to the same one core;
- mtcnn: faceetl against facenet-pytorch's ``MTCNN(keep_all=True).detect``, one image per
  call, in an interpreter that has it (it pins torch<2.3: ``python -m venv /tmp/fnvenv &&
  /tmp/fnvenv/bin/pip install facenet-pytorch``, then ``--facenet-python
  /tmp/fnvenv/bin/python``; ``facenet_mtcnn_peer.py``, pinned to the same one core);
- retinaface: faceetl against a loop in the reference scripts' style: per image, BGR minus the
  mean at full resolution through the same network, priors, decode, score > 0.02, NMS 0.4.

It prints ms per photo, faces found and the ratio faceetl / peer (goal: <= 1.0), and writes the
table as JSON with ``--json``.

    python benchmarks/peers.py --repeat 3 --json peers.json
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("FACEETL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FOLDERS = ("group", "single", "dlib_pascal")


def photos() -> list[np.ndarray]:
    """The benchmark photos as RGB uint8."""
    from faceetl.images import load_image

    paths = sorted(p for f in FOLDERS for p in (SHARED / "images" / f).iterdir())
    return [load_image(str(p)) for p in paths if p.suffix.lower() in {".jpg", ".png"}]


class FaceetlRunner:
    """The faceetl backend over the photos, ``batch`` photos a call: 1 (the default) as each
    peer is called; the pipeline's calls hold 16 (``DEFAULT_BATCH_SIZE``), which lets a
    landmark stage run once for all faces of the batch."""

    def __init__(self, backend: str, batch: int = 1, **params) -> None:
        import faceetl

        self.det = faceetl.get_backend(backend, **params)
        self.batch = batch

    def timed_pass(self, images: list[np.ndarray]) -> tuple[float, int]:
        start = time.perf_counter()
        faces = 0
        for i in range(0, len(images), self.batch):
            faces += sum(len(d) for d in self.det.detect_batch(images[i : i + self.batch]))
        return time.perf_counter() - start, faces


def peer_opencv() -> Callable[[np.ndarray], int]:
    import cv2

    cc = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt.xml")

    def run(im: np.ndarray) -> int:
        return len(cc.detectMultiScale(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)))

    return run


def peer_ssd() -> Callable[[np.ndarray], int]:
    import cv2

    from faceetl.weights import fetch

    net = cv2.dnn.readNetFromTensorflow(str(fetch("ssd_tf_uint8")), str(fetch("ssd_tf_pbtxt")))

    def run(im: np.ndarray) -> int:
        bgr = cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
        net.setInput(cv2.dnn.blobFromImage(bgr, 1.0, (300, 300), (104, 177, 123)))
        out = net.forward()
        return int((out[0, 0, :, 2] > 0.5).sum())

    return run


def peer_dlib() -> Callable[[np.ndarray], int]:
    import dlib

    from faceetl.backends.dlib import predictor_path  # the file in face_recognition_models

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(predictor_path("68")))

    def run(im: np.ndarray) -> int:
        rects = det(im, 1)
        for r in rects:
            sp(im, r)
        return len(rects)

    return run


def peer_mediapipe() -> Callable[[np.ndarray], int]:
    import cv2
    from ai_edge_litert.interpreter import Interpreter

    from faceetl.weights import fetch

    it = Interpreter(model_path=str(fetch("mediapipe_face_detection_short_range")))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()
    scores_idx = next(o["index"] for o in out if o["shape"][-1] == 1)

    def run(im: np.ndarray) -> int:
        x = cv2.resize(im, (128, 128)).astype(np.float32) / 127.5 - 1.0
        it.set_tensor(inp["index"], x[None])
        it.invoke()
        logits = it.get_tensor(scores_idx).ravel().astype(np.float64)
        s = 1.0 / (1.0 + np.exp(-np.clip(logits, -100, 100)))
        return int((s > 0.5).sum())  # raw anchors over the threshold (no NMS): not a face count

    return run


class ExternalPeer:
    """A peer library in its own interpreter (a ``*_peer.py`` script beside this one), started
    on the first pass with the same decoded photos (an .npz); one pass per :meth:`timed_pass`.

    For libraries whose pins clash with faceetl's environment (mediapipe: OpenCV's GUI build;
    facenet-pytorch: torch<2.3). The script pins itself to the same one core.
    """

    def __init__(self, python: str, script: str, *args: str) -> None:
        self.python, self.script, self.args = python, script, args
        self.proc: subprocess.Popen | None = None
        self.tmp = tempfile.TemporaryDirectory()

    def _start(self, images: list[np.ndarray]) -> None:
        npz = Path(self.tmp.name) / "images.npz"
        np.savez(npz, **{f"img{i}": im for i, im in enumerate(images)})
        script = Path(__file__).with_name(self.script)
        self.proc = subprocess.Popen(
            [self.python, str(script), *self.args, str(npz)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{self.script} did not start (said {line!r})")

    def timed_pass(self, images: list[np.ndarray]) -> tuple[float, int]:
        if self.proc is None:
            self._start(images)
        self.proc.stdin.write("pass\n")
        self.proc.stdin.flush()
        seconds, faces = self.proc.stdout.readline().split()
        return float(seconds), int(faces)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.tmp.cleanup()


#: interpreters holding the peer libraries that cannot live beside faceetl (set in main)
PYTHONS: dict[str, str | None] = {"mediapipe": None, "facenet": None}


def peer_mediapipe_tasks(*flags: str) -> ExternalPeer | None:
    """MediaPipe's Tasks ``FaceDetector`` on faceetl's short-range model file, alone."""
    from faceetl.weights import fetch

    if PYTHONS["mediapipe"] is None:
        return None
    model = str(fetch("mediapipe_face_detection_short_range"))
    return ExternalPeer(PYTHONS["mediapipe"], "mediapipe_tasks_peer.py", model, *flags)


def peer_mediapipe_tasks_dlib5() -> ExternalPeer | None:
    """MediaPipe plus a landmark pass: the Tasks ``FaceDetector``, then dlib's 5-point shape
    predictor on every face it finds (the peer of faceetl's default, five points a face)."""
    return peer_mediapipe_tasks("--landmarks", "dlib5")


def peer_mtcnn() -> Callable[[np.ndarray], int] | ExternalPeer | None:
    if PYTHONS["facenet"] is not None:
        return ExternalPeer(PYTHONS["facenet"], "facenet_mtcnn_peer.py")
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        return None
    m = MTCNN(keep_all=True, device="cpu")

    def run(im: np.ndarray) -> int:
        boxes, _ = m.detect(im)
        return 0 if boxes is None else len(boxes)

    return run


def peer_retinaface() -> Callable[[np.ndarray], int]:
    import torch

    from faceetl.nets.nms import batched_nms
    from faceetl.nets.retinaface import retinaface
    from faceetl.nets.retinaface_priors import decode_boxes, priors_for
    from faceetl.weights import fetch

    net = retinaface("mobilenet0.25", str(fetch("retinaface_mobilenet0.25"))).eval()
    mean = torch.tensor([104.0, 117.0, 123.0]).view(3, 1, 1)

    @torch.inference_mode()
    def run(im: np.ndarray) -> int:
        h, w = im.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1])).permute(2, 0, 1).float()
        loc, logits, _ = net((x - mean)[None])
        boxes = decode_boxes(loc[0], priors_for(h, w)) * torch.tensor([w, h, w, h])
        scores = torch.softmax(logits[0], -1)[:, 1]
        keep = scores > 0.02
        b, s = boxes[keep], scores[keep]
        kept = batched_nms(b, s, torch.zeros(len(s), dtype=torch.long), 0.4)
        return int((s[kept] > 0.5).sum())

    return run


#: (row label, faceetl backend, its parameters, the peer's maker, the peer's name)
PAIRS: list[tuple[str, str, dict, Callable[[], Callable | None], str]] = [
    ("opencv", "opencv", {}, peer_opencv, "OpenCV Haar, direct"),
    ("opencv landmarks=haar", "opencv", {"landmarks": "haar"}, peer_opencv, "OpenCV Haar, direct"),
    ("opencv landmarks=None", "opencv", {"landmarks": None}, peer_opencv, "OpenCV Haar, direct"),
    ("ssd", "ssd", {}, peer_ssd, "OpenCV DNN SSD, direct"),
    ("ssd landmarks=haar", "ssd", {"landmarks": "haar"}, peer_ssd, "OpenCV DNN SSD, direct"),
    ("ssd landmarks=None", "ssd", {"landmarks": None}, peer_ssd, "OpenCV DNN SSD, direct"),
    ("ssd engine=opencv", "ssd", {"engine": "opencv"}, peer_ssd, "OpenCV DNN SSD, direct"),
    ("dlib", "dlib", {}, peer_dlib, "dlib HOG + 68 points, direct"),
    (
        "mediapipe",
        "mediapipe",
        {},
        peer_mediapipe_tasks_dlib5,
        "MediaPipe Tasks FaceDetector + dlib 5-point predictor",
    ),
    (
        "mediapipe refine=blazeface",
        "mediapipe",
        {"refine": "blazeface"},
        peer_mediapipe_tasks,
        "MediaPipe Tasks FaceDetector",
    ),
    (
        "mediapipe refine=None",
        "mediapipe",
        {"refine": None},
        peer_mediapipe_tasks,
        "MediaPipe Tasks FaceDetector",
    ),
    (
        "mediapipe refine=None",
        "mediapipe",
        {"refine": None},
        peer_mediapipe,
        "LiteRT invoke + sigmoid (lower bound)",
    ),
    ("mtcnn", "mtcnn", {}, peer_mtcnn, "facenet-pytorch MTCNN"),
    ("retinaface", "retinaface", {}, peer_retinaface, "reference-style loop, same net"),
]


def best_pass(fn: Callable[[np.ndarray], int], images: list[np.ndarray]) -> tuple[float, int]:
    """Seconds of one pass over ``images`` and the faces found."""
    if isinstance(fn, ExternalPeer | FaceetlRunner):
        return fn.timed_pass(images)
    start = time.perf_counter()
    faces = sum(fn(im) for im in images)
    return time.perf_counter() - start, faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default=",".join(dict.fromkeys(p[1] for p in PAIRS)))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--batch",
        type=int,
        default=1,
        help="photos per faceetl call (the pipeline's calls hold 16); the peers take one each",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--mediapipe-python",
        default=sys.executable if importlib.util.find_spec("mediapipe") else None,
        help="an interpreter with the mediapipe package, for the Tasks API peer",
    )
    ap.add_argument(
        "--facenet-python",
        default=None,
        help="an interpreter with facenet-pytorch (and its torch<2.3), for the mtcnn peer; "
        "without it, facenet_pytorch is imported here where it can be",
    )
    args = ap.parse_args()
    PYTHONS.update(mediapipe=args.mediapipe_python, facenet=args.facenet_python)
    # one core for everything timed (the Tasks peer pins itself to the same one)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    images = photos()
    rows = []
    wanted = args.backends.split(",")
    for label, name, params, make_peer, peer_name in PAIRS:
        if name not in wanted:
            continue
        try:
            ours, peer = FaceetlRunner(name, args.batch, **params), make_peer()
        except ImportError as exc:
            print(f"{label}: skipped ({exc})")
            continue
        runners = {"faceetl": ours} | ({"peer": peer} if peer is not None else {})
        times: dict[str, list[float]] = {k: [] for k in runners}
        faces: dict[str, int] = {}
        try:
            for fn in runners.values():
                best_pass(fn, images)  # warm-up: models loaded, per-shape kernels built
        except RuntimeError as exc:  # an external peer that did not start (its stderr says why)
            print(f"{label}: skipped ({exc})")
            if isinstance(peer, ExternalPeer):
                peer.close()
            continue
        for _ in range(args.repeat):
            for k, fn in runners.items():
                t, faces[k] = best_pass(fn, images)
                times[k].append(t)
        if isinstance(peer, ExternalPeer):
            peer.close()
        ms = {k: 1000 * min(v) / len(images) for k, v in times.items()}
        row = {
            "backend": label,
            "peer": peer_name if peer is not None else f"{peer_name} (not installed)",
            "faceetl_ms": round(ms["faceetl"], 1),
            "peer_ms": round(ms["peer"], 1) if "peer" in ms else None,
            "ratio": round(ms["faceetl"] / ms["peer"], 2) if "peer" in ms else None,
            "faceetl_faces": faces["faceetl"],
            "batch": args.batch,
            "peer_faces": faces.get("peer"),
        }
        rows.append(row)
        print(
            f"{label:18s} faceetl {row['faceetl_ms']:7.1f} ms/img ({row['faceetl_faces']:3d} faces)"
            f" | {row['peer']}: {row['peer_ms']} ms/img ({row['peer_faces']} faces)"
            f" | ratio {row['ratio']}",
            flush=True,
        )
    print(
        f"{len(images)} photos, one thread, best of {args.repeat} passes, "
        f"{args.batch} photo(s) a faceetl call"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
