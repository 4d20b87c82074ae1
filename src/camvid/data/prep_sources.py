"""The two public releases, clip by clip: what to read and how one clip becomes a shard sample.

RealEstate10K (``RELEASE/{train,test}/<clip_id>.txt``, first line the YouTube URL, then one pose
row per frame whose first number is the frame's time in microseconds from the video's start):
frames are taken from ``VIDEOS/<youtube_id>.{mp4,mkv,webm}`` at the pose timestamps (nearest
decoded frame) and stored as JPEG with the pose file byte for byte; captions come from a JSON
``{clip_id: caption}`` (CameraCtrl's format).

WebVid (CSV with ``videoid, name, page_dir, duration, contentUrl``; ``name`` is the caption):
every ``frame_step``-th frame of ``VIDEOS/<page_dir>/<videoid>.mp4`` (or ``VIDEOS/<videoid>.mp4``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camvid.data.clips import BadSample, check_track
from camvid.data.prep import PrepResult, PrepSkip
from camvid.data.video import TimestampsOutOfRange, VideoError, every_kth_frame, frames_at_timestamps
from camvid.geometry.cameras import parse_pose_lines

__all__ = [
    "VIDEO_SUFFIXES",
    "Re10kRelease",
    "list_release",
    "youtube_id",
    "load_caption_json",
    "build_re10k_sample",
    "WebVidRow",
    "list_webvid_csv",
    "build_webvid_sample",
    "download_videos",
]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm")
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Re10kRelease:
    clip_id: str
    pose_path: str
    videos: str  # folder of downloaded videos
    caption: str | None
    short_side: int
    min_frames: int


def youtube_id(url: str) -> str:
    """The video id of a RealEstate10K URL line (``https://www.youtube.com/watch?v=<id>``)."""
    url = url.strip()
    for marker in ("v=", "youtu.be/"):
        if marker in url:
            return url.split(marker, 1)[1].split("&", 1)[0].split("?", 1)[0]
    return url.rstrip("/").rsplit("/", 1)[-1]


def load_caption_json(path: str | Path | None) -> dict[str, str]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--captions: file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"--captions {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--captions {path}: expected a JSON object {{clip_id: caption}}, got {type(data).__name__}")
    return {str(k): str(v) for k, v in data.items()}


def list_release(release: str | Path, split: str, videos: str | Path, captions: dict[str, str],
                 short_side: int = 256, min_frames: int = 16) -> list[Re10kRelease]:
    folder = Path(release) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"--release: split folder not found: {folder} (the release has train/ and test/)")
    paths = sorted(folder.glob("*.txt"))
    if not paths:
        raise ValueError(f"--release: no pose files <clip_id>.txt in {folder}")
    bad = [p.stem for p in paths if "." in p.stem]
    if bad:
        raise ValueError(f"{folder}: clip id {bad[0]!r} contains a '.', which WebDataset uses to split keys from fields")
    return [Re10kRelease(p.stem, str(p), str(videos), captions.get(p.stem), short_side, min_frames) for p in paths]


def find_video(videos: Path, video_id: str) -> Path | None:
    for suffix in VIDEO_SUFFIXES:
        if (videos / f"{video_id}{suffix}").is_file():
            return videos / f"{video_id}{suffix}"
    return None


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def build_re10k_sample(clip: Re10kRelease) -> PrepResult:
    """One RealEstate10K clip -> sample; raises :class:`PrepSkip` with the reason."""
    try:
        raw = Path(clip.pose_path).read_bytes()
        track = check_track(parse_pose_lines(raw.decode().splitlines(), source=clip.pose_path), clip.pose_path)
    except (BadSample, ValueError, OSError) as err:  # UnicodeDecodeError is a ValueError
        raise PrepSkip("bad_pose", f"{clip.pose_path}: {err}" if clip.pose_path not in str(err) else str(err)) from None
    if len(track) < clip.min_frames:
        raise PrepSkip("too_short", f"{clip.pose_path}: {len(track)} pose rows, fewer than --min-frames {clip.min_frames}")
    vid = youtube_id(track.url)
    video = find_video(Path(clip.videos), vid)
    if video is None:
        raise PrepSkip("video_missing", f"{clip.clip_id}: no video {vid}{{{','.join(VIDEO_SUFFIXES)}}} in {clip.videos}")
    try:
        got = frames_at_timestamps(video, track.timestamps, short_side=clip.short_side)
    except TimestampsOutOfRange as err:
        raise PrepSkip("timestamps_out_of_range", f"{clip.clip_id}: {err}") from None
    except (VideoError, OSError, MemoryError) as err:
        raise PrepSkip("undecodable", f"{clip.clip_id}: {err}") from None
    sample = {
        "__key__": clip.clip_id,
        "pose.txt": raw,
        "txt": (clip.caption or "").encode(),
        "json": json.dumps({"num_frames": len(got.frames), "image_format": "jpg", "source": "re10k",
                            "video_id": vid, "timestamp_error_ms_max": round(float(got.errors_us.max()) / 1e3, 3)
                            }).encode(),
    }
    for t, frame in enumerate(got.frames):
        sample[f"{t:05d}.jpg"] = _jpeg(frame)
    stats = {"caption": clip.caption is not None, "timestamp_error_ms_max": float(got.errors_us.max()) / 1e3,
             "timestamp_error_ms_mean": float(got.errors_us.mean()) / 1e3}
    return PrepResult(sample, stats)


