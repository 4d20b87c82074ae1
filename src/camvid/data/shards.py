"""WebDataset shards: one tar member group per clip.

A RealEstate10K sample (key ``<clip_id>``) holds::

    <clip_id>.pose.txt      the clip's pose file, byte for byte
    <clip_id>.txt           caption (UTF-8)
    <clip_id>.json          {"num_frames", "image_format", "source": "re10k"}
    <clip_id>.00000.png     frames, in pose-file order (".jpg" when encoded as JPEG)
    <clip_id>.depth.npy     optional z-depth (T, H, W)

A WebVid sample holds ``.txt`` (caption), ``.json`` ({"num_frames", "image_format",
"source": "webvid"}) and the frames. Shards are ``shard-%06d.tar`` beside a ``manifest.json``
that lists every shard with its sample count.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from camvid.data.checks import check_track
from camvid.data.layout import IMAGE_SUFFIXES, Re10kClip, WebVidClip, list_re10k_clips, list_webvid_clips
from camvid.geometry.cameras import read_pose_file

__all__ = [
    "SHARD_PATTERN",
    "write_re10k_shards",
    "write_webvid_shards",
    "read_manifest",
    "shard_urls",
    "frame_keys",
    "read_video_frames",
    "iter_tar_samples",
    "ShardMember",
    "index_shards",
    "ShardRef",
    "shard_refs",
    "read_shard",
]

SHARD_PATTERN = "shard-{:06d}.tar"


def _frame_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no frames (png/jpg) in {folder}")
    return files


def _encode_frame(path: Path, image_format: str) -> bytes:
    if image_format == "png" and path.suffix.lower() == ".png":
        return path.read_bytes()  # lossless and cheaper than re-encoding
    with Image.open(path) as im:
        buf = io.BytesIO()
        if image_format == "png":
            im.convert("RGB").save(buf, format="PNG", compress_level=1)
        else:
            im.convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue()


def _encode_array(image: np.ndarray, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def read_video_frames(path: Path) -> list[np.ndarray]:
    """Frames of an mp4 file or a frame folder as uint8 (H, W, 3) arrays."""
    path = Path(path)
    if path.suffix.lower() == ".mp4":
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
        import imageio.v2 as imageio

        with imageio.get_reader(path) as reader:
            return [np.asarray(f)[..., :3] for f in reader]
    return [np.asarray(Image.open(p).convert("RGB")) for p in _frame_files(path)]


def _write_shards(clips: list, build, out: Path, shard_size: int, meta: dict) -> dict:
    """Write the samples of ``clips`` (``build(clip)`` -> sample) into shards under ``out``.

    A clip whose sample cannot be built (missing or unaligned frames, a malformed pose file, an
    undecodable video) is skipped and listed in the manifest's ``skipped`` with the error; the run
    goes on. Each tar is written under a temporary name and renamed when complete, and the manifest
    comes last, so an interrupted run never leaves a tar the loader would read."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    skipped: list[dict] = []
    writer, tmp = None, None

    def close():
        if writer is not None:
            writer.close()
            os.replace(tmp, out / shards[-1]["name"])

    try:
        for clip in clips:
            try:
                sample = build(clip)
            except (ValueError, FileNotFoundError, OSError) as err:
                skipped.append({"clip": getattr(clip, "clip_id", getattr(clip, "videoid", str(clip))),
                                "reason": getattr(err, "reason", type(err).__name__), "message": str(err)})
                warnings.warn(f"skipping clip: {err}", stacklevel=2)
                continue
            if writer is None or shards[-1]["count"] >= shard_size:
                close()
                name = SHARD_PATTERN.format(len(shards))
                tmp = out / f".{name}.tmp-{os.getpid()}"
                writer = wds.TarWriter(str(tmp), mtime=0)  # an int mtime: no pax header per member
                shards.append({"name": name, "count": 0})
            writer.write(sample)
            shards[-1]["count"] += 1
        close()
        writer = None
    finally:
        if writer is not None:
            writer.close()
        if tmp is not None and tmp.exists():
            tmp.unlink()
    if not shards:
        first = f"; first error: {skipped[0]['message']}" if skipped else ""
        raise ValueError(f"no samples to write into {out}: {len(skipped)} clip(s) skipped{first}")
    manifest = {**meta, "num_samples": sum(s["count"] for s in shards), "shards": shards, "skipped": skipped}
    tmp_manifest = out / f".manifest.json.tmp-{os.getpid()}"
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp_manifest, out / "manifest.json")
    return manifest


