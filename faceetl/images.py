"""Image decoding at the edge: any file in, RGB uint8 out, or an :class:`ImageError` that says why.

Handles grayscale, palette, RGBA (composited on white), 16-bit, CMYK, EXIF orientation (faces
come out upright), PPM/PGM, and refuses decompression bombs and truncated files with a reason.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import storage

#: refuse images with more pixels than this (a decompression-bomb guard); 0 disables it.
#: ``FACEETL_MAX_PIXELS`` (read at each call, so workers see their own environment) overrides it.
MAX_PIXELS = 12_000 * 12_000
# Pillow's own guard (Image.MAX_IMAGE_PIXELS) is switched off while a header is read, under this
# lock, so that faceetl's limit decides both ways (above Pillow's default too, or none at all)
_PIL_GUARD = threading.Lock()


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels``, else the settings' (``faceetl.config``: applied
    in this task, configured, or $FACEETL_MAX_PIXELS), else MAX_PIXELS (0: no limit)."""
    if max_pixels is not None:
        return int(max_pixels)
    from . import config

    configured = config.current().max_pixels
    return MAX_PIXELS if configured is None else configured


# The frame holds paths as text. A name that is not valid UTF-8 (legal on Linux) has each byte
# that does not decode written as ``\xNN`` (NN in 80-ff, as Python's "backslashreplace" writes
# it), and a backslash that would read as such an escape (followed by ``x80``-``xff`` or by
# ``x5c``) as ``\x5c``: so ``frame_path`` is one-to-one and ``file_path`` its exact inverse.
_ESCAPE = re.compile(r"\\x(5[cC]|[89a-fA-F][0-9a-fA-F])")
_LITERAL = re.compile(r"\\(?=x(?:5[cC]|[89a-fA-F][0-9a-fA-F]))")


def frame_path(path: str | bytes | os.PathLike) -> str:
    """A path as the frame stores it: text, escaped where the name is not valid UTF-8 (see
    above); :func:`file_path` turns it back. Text without undecodable bytes is taken as a frame
    path already (what :func:`read_images` and the output's ``path`` column hold), so applying
    this twice changes nothing; bytes and ``os.PathLike`` paths are names as the OS gives them."""
    if isinstance(path, str) and not _has_surrogates(path):
        return path
    return escape_name(os.fsdecode(path))


def escape_name(name: str) -> str:
    """A name as the OS gives it (undecodable bytes as surrogates) in the frame's text form."""
    if os.name == "nt":  # Windows names are Unicode: nothing to escape
        return name
    name = _LITERAL.sub(r"\\x5c", name)
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _unescape(m: re.Match[str]) -> str:
    byte = int(m.group(1), 16)
    return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)  # surrogateescape's form of a byte


def file_path(path: str | os.PathLike) -> str:
    """The file-system path of a frame's ``path``: the exact inverse of :func:`frame_path`."""
    s = os.fspath(path)
    if "\\x" not in s or os.name == "nt":
        return s
    return _ESCAPE.sub(_unescape, s)


class ImageError(ValueError):
    """An input that is not a usable image; its message becomes the row's status."""


def load_image(
    path: str | os.PathLike,
    max_pixels: int | None = None,
    storage_options: dict | None = None,
) -> np.ndarray:
    """Decode ``path`` (a local path or an fsspec URL) to an upright RGB uint8 array (H, W, 3).

    Anything local that is not a regular file (a FIFO, socket or device) is refused without being
    opened, so it can never block the run.
    """
    return decode_image(read_image_bytes(path, storage_options), max_pixels=max_pixels)


def read_image_bytes(path: str | os.PathLike, storage_options: dict | None = None) -> bytes:
    """The encoded bytes of ``path`` (local or an fsspec URL), or an :class:`ImageError` saying
    why they cannot be read (see :func:`load_image`)."""
    if storage.is_url(path):
        return _read_url(os.fspath(path), storage_options)
    p = file_path(storage.local_path(path))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ImageError("broken symlink" if os.path.islink(p) else "file not found") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError("symlink loop") from None
        raise ImageError(f"cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file")
    return Path(p).read_bytes()


