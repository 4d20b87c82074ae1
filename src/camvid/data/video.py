"""Frames out of video files with PyAV: the frames nearest to given timestamps (RealEstate10K's pose
timestamps), or every k-th frame (WebVid), optionally resized so the short side has a given length.

Decoding runs once through the stream and stops as soon as the last wanted frame is decoded; only
chosen frames are converted to RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["VideoError", "TimestampsOutOfRange", "ExtractedFrames", "frames_at_timestamps", "every_kth_frame",
           "short_side_size"]


class VideoError(ValueError):
    """The file is not a decodable video (or has no video stream)."""


class TimestampsOutOfRange(ValueError):
    """A wanted timestamp lies outside the decoded frames (beyond ``tolerance``)."""


@dataclass
class ExtractedFrames:
    frames: list[np.ndarray]  # (H, W, 3) uint8 each
    errors_us: np.ndarray  # |frame time - wanted time| per frame, microseconds (nearest-frame choice)
    fps: float


def short_side_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(H, W) with the short side ``short_side`` (aspect kept, even sizes); unchanged for None/0 or
    when the video is already smaller."""
    if not short_side or min(height, width) <= short_side:
        return height, width
    s = short_side / min(height, width)
    return max(2, round(height * s / 2) * 2), max(2, round(width * s / 2) * 2)


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoError(f"{path}: cannot open as a video ({err})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    if size is not None and (frame.height, frame.width) != size:
        frame = frame.reformat(width=size[1], height=size[0], format="rgb24", interpolation="AREA")
        return frame.to_ndarray()
    return frame.to_ndarray(format="rgb24")


def _decode(container, stream, path: Path):
    import av

    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            yield frame, float(frame.pts * stream.time_base)
    except av.FFmpegError as err:
        raise VideoError(f"{path}: decoding failed ({err})") from None


def frames_at_timestamps(path: str | Path, timestamps_us, short_side: int | None = None,
                         tolerance_us: float | None = None) -> ExtractedFrames:
    """For each wanted time (microseconds from the start of the video) the nearest decoded frame.

    ``tolerance_us`` (default 1.5 frame periods) bounds how far a wanted time may lie before the
    first or after the last decoded frame; beyond it :class:`TimestampsOutOfRange` is raised.
    """
    path = Path(path)
    wanted = np.asarray(timestamps_us, dtype=np.float64) / 1e6
    if len(wanted) == 0:
        raise ValueError(f"{path}: no timestamps wanted")
    # RealEstate10K clips sit anywhere in videos minutes long: seek to a keyframe shortly before the
    # first wanted time instead of decoding from the start; fall back to the start if the seek lands
    # after it or finds nothing.
    start = float(wanted.min()) - SEEK_MARGIN_S
    if start > 0:
        try:
            return _frames_at(path, wanted, short_side, tolerance_us, seek_to=start)
        except _SeekMissed:
            pass
    return _frames_at(path, wanted, short_side, tolerance_us, seek_to=None)


SEEK_MARGIN_S = 2.0


class _SeekMissed(Exception):
    pass


def _frames_at(path: Path, wanted: np.ndarray, short_side, tolerance_us, seek_to: float | None) -> ExtractedFrames:
    order = np.argsort(wanted, kind="stable")
    chosen: list[np.ndarray | None] = [None] * len(wanted)
    errors = np.zeros(len(wanted))
    container, stream = _open(path)
    fps = float(stream.average_rate or stream.guessed_rate or 30)
    tol = (tolerance_us / 1e6) if tolerance_us is not None else 1.5 / fps
    if seek_to is not None:
        import av

        try:
            container.seek(int(seek_to / stream.time_base), stream=stream, backward=True, any_frame=False)
        except av.FFmpegError:
            container.close()
            raise _SeekMissed() from None
    size = None
    prev = prev_rgb = None  # (frame, time) before the current one, its RGB once computed
    pos = 0
    first_time = None
    try:
        for frame, t in _decode(container, stream, path):
            if size is None:
                size = short_side_size(frame.height, frame.width, short_side)
            if first_time is None:
                first_time = t
                if seek_to is not None and t > wanted[order[0]]:
                    raise _SeekMissed()
                if wanted[order[0]] < t - tol:
                    raise TimestampsOutOfRange(
                        f"{path}: wanted time {wanted[order[0]]:.3f} s is before the first frame ({t:.3f} s)")
            cur_rgb = None
            while pos < len(order) and wanted[order[pos]] <= t:
                i = order[pos]
                if prev is not None and wanted[i] - prev[1] < t - wanted[i]:
                    if prev_rgb is None:
                        prev_rgb = _rgb(prev[0], size)
                    chosen[i], errors[i] = prev_rgb, wanted[i] - prev[1]
                else:
                    if cur_rgb is None:
                        cur_rgb = _rgb(frame, size)
                    chosen[i], errors[i] = cur_rgb, t - wanted[i]
                pos += 1
            if pos == len(order):
                break
            prev, prev_rgb = (frame, t), cur_rgb
        if first_time is None:
            if seek_to is not None:
                raise _SeekMissed()
            raise VideoError(f"{path}: no decodable frames")
        if pos < len(order):  # wanted times after the last frame: the last frame, if close enough
            last_frame, last_t = prev
            last_rgb = prev_rgb if prev_rgb is not None else _rgb(last_frame, size)
            for i in order[pos:]:
                if wanted[i] - last_t > tol:
                    raise TimestampsOutOfRange(
                        f"{path}: wanted time {wanted[i]:.3f} s is after the last frame ({last_t:.3f} s)")
                chosen[i], errors[i] = last_rgb, wanted[i] - last_t
    finally:
        container.close()
    return ExtractedFrames([np.ascontiguousarray(c) for c in chosen], errors * 1e6, fps)


def every_kth_frame(path: str | Path, step: int = 1, max_frames: int | None = None,
                    short_side: int | None = None) -> ExtractedFrames:
    """Frames 0, k, 2k, ... (at most ``max_frames``) of a video."""
    if step < 1:
        raise ValueError(f"frame step must be >= 1, got {step}")
    path = Path(path)
    container, stream = _open(path)
    fps = float(stream.average_rate or stream.guessed_rate or 30)
    frames: list[np.ndarray] = []
    size = None
    try:
        for n, (frame, _) in enumerate(_decode(container, stream, path)):
            if size is None:
                size = short_side_size(frame.height, frame.width, short_side)
            if n % step == 0:
                frames.append(_rgb(frame, size))
                if max_frames and len(frames) >= max_frames:
                    break
    finally:
        container.close()
    if not frames:
        raise VideoError(f"{path}: no decodable frames")
    return ExtractedFrames(frames, np.zeros(len(frames)), fps / step)
