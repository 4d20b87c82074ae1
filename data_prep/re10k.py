"""RealEstate10K from its public release to training shards, in one command.

    python data_prep/re10k.py --release RealEstate10K --videos videos/ --captions captions.json --out shards/re10k
    python data_prep/re10k.py ... --part 3 --num-parts 64          # one task of a SLURM array
    python data_prep/re10k.py ... --download                       # fetch missing videos first (yt-dlp)

``--release`` holds ``train/`` and ``test/`` with one ``<clip_id>.txt`` per clip (first line the
YouTube URL, then ``timestamp_us fx fy cx cy 0 0 <3x4 world-to-camera>`` per frame). Videos are
looked up as ``--videos/<youtube_id>.{mp4,mkv,webm}``. For every pose row the decoded frame nearest
to its timestamp is stored (JPEG q95, short side ``--short-side``), with the pose file byte for
byte and the caption from ``--captions`` (``{clip_id: caption}``, CameraCtrl's format).

Writes ``OUT/<split>/part-NNNN/`` (shards, manifest.json, summary.json; the loader reads every part
under ``OUT/<split>``) and ``OUT/summary.json``: clips written, clips skipped by reason (video
missing, undecodable, too short, timestamps out of range, bad pose), clips without caption, the
frame-timestamp error. Re-running resumes: finished shards are kept, unfinished ones rewritten.
See docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from camvid.data.prep import add_output_options, merge_summaries, run_part
from camvid.data.prep_sources import (
    build_re10k_sample,
    download_videos,
    find_video,
    list_release,
    load_caption_json,
    youtube_id,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release", required=True, help="RealEstate10K release folder (train/, test/ of pose txt files)")
    p.add_argument("--videos", required=True, help="folder of downloaded videos <youtube_id>.mp4")
    p.add_argument("--captions", default=None, help="JSON {clip_id: caption}")
    p.add_argument("--splits", nargs="+", default=["train", "test"])
    p.add_argument("--min-frames", type=int, default=16, help="clips with fewer pose rows are skipped")
    add_output_options(p)
    p.add_argument("--download", action="store_true", help="download missing videos with yt-dlp first")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    captions = load_caption_json(args.captions)
    summaries = {}
    for split in args.splits:
        clips = list_release(args.release, split, args.videos, captions, args.short_side, args.min_frames)
        if args.download:
            mine = clips[args.part :: args.num_parts]
            urls = {}
            for c in mine:
                with open(c.pose_path) as fh:
                    url = fh.readline().strip()
                vid = youtube_id(url)
                if find_video(Path(args.videos), vid) is None:
                    urls[vid] = url
            download_videos(urls, args.videos)
        s = run_part(args.out, split, clips, build_re10k_sample, shard_size=args.shard_size, part=args.part,
                     num_parts=args.num_parts, workers=args.workers,
                     meta={"source": "re10k", "image_format": "jpg", "short_side": args.short_side})
        summaries[split] = s
        print(f"{split} part {args.part}/{args.num_parts}: {s['written']} of {s['clips']} clips written, "
              f"skipped {s['skipped'] or 'none'}, {s.get('without_caption', 0)} without caption, "
              f"timestamp error {s.get('timestamp_error_ms', 'n/a')} ms")
    total = merge_summaries(args.out)
    print(f"summary: {Path(args.out) / 'summary.json'}")
    print(json.dumps({k: {kk: v[kk] for kk in ('written', 'skipped')} for k, v in total['splits'].items()}))
    return summaries


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
