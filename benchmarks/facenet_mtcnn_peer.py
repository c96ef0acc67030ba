"""facenet-pytorch's ``MTCNN(keep_all=True).detect``, timed pass by pass for ``peers.py``.

Run by ``peers.py`` in an interpreter that has ``facenet-pytorch`` (it pins torch<2.3 and
torchvision<0.18, so it lives in a separate environment), pinned to one core, one torch thread:

    python facenet_mtcnn_peer.py IMAGES.npz

``IMAGES.npz`` holds the decoded RGB photos (``img0``, ``img1``, ...), the same arrays faceetl is
timed on; facenet-pytorch's defaults (min face 20, thresholds 0.6/0.7/0.7, factor 0.709), one
image per call as its README shows. It answers ``peers.py`` as
``peer_protocol.py`` says.
"""

from __future__ import annotations

import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

from peer_protocol import load_images, pin_one_core, serve  # noqa: E402


def main() -> None:
    import torch
    from facenet_pytorch import MTCNN

    pin_one_core()
    torch.set_num_threads(1)
    images = load_images(sys.argv[1])
    mtcnn = MTCNN(keep_all=True, device="cpu")

    def one_pass() -> tuple[float, int]:
        start = time.perf_counter()
        faces = 0
        for im in images:
            boxes, _ = mtcnn.detect(im)
            faces += 0 if boxes is None else len(boxes)
        return time.perf_counter() - start, faces

    serve(one_pass)


if __name__ == "__main__":
    main()
