"""The side of ``peers.py``'s external peers that runs in the peer's own interpreter.

A ``*_peer.py`` script pins itself to one core (:func:`pin_one_core`), loads the photos
(:func:`load_images`) and its library, then hands its pass function to :func:`serve`: one
warm-up pass, ``ready``, then one timed pass per ``pass`` line on stdin, answered with
``<seconds> <faces>``, until end of input. Only numpy is needed, so any environment can run it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np


def pin_one_core() -> None:
    """This process on the first of its cores, whatever threads the library starts."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def load_images(npz: str) -> list[np.ndarray]:
    """The decoded RGB photos ``img0``, ``img1``, ... of the .npz ``peers.py`` wrote, in order."""
    with np.load(npz) as z:
        return [z[k] for k in sorted(z.files, key=lambda k: int(k[3:]))]


def serve(one_pass: Callable[[], tuple[float, int]]) -> None:
    """Answer ``peers.py``: warm up, say ``ready``, then time a pass per ``pass`` line."""
    one_pass()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "pass":
            seconds, faces = one_pass()
            print(f"{seconds} {faces}", flush=True)
