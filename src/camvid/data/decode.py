"""Image decoding for the loader: JPEG through simplejpeg (libjpeg-turbo, wheels for Linux x86/arm,
macOS and Windows) when it is installed, everything else and the fallback through PIL.

Why simplejpeg: benchmarks/data.py measures PIL, simplejpeg, PyTurboJPEG and OpenCV on the same
16 x 256 x 256 JPEG frames (docs/performance.md). simplejpeg decodes them at least as fast as
OpenCV's ``cv2.imdecode`` in interleaved rounds, decodes into a given buffer (the batch's
shared-memory slot, so no copy), and in its strict mode rejects a damaged JPEG; OpenCV and PIL
return a decoded-looking frame for data damaged mid-scan (libjpeg only warns). All three give
PIL's pixels exactly with the wheels tested. PyTurboJPEG is a ctypes wrapper that needs a system
libturbojpeg >= 3.0 (not on pip; Debian 12 ships 2.1) and pillow-simd replaces Pillow with a
source build, so neither installs everywhere. The choice is made once at import;
:func:`announce_backend` logs it (the loader calls it once per process).

Threads: simplejpeg releases the GIL while it decodes, so :func:`decode_frames` can split a clip's
frames among threads. :func:`set_decode_threads` sets how many for this process; the loader sets it
in each DataLoader worker to the worker's share of the cores (``camvid.data.workers.decode_threads``:
a lone worker on a 2-core share decodes on 2 threads) and leaves the main process at 1, where the
training loop's own threads need the cores. The threads take the frames one by one, each decoded
straight into its place in the output; the result and the errors are those of the one-thread path.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

__all__ = ["decode_image", "decode_frames", "decode_with", "DECODERS", "jpeg_backend", "announce_backend",
           "set_decode_threads", "decode_threads"]

log = logging.getLogger(__name__)

try:  # optional fast path; PIL is always there
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None

_JPEG_MAGIC = b"\xff\xd8"


def _pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _simple(data: bytes) -> np.ndarray:
    return _simplejpeg.decode_jpeg(data, colorspace="RGB")


def _turbo():
    from turbojpeg import TJPF_RGB, TurboJPEG  # needs a system libturbojpeg

    tj = TurboJPEG()
    return lambda data: tj.decode(data, pixel_format=TJPF_RGB)


def _opencv():
    import cv2  # opencv-python-headless (the "bench" extra); IMREAD_COLOR_RGB needs OpenCV >= 4.10

    flag = cv2.IMREAD_COLOR_RGB

    def decode(data: bytes) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        if image is None:  # OpenCV's way of saying "cannot decode"
            raise ValueError("cv2.imdecode could not decode the data")
        return image

    return decode


DECODERS = {"pil": lambda: _pil, "simplejpeg": lambda: _simple if _simplejpeg else None, "turbojpeg": _turbo,
            "opencv": _opencv}


def decode_with(name: str):
    """A JPEG decoder by name (benchmarks); raises ImportError/OSError when it is not available."""
    fn = DECODERS[name]()
    if fn is None:
        raise ImportError(f"{name} is not installed")
    return fn


def jpeg_backend() -> str:
    """The decoder JPEG frames go through: ``"simplejpeg"``, or ``"pil"`` when it is missing."""
    return "simplejpeg" if _simplejpeg is not None else "pil"


_ANNOUNCED = False


def announce_backend() -> str:
    """Log the JPEG decoder once per process (a warning when it is the PIL fallback); returns its name."""
    global _ANNOUNCED
    name = jpeg_backend()
    if not _ANNOUNCED:
        _ANNOUNCED = True
        if name == "pil":
            log.warning("JPEG frames decode with PIL: simplejpeg is not installed (pip install simplejpeg, a "
                        "dependency of camvid). PIL decodes 1.4-1.8x slower (benchmarks/data.py) and, unlike simplejpeg's strict mode, "
                        "decodes a JPEG damaged mid-scan to a partly grey frame instead of rejecting it")
        else:
            log.info("JPEG frames decode with simplejpeg %s (libjpeg-turbo); PNG and CMYK JPEG with PIL",
                     getattr(_simplejpeg, "__version__", "?"))
    return name


_SIMPLE_COLORSPACES = ("YCbCr", "Gray", "RGB")  # others (CMYK, YCCK) go to PIL


def _jpeg_shape(data: bytes) -> tuple[int, int] | None:
    """(H, W) when simplejpeg will decode ``data`` to RGB, else None (PIL's turn)."""
    if _simplejpeg is None or data[:2] != _JPEG_MAGIC:
        return None
    h, w, colorspace, _ = _simplejpeg.decode_jpeg_header(data)  # ValueError: corrupt header
    return (h, w) if colorspace in _SIMPLE_COLORSPACES else None


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB from PNG/JPEG bytes; raises on corrupt data (simplejpeg in strict mode:
    a damaged JPEG is an error, never a half-grey frame)."""
    if _jpeg_shape(data) is not None:
        return _simple(data)
    return _pil(data)


_THREADS = 1
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, helper threads, executor) of this process


def set_decode_threads(threads: int) -> None:
    """Threads :func:`decode_frames` splits a clip's JPEG frames among in this process (1: the
    calling thread alone, the default)."""
    global _THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"decode threads must be an integer >= 1, got {threads!r}")
    _THREADS = threads


def decode_threads() -> int:
    """This process's decode threads (:func:`set_decode_threads`)."""
    return _THREADS