def _re10k_sample(clip: Re10kClip, image_format: str, with_depth: bool) -> dict:
    track = check_track(read_pose_file(clip.pose_path), str(clip.pose_path))  # validated before it is shipped
    files = _frame_files(clip.frame_dir)
    if len(files) != len(track):
        raise ValueError(
            f"{clip.frame_dir}: {len(files)} frame files but {len(track)} pose lines in {clip.pose_path}; "
            "frames and poses would be misaligned"
        )
    ext = "png" if image_format == "png" else "jpg"
    sample = {
        "__key__": clip.clip_id,
        "pose.txt": clip.pose_path.read_bytes(),
        "txt": clip.caption.encode(),
        "json": json.dumps({"num_frames": len(files), "image_format": ext, "source": "re10k"}).encode(),
    }
    for t, path in enumerate(files):
        sample[f"{t:05d}.{ext}"] = _encode_frame(path, image_format)
    if with_depth and clip.depth_path is not None:
        buf = io.BytesIO()
        np.save(buf, np.load(clip.depth_path))
        sample["depth.npy"] = buf.getvalue()
    return sample


def write_re10k_shards(
    root: str | Path,
    split: str,
    out: str | Path,
    shard_size: int = 100,
    image_format: str = "png",
    with_depth: bool = False,
    part: int = 0,
    num_parts: int = 1,
) -> dict:
    """Pack one split of a RealEstate10K-layout directory into shards; returns the manifest.

    ``part`` of ``num_parts`` packs every ``num_parts``-th clip starting at ``part`` (SLURM array
    tasks each write their own shard directory)."""
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg' (quality 95), got {image_format!r}")
    if not 0 <= part < num_parts:
        raise ValueError(f"part must be in [0, num_parts), got part={part}, num_parts={num_parts}")
    clips = list_re10k_clips(root, split)[part::num_parts]
    if any("." in c.clip_id for c in clips):
        bad = next(c.clip_id for c in clips if "." in c.clip_id)
        raise ValueError(f"clip id {bad!r} contains a '.', which WebDataset uses to split keys from fields")
    build = functools.partial(_re10k_sample, image_format=image_format, with_depth=with_depth)
    return _write_shards(clips, build, Path(out), shard_size, {"source": "re10k", "split": split, "image_format": image_format,
                                                            "part": part, "num_parts": num_parts})


def _webvid_sample(clip: WebVidClip, image_format: str) -> dict:
    frames = read_video_frames(clip.path)
    ext = "png" if image_format == "png" else "jpg"
    sample = {
        "__key__": clip.videoid,
        "txt": clip.caption.encode(),
        "json": json.dumps({"num_frames": len(frames), "image_format": ext, "source": "webvid"}).encode(),
    }
    for t, frame in enumerate(frames):
        sample[f"{t:05d}.{ext}"] = _encode_array(frame, image_format)
    return sample


def write_webvid_shards(
    root: str | Path, out: str | Path, shard_size: int = 100, image_format: str = "jpg", csv_name: str = "webvid.csv"
) -> dict:
    """Pack a WebVid-layout directory (CSV + videos) into shards; returns the manifest."""
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg' (quality 95), got {image_format!r}")
    clips = list_webvid_clips(root, csv_name)
    build = functools.partial(_webvid_sample, image_format=image_format)
    return _write_shards(clips, build, Path(out), shard_size, {"source": "webvid", "image_format": image_format})


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"shard manifest not found: {path} (write shards with data_prep/make_shards.py)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{path}: expected {{'shards': [{{'name', 'count'}}, ...], ...}}")
    return manifest


@dataclass(frozen=True)
class ShardRef:
    """A shard and the number of samples its manifest promises (``None``: unknown)."""

    url: str
    count: int | None = None


def shard_refs(shard_dir: str | Path) -> list[ShardRef]:
    """Shards listed in the manifest; each must exist."""
    shard_dir = Path(shard_dir)
    refs = []
    for entry in read_manifest(shard_dir)["shards"]:
        path = shard_dir / entry["name"]
        if not path.is_file():
            raise FileNotFoundError(f"shard listed in {shard_dir / 'manifest.json'} is missing: {path}")
        count = entry.get("count")
        refs.append(ShardRef(str(path), int(count) if count is not None else None))
    return refs


def shard_urls(shard_dir: str | Path) -> list[str]:
    """Shard paths listed in the manifest; each must exist."""
    return [ref.url for ref in shard_refs(shard_dir)]


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)


