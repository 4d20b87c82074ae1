"""The loader's JPEG decoder (camvid.data.decode): simplejpeg gives PIL's pixels, rejects damaged
JPEGs, and PIL takes over when simplejpeg is not installed."""

import importlib.util
import io
import logging
import sys

import numpy as np
import pytest
from PIL import Image

import camvid.data.decode as decode

# libjpeg-turbo in simplejpeg's and Pillow's wheels decodes with the same (islow) DCT and fancy
# upsampling: pixels are identical (benchmarks/data.py: max |diff| 0). A Pillow built against
# another libjpeg (a distribution's or conda's) may round differently; one level is allowed, which
# still catches a wrong colour space, channel order or upsampling (not measured with such a build).
TOLERANCE = 1


def _jpeg(image: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", **options)
    return buf.getvalue()


def _pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    """4:2:0 (PIL's default), 4:4:4 and greyscale JPEGs of textured 48x40 images."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:40]
    images = [np.clip(128 + 60 * np.sin(xx / (3 + i))[..., None] + rng.normal(0, 20, (48, 40, 3)), 0, 255)
              .astype(np.uint8) for i in range(3)]
    return [_jpeg(images[0], quality=95), _jpeg(images[1], quality=80, subsampling=0),
            _jpeg(images[2][..., 0], quality=90)]


@pytest.fixture()
def without_simplejpeg(monkeypatch):
    """A fresh copy of camvid.data.decode imported while simplejpeg cannot be imported."""
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # `import simplejpeg` raises ImportError
    spec = importlib.util.spec_from_file_location("camvid_decode_without_simplejpeg", decode.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.skipif(decode.jpeg_backend() != "simplejpeg", reason="simplejpeg not installed")
def test_simplejpeg_gives_pils_pixels(frames):
    for data in frames:
        assert _max_diff(decode.decode_image(data), _pil(data)) <= TOLERANCE
    clip = [(frames[0], "a"), (frames[0], "b")]
    out = np.zeros((2, 48, 40, 3), np.uint8)
    got = decode.decode_frames(clip, out)
    assert got is out  # decoded into the given buffer
    assert _max_diff(got[1], _pil(frames[0])) <= TOLERANCE


@pytest.mark.skipif(decode.jpeg_backend() != "simplejpeg", reason="simplejpeg not installed")
def test_damaged_jpeg_is_an_error_that_names_the_frame(frames):
    bad = bytearray(frames[1])
    bad[len(bad) // 2:len(bad) // 2 + 40] = bytes(40)  # entropy-coded data zeroed, markers intact
    with pytest.raises(ValueError, match="shard-1.tar:clip7.00001.jpg: cannot decode image"):
        decode.decode_frames([(frames[1], "x"), (bytes(bad), "shard-1.tar:clip7.00001.jpg")])


def test_pil_takes_over_without_simplejpeg(without_simplejpeg, frames, caplog):
    assert without_simplejpeg.jpeg_backend() == "pil"
    for data in frames:
        assert np.array_equal(without_simplejpeg.decode_image(data), _pil(data))
    got = without_simplejpeg.decode_frames([(frames[0], "a"), (frames[1], "b")])
    assert np.array_equal(got, np.stack([_pil(frames[0]), _pil(frames[1])]))
    with pytest.raises(ValueError, match="clip.00000.jpg: cannot decode image"):  # truncated: PIL rejects it too
        without_simplejpeg.decode_frames([(frames[0][: len(frames[0]) // 2], "clip.00000.jpg")])
    with caplog.at_level(logging.INFO, logger="camvid.data.decode"):
        assert without_simplejpeg.announce_backend() == "pil"
        without_simplejpeg.announce_backend()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pip install simplejpeg" in warnings[0].getMessage()  # once per process


def test_both_decoders_agree_on_a_clip(without_simplejpeg, frames):
    clip = [(frames[0], f"f{i}") for i in range(3)]
    assert _max_diff(decode.decode_frames(clip), without_simplejpeg.decode_frames(clip)) <= TOLERANCE


class _SlowSimplejpeg:
    """simplejpeg with a short sleep per decoded frame, recording the thread that decoded it, so
    that every decode thread gets frames however fast the machine is."""

    def __init__(self, real):
        self.real, self.threads = real, []

    def decode_jpeg_header(self, data):
        return self.real.decode_jpeg_header(data)

    def decode_jpeg(self, data, **kw):
        import threading
        import time

        time.sleep(0.005)
        self.threads.append(threading.current_thread().name)
        return self.real.decode_jpeg(data, **kw)


@pytest.fixture()
def threaded(monkeypatch):
    """Decoding on 3 threads for the test (this process's setting restored after it), simplejpeg slowed."""
    monkeypatch.setattr(decode, "_THREADS", 1)
    slow = _SlowSimplejpeg(decode._simplejpeg)
    monkeypatch.setattr(decode, "_simplejpeg", slow)
    decode.set_decode_threads(3)
    return slow


@pytest.mark.skipif(decode.jpeg_backend() != "simplejpeg", reason="simplejpeg not installed")
def test_threads_decode_the_same_pixels_into_the_given_buffer(threaded, frames):
    clip = [(frames[i % 2], f"clip.{i:05d}.jpg") for i in range(8)]  # 4:2:0 and 4:4:4, one size
    decode.set_decode_threads(1)
    one = decode.decode_frames(clip)
    decode.set_decode_threads(3)
    threaded.threads.clear()
    out = np.zeros_like(one)
    got = decode.decode_frames(clip, out)
    assert got is out and np.array_equal(got, one)
    assert len(threaded.threads) == 8  # each frame once
    assert len(set(threaded.threads)) >= 2 and any(n.startswith("camvid-decode") for n in threaded.threads)
    assert decode.decode_threads() == 3
    pool = decode._POOL
    assert np.array_equal(decode.decode_frames(clip[:2]), one[:2])  # fewer frames than threads
    assert decode._POOL is pool  # the same helper threads, not a new pool per clip size


@pytest.mark.skipif(decode.jpeg_backend() != "simplejpeg", reason="simplejpeg not installed")
def test_threads_give_the_one_thread_errors(threaded, frames):
    bad = bytearray(frames[1])  # the damage the one-thread test above uses
    bad[len(bad) // 2:len(bad) // 2 + 40] = bytes(40)
    clip = [(frames[0], f"s.tar:c.{i:05d}.jpg") for i in range(6)]
    clip[4] = (bytes(bad), "s.tar:c.00004.jpg")
    with pytest.raises(ValueError, match=r"s\.tar:c\.00004\.jpg: cannot decode image"):
        decode.decode_frames(clip)
    clip[4] = (frames[0][:20], "s.tar:c.00004.jpg")  # a cut header
    with pytest.raises(ValueError, match=r"s\.tar:c\.00004\.jpg: cannot decode image"):
        decode.decode_frames(clip)
    grey = _jpeg(np.full((24, 40), 90, np.uint8))  # another size: the clip's size error
    clip[4] = (grey, "s.tar:c.00004.jpg")
    with pytest.raises(ValueError, match=r"c\.00004\.jpg: cannot decode image \(frame size \(24, 40\) differs"):
        decode.decode_frames(clip)


def test_threads_leave_png_frames_to_pil(threaded, frames):
    png = io.BytesIO()
    Image.fromarray(_pil(frames[0])).save(png, format="PNG")
    clip = [(png.getvalue(), "a.png"), (frames[0], "b.jpg"), (png.getvalue(), "c.png")]
    got = decode.decode_frames(clip)
    assert np.array_equal(got[0], _pil(frames[0])) and np.array_equal(got[2], got[0])
    assert _max_diff(got[1], _pil(frames[0])) <= TOLERANCE


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_decode_threads_must_be_a_positive_integer(bad, monkeypatch):
    monkeypatch.setattr(decode, "_THREADS", 1)
    with pytest.raises(ValueError, match="decode threads must be an integer >= 1"):
        decode.set_decode_threads(bad)
    assert decode.decode_threads() == 1
