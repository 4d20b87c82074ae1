"""Image decoding for the loader: JPEG through simplejpeg (libjpeg-turbo, wheels on every major
platform) when it is installed, everything else and the fallback through PIL.

benchmarks/data.py measures the decoders side by side (docs/performance.md): simplejpeg decodes
the 256x256 JPEG frames the loader reads faster than PIL. PyTurboJPEG needs a system libturbojpeg
and pillow-simd replaces Pillow with a source build, so neither is a dependency.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["decode_image", "decode_with", "DECODERS", "jpeg_backend"]

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


DECODERS = {"pil": lambda: _pil, "simplejpeg": lambda: _simple if _simplejpeg else None, "turbojpeg": _turbo}


def decode_with(name: str):
    """A JPEG decoder by name (benchmarks); raises ImportError/OSError when it is not available."""
    fn = DECODERS[name]()
    if fn is None:
        raise ImportError(f"{name} is not installed")
    return fn


def jpeg_backend() -> str:
    return "simplejpeg" if _simplejpeg is not None else "pil"


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB from PNG/JPEG bytes; raises on corrupt data."""
    if _simplejpeg is not None and data[:2] == _JPEG_MAGIC:
        try:
            return _simple(data)
        except ValueError:
            # simplejpeg refuses some valid files (e.g. CMYK); PIL decides whether the data is corrupt
            pass
    return _pil(data)