def _read_url(url: str, storage_options: dict | None) -> bytes:
    try:
        return storage.read_bytes(url, storage_options)
    except Exception as e:
        raise _url_error(e) from None


def _url_error(e: Exception) -> Exception:
    """What a failed read of a URL says (:class:`ImageError`); anything else as it is."""
    if isinstance(e, FileNotFoundError):
        return ImageError("file not found")
    if isinstance(e, IsADirectoryError):
        return ImageError("is a directory")
    if isinstance(e, (OSError, ValueError)):  # permissions, network, a bucket that does not exist
        return ImageError(f"cannot read ({type(e).__name__}: {e})")
    return e


def read_url_bytes(
    urls: list[str], storage_options: dict | None = None
) -> list[bytes | Exception]:
    """The encoded bytes of each of ``urls``, requested together (:func:`faceetl.storage.read_many`),
    or in its place the error :func:`read_image_bytes` would raise for it."""
    got = storage.read_many(urls, storage_options)
    return [d if isinstance(d, bytes) else _url_error(d) for d in got]


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an upright RGB uint8 array (H, W, 3)."""
    limit = max_pixels_limit(max_pixels)
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _PIL_GUARD:  # faceetl's limit below replaces Pillow's (see _PIL_GUARD)
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(io.BytesIO(data))
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
            w, h = im.size
            if limit and w * h > limit:
                raise ImageError(f"image too large ({w}x{h} > {limit} pixels)")
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb8(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image too large ({e})") from None
    except OSError as e:  # truncated or corrupt data
        raise ImageError(f"corrupt image ({e})") from None
    except (ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"corrupt image ({e})") from None


def _to_rgb8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


#: crop formats: name -> (file extension, name of the cv2 quality flag, default quality); the
#: flag by name so that importing this module does not import cv2
CROP_FORMATS = {
    "png": ("png", None, None),
    "jpeg": ("jpg", "IMWRITE_JPEG_QUALITY", 95),
    "webp": ("webp", "IMWRITE_WEBP_QUALITY", 90),  # quality above 100: lossless
}


def parse_crop_format(fmt: str) -> tuple[str, int | None]:
    """``"png"``, ``"jpeg"``, ``"jpeg:85"``, ``"webp"``, ``"webp:101"`` -> (name, quality)."""
    name, _, q = str(fmt).lower().partition(":")
    name = {"jpg": "jpeg"}.get(name, name)
    if name not in CROP_FORMATS:
        raise ValueError(f"unknown crop format {fmt!r}: use one of {sorted(CROP_FORMATS)}")
    if q and name == "png":
        raise ValueError("png crops are lossless: they take no quality")
    quality = int(q) if q else CROP_FORMATS[name][2]
    if quality is not None and not 1 <= quality <= (101 if name == "webp" else 100):
        raise ValueError(f"crop quality {quality} out of range for {name}")
    return name, quality


def crop_extension(fmt: str) -> str:
    """The file extension (no dot) of crops in format ``fmt``."""
    return CROP_FORMATS[parse_crop_format(fmt)[0]][0]


def encode_crop(rgb: np.ndarray, fmt: str = "png") -> bytes:
    """Bytes of an RGB uint8 crop in ``fmt`` (see :func:`parse_crop_format`)."""
    import cv2

    name, quality = parse_crop_format(fmt)
    ext, flag, _ = CROP_FORMATS[name]
    params = [] if flag is None else [int(getattr(cv2, flag)), int(quality)]
    ok, buf = cv2.imencode(f".{ext}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"{name} encoding failed")
    return buf.tobytes()


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """RGB uint8 array of PNG (or JPEG, WebP) bytes, e.g. a ``crop`` cell."""
    import cv2

    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if a is None:
        raise ValueError("cannot decode image bytes")
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB)