@dataclass(frozen=True)
class WebVidRow:
    clip_id: str  # videoid
    caption: str
    page_dir: str
    videos: str
    frame_step: int
    max_frames: int
    min_frames: int
    short_side: int


WEBVID_REQUIRED = ("videoid", "name", "page_dir")


def list_webvid_csv(csv_path: str | Path, videos: str | Path, frame_step: int = 1, max_frames: int = 0,
                    min_frames: int = 16, short_side: int = 256) -> list[WebVidRow]:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"--csv: file not found: {csv_path}")
    rows = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in WEBVID_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"--csv {csv_path}: missing columns {missing}; WebVid CSVs have "
                             "videoid, name, page_dir, duration, contentUrl")
        for row in reader:
            vid = row["videoid"].strip()
            if not vid or "." in vid:
                raise ValueError(f"--csv {csv_path}: bad videoid {vid!r} (empty, or contains a '.')")
            rows.append(WebVidRow(vid, row["name"] or "", row["page_dir"], str(videos), frame_step, max_frames,
                                  min_frames, short_side))
    if not rows:
        raise ValueError(f"--csv {csv_path}: no rows")
    seen: set[str] = set()
    dups = [r.clip_id for r in rows if r.clip_id in seen or seen.add(r.clip_id)]
    if dups:
        raise ValueError(f"--csv {csv_path}: videoid {dups[0]!r} appears more than once")
    return sorted(rows, key=lambda r: r.clip_id)


def build_webvid_sample(row: WebVidRow) -> PrepResult:
    videos = Path(row.videos)
    candidates = [videos / row.page_dir / f"{row.clip_id}{s}" for s in VIDEO_SUFFIXES]
    candidates += [videos / f"{row.clip_id}{s}" for s in VIDEO_SUFFIXES]
    video = next((c for c in candidates if c.is_file()), None)
    if video is None:
        raise PrepSkip("video_missing", f"{row.clip_id}: no video {row.page_dir}/{row.clip_id}.mp4 in {videos}")
    try:
        got = every_kth_frame(video, row.frame_step, row.max_frames or None, row.short_side)
    except (VideoError, OSError, MemoryError) as err:
        raise PrepSkip("undecodable", f"{row.clip_id}: {err}") from None
    if len(got.frames) < row.min_frames:
        raise PrepSkip("too_short", f"{row.clip_id}: {len(got.frames)} frames (step {row.frame_step}), fewer than "
                                    f"--min-frames {row.min_frames}")
    sample = {
        "__key__": row.clip_id,
        "txt": row.caption.encode(),
        "json": json.dumps({"num_frames": len(got.frames), "image_format": "jpg", "source": "webvid",
                            "fps": round(got.fps, 3)}).encode(),
    }
    for t, frame in enumerate(got.frames):
        sample[f"{t:05d}.jpg"] = _jpeg(frame)
    return PrepResult(sample, {"caption": bool(row.caption.strip())})


def download_videos(urls: dict[str, str], videos: str | Path, log=print) -> dict[str, str]:
    """Download ``{name: url}`` into ``videos/<name>.mp4`` with yt-dlp (``pip install camvid[download]``),
    skipping files already there; returns ``{name: error}`` for the ones that failed (gone,
    private, geo-blocked: RealEstate10K has many). Never used by the tests (no network there)."""
    try:
        import yt_dlp
    except ImportError:
        raise ImportError("--download needs yt-dlp: pip install 'camvid[download]' (or pip install yt-dlp)") from None
    videos = Path(videos)
    videos.mkdir(parents=True, exist_ok=True)
    failed = {}
    for name, url in sorted(urls.items()):
        target = videos / f"{name}.mp4"
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        opts = {"outtmpl": str(videos / f"{name}.%(ext)s"), "format": "bv*[ext=mp4][height<=720]/bv*[height<=720]/b",
                "quiet": True, "no_warnings": True, "noprogress": True, "merge_output_format": "mp4"}
        try:
            with yt_dlp.YoutubeDL(opts) as ydl:
                ydl.download([url])
        except Exception as err:  # yt-dlp raises its own DownloadError and friends
            failed[name] = str(err).splitlines()[0][:200]
            log(f"download failed for {name}: {failed[name]}")
    return failed