def _helpers(count: int) -> ThreadPoolExecutor:
    """``count`` helper threads of this process (a forked worker makes its own: threads do not survive a fork)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != count:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), count, ThreadPoolExecutor(count, thread_name_prefix="camvid-decode"))
    return _POOL[2]


def _decode_some(frames: list[tuple[bytes, str]], out: np.ndarray, claim) -> int | None:
    """Decode frames into ``out`` until none is left, each taking the next unclaimed index from
    ``claim`` (a shared ``itertools.count``: ``next`` on it is atomic under the GIL); the first index
    that fails or is not a JPEG of the clip's size (simplejpeg's RGB colour spaces), or None."""
    shape = out.shape[1:3]
    for i in claim:
        if i >= len(frames):
            return None
        try:
            if _jpeg_shape(frames[i][0]) != shape:
                return i
            _simplejpeg.decode_jpeg(frames[i][0], colorspace="RGB", buffer=out[i])
        except Exception:  # noqa: BLE001 - re-decoded on the one-thread path, which names the error
            return i
    return None


def _decode_threaded(frames: list[tuple[bytes, str]], given: np.ndarray | None, threads: int) -> np.ndarray | None:
    """The frames on ``threads`` threads when every one is a JPEG simplejpeg decodes to RGB and all
    have one size; None otherwise (and on any failure): the one-thread path then decodes them, with
    its errors. The threads take frames one at a time from a shared counter (each reads its frames'
    headers itself), so a thread that the scheduler holds back (the loader's read-ahead, the main
    process) just decodes fewer of them."""
    try:
        shape = _jpeg_shape(frames[0][0])
    except Exception:  # noqa: BLE001 - a corrupt header: the one-thread path names the frame
        return None
    if shape is None:
        return None
    out = _output(given, (len(frames), *shape, 3))
    claim = itertools.count()
    helpers = _helpers(_THREADS - 1)  # one pool per process, whatever the clip's frame count
    pending = [helpers.submit(_decode_some, frames, out, claim) for _ in range(threads - 1)]
    failed = [_decode_some(frames, out, claim)] + [f.result() for f in pending]
    return None if any(i is not None for i in failed) else out


def _output(given: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return given if given is not None and given.shape == shape else np.empty(shape, dtype=np.uint8)


def decode_frames(frames: list[tuple[bytes, str]], out: np.ndarray | None = None) -> np.ndarray:
    """(n, H, W, 3) uint8 from ``(bytes, where)`` pairs. JPEG frames are decoded straight into one
    array (no stacking copy): ``out`` when it has the frames' shape, else a new one. ``ValueError``
    names the frame that fails or differs in size. With :func:`set_decode_threads` > 1 the frames
    are split among that many threads (same pixels, same errors)."""
    threads = min(_THREADS, len(frames))
    if threads > 1 and _simplejpeg is not None:
        decoded = _decode_threaded(frames, out, threads)
        if decoded is not None:
            return decoded
    given, out = out, None
    for i, (data, where) in enumerate(frames):
        try:
            shape = _jpeg_shape(data)
            if shape is not None:
                if out is None:
                    out = _output(given, (len(frames), *shape, 3))
                elif shape != out.shape[1:3]:
                    raise ValueError(f"frame size {shape} differs from the clip's {out.shape[1:3]}")
                _simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out[i])
                continue
            image = _pil(data)
        except Exception as err:  # decoders raise several types for corrupt data
            raise ValueError(f"{where}: cannot decode image ({err})") from None
        if out is None:
            out = _output(given, (len(frames), *image.shape))
        elif image.shape != out.shape[1:]:
            raise ValueError(f"{where}: cannot decode image (frame size {image.shape[:2]} differs from the "
                             f"clip's {out.shape[1:3]})")
        out[i] = image
    if out is None:
        raise ValueError("no frames to decode")
    return out
