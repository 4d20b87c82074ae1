"""Where things live on disk: RealEstate10K's directory layout and our WebVid-like layout.

RealEstate10K (as released, plus the frames and depth that a download/extract step produces)::

    ROOT/captions.json                      {clip_id: caption}
    ROOT/<split>/<clip_id>.txt              pose file (camvid.geometry.cameras format)
    ROOT/<split>/frames/<clip_id>/00000.png one image per pose line, in pose-file order
    ROOT/<split>/depth/<clip_id>.npy        optional (T, H, W) z-depth (synthetic data only)

WebVid-like (WebVid's CSV columns; videos either as mp4 or as frame folders)::

    ROOT/webvid.csv                         videoid,contentUrl,duration,page_dir,name
    ROOT/videos/<page_dir>/<videoid>.mp4    or
    ROOT/videos/<page_dir>/<videoid>/00000.png ...
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FRAME_NAME",
    "WEBVID_COLUMNS",
    "Re10kClip",
    "WebVidClip",
    "frame_dir",
    "depth_path",
    "list_re10k_clips",
    "load_captions",
    "list_webvid_clips",
]

FRAME_NAME = "{:05d}.png"
WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Re10kClip:
    clip_id: str
    pose_path: Path
    frame_dir: Path
    depth_path: Path | None
    caption: str


@dataclass(frozen=True)
class WebVidClip:
    videoid: str
    caption: str
    path: Path  # an .mp4 file or a folder of frames


def frame_dir(root: Path, split: str, clip_id: str) -> Path:
    return Path(root) / split / "frames" / clip_id


def depth_path(root: Path, split: str, clip_id: str) -> Path:
    return Path(root) / split / "depth" / f"{clip_id}.npy"


def load_captions(root: Path) -> dict[str, str]:
    path = Path(root) / "captions.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{clip_id: caption}}, got {type(data).__name__}")
    return {str(k): str(v) for k, v in data.items()}


def list_re10k_clips(root: str | Path, split: str) -> list[Re10kClip]:
    """Clips of one split, sorted by id. Raises if the split holds no pose files."""
    root = Path(root)
    split_dir = root / split
    if not root.is_dir():
        raise FileNotFoundError(f"RealEstate10K root does not exist: {root}")
    if not split_dir.is_dir():
        raise FileNotFoundError(f"RealEstate10K split directory does not exist: {split_dir}")
    captions = load_captions(root)
    clips = []
    for pose in sorted(split_dir.glob("*.txt")):
        cid = pose.stem
        dpath = depth_path(root, split, cid)
        clips.append(
            Re10kClip(cid, pose, frame_dir(root, split, cid), dpath if dpath.is_file() else None, captions.get(cid, ""))
        )
    if not clips:
        raise ValueError(f"no clips (pose files <clip_id>.txt) in {split_dir}")
    return clips


def list_webvid_clips(root: str | Path, csv_name: str = "webvid.csv") -> list[WebVidClip]:
    """Rows of the WebVid CSV whose video exists (mp4 or frame folder); raises if none."""
    root = Path(root)
    path = root / csv_name
    if not path.is_file():
        raise FileNotFoundError(f"WebVid CSV not found: {path}")
    clips = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("videoid", "page_dir", "name") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; WebVid CSVs have {list(WEBVID_COLUMNS)}")
        for row in reader:
            base = root / "videos" / row["page_dir"]
            mp4 = base / f"{row['videoid']}.mp4"
            folder = base / row["videoid"]
            video = mp4 if mp4.is_file() else folder
            clips.append(WebVidClip(row["videoid"], row["name"], video))
    if not clips:
        raise ValueError(f"{path}: no rows")
    return clips