class _Truncated(Exception):
    pass


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for large numbers
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def iter_tar_members(fh) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of an uncompressed tar, read sequentially.

    Python's tarfile parses a header in ~0.5 ms, a real share of the loader's time with a few
    dozen members per clip; this reads ustar/GNU/pax headers directly. It also tells a complete
    tar from a cut one, which tarfile does not when the cut falls on a 512-byte boundary: raises
    :class:`_Truncated` unless the archive ends with its zero end-of-archive block.
    """
    long_name, pax = None, {}
    while True:
        header = fh.read(_BLOCK)
        if len(header) < _BLOCK:
            raise _Truncated("no end-of-archive marker: the file was cut short")
        if header == _ZERO_BLOCK:
            return
        stored = _octal(header[148:156])
        computed = sum(header) - sum(header[148:156]) + 8 * 32
        if stored != computed:
            raise tarfile.ReadError("bad header checksum (not a tar file, or corrupt)")
        size = _octal(header[124:136])
        kind = header[156:157]
        data = fh.read(size)
        if len(data) < size:
            raise _Truncated("unexpected end of data inside a member")
        fh.seek((-size) % _BLOCK, 1)
        if kind == b"L":  # GNU long name for the next member
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":  # pax extended header for the next member
            pax = _pax_records(data)
            continue
        if kind == b"g":
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name, pax = None, {}
            continue
        if long_name is not None:
            name = long_name
        elif "path" in pax:
            name = pax["path"]
        else:
            name = header[0:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
            if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
                name = header[345:500].rstrip(b"\0").decode("utf-8", "surrogateescape") + "/" + name
        if "size" in pax and int(pax["size"]) != size:
            raise tarfile.ReadError("pax size differs from header size")
        long_name, pax = None, {}
        yield name, data


def read_shard(ref: ShardRef):
    """Samples of one shard (``{"__key__", "__url__", field: bytes}``) interleaved with
    :class:`~camvid.data.health.SkipEvent` records for what could not be read.

    A tar cut short (an interrupted copy) can look complete to Python's tarfile when the cut falls
    on a 512-byte boundary; the missing end-of-archive block gives it away. Then the last sample
    read is dropped (it may lack fields; nothing proves it is whole), and every sample the manifest
    promised but the tar no longer holds is counted too. An unreadable shard counts all its samples.
    """
    from camvid.data.health import SkipEvent

    url, expected = ref.url, ref.count
    yielded, group, problem = 0, None, None
    try:
        fh = open(url, "rb", buffering=0)
    except OSError as err:
        yield SkipEvent("unreadable_shard", url, f"{url}: shard listed in the manifest cannot be read ({err})",
                        max(expected or 1, 1))
        return
    with fh:
        try:
            for name, data in iter_tar_members(fh):
                base = name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                key, field = base.split(".", 1)
                if group is None or group["__key__"] != key:
                    if group is not None:
                        yield group
                        yielded += 1
                    group = {"__key__": key, "__url__": url}
                group[field] = data
        except (_Truncated, tarfile.TarError, OSError, ValueError) as err:
            problem = str(err)
    if problem is not None and group is None:
        yield SkipEvent("unreadable_shard", url, f"{url}: not a readable tar shard ({problem})",
                        max(expected or 1, 1))
        return
    dropped = 0
    if problem is not None:
        yield SkipEvent("truncated_shard", url,
                        f"{url}:{group['__key__']}: dropped the last sample of a truncated shard ({problem})")
        dropped = 1
    elif group is not None:
        yield group
        yielded += 1
    if expected is not None and yielded + dropped < expected:
        missing = expected - yielded - dropped
        yield SkipEvent("truncated_shard", url,
                        f"{url}: manifest lists {expected} samples, the tar holds {yielded + dropped}"
                        + (f" ({problem})" if problem else ""), missing)


def frame_keys(sample: dict) -> list[str]:
    """Frame fields of a decoded-from-tar sample, in frame order (``00000.png``, ``00001.png``, ...)."""
    keys = [k for k in sample if k[:5].isdigit() and k.endswith((".png", ".jpg"))]
    return sorted(keys)


def iter_tar_samples(url: str) -> Iterator[dict]:
    """Raw samples of one shard (bytes per field), for inspection and tests."""
    yield from wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())


@dataclass(frozen=True)
class ShardMember:
    """One sample inside a shard, located by byte offsets (random access for map-style data sets)."""

    url: str
    key: str
    fields: tuple[tuple[str, int, int], ...]  # (field, data offset, size)

    def load(self) -> dict:
        sample: dict = {"__key__": self.key, "__url__": self.url}
        with open(self.url, "rb") as fh:
            for name, offset, size in self.fields:
                fh.seek(offset)
                sample[name] = fh.read(size)
        return sample


def index_shards(urls: list[str]) -> list[ShardMember]:
    """Scan tar headers (no decoding) and list every sample, in shard order."""
    members: list[ShardMember] = []
    for url in urls:
        groups: dict[str, list[tuple[str, int, int]]] = {}
        try:
            with tarfile.open(url) as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    base = info.name.rsplit("/", 1)[-1]
                    if "." not in base:
                        continue
                    key, field = base.split(".", 1)
                    prefix = info.name[: len(info.name) - len(base)]
                    groups.setdefault(prefix + key, []).append((field, info.offset_data, info.size))
        except tarfile.TarError as err:
            raise ValueError(f"{url}: not a readable tar shard ({err})") from None
        members.extend(ShardMember(url, key.rsplit("/", 1)[-1], tuple(f)) for key, f in groups.items())
    if not members:
        raise ValueError(f"no samples in shards {urls[:3]}{'...' if len(urls) > 3 else ''}")
    return members
