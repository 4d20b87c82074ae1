"""WebVid from its CSV and a video folder to captioned training shards, in one command.

    python data_prep/webvid.py --csv results_10M_train.csv --videos videos/ --out shards/webvid
    python data_prep/webvid.py ... --part 3 --num-parts 64         # one task of a SLURM array
    python data_prep/webvid.py ... --download                      # fetch missing videos first (yt-dlp)

The CSV has WebVid's columns ``videoid, name, page_dir, duration, contentUrl`` (``name`` is the
caption). Videos are looked up as ``--videos/<page_dir>/<videoid>.mp4`` (the layout of the public
download scripts) or ``--videos/<videoid>.mp4``. Every ``--frame-step``-th frame (at most
``--max-frames``) is stored as JPEG q95 with short side ``--short-side``.

Writes ``OUT/<split>/part-NNNN/`` (shards, manifest.json, summary.json) and ``OUT/summary.json``
(clips written, skipped by reason: video missing, undecodable, too short; rows without caption).
Re-running resumes. See docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from camvid.data.prep import add_output_options, merge_summaries, run_part
from camvid.data.prep_sources import VIDEO_SUFFIXES, build_webvid_sample, download_videos, list_webvid_csv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, help="WebVid CSV (videoid, name, page_dir, duration, contentUrl)")
    p.add_argument("--videos", required=True, help="video folder (<page_dir>/<videoid>.mp4 or <videoid>.mp4)")
    p.add_argument("--split", default="train", help="split name the shards are written under")
    p.add_argument("--frame-step", type=int, default=1, help="keep every k-th decoded frame")
    p.add_argument("--max-frames", type=int, default=0, help="keep at most this many frames per clip (0: all)")
    p.add_argument("--min-frames", type=int, default=16, help="clips with fewer kept frames are skipped")
    add_output_options(p)
    p.add_argument("--download", action="store_true", help="download missing videos (contentUrl) with yt-dlp first")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    rows = list_webvid_csv(args.csv, args.videos, args.frame_step, args.max_frames, args.min_frames, args.short_side)
    if args.download:
        import csv

        with open(args.csv, newline="") as fh:
            url_of = {r["videoid"]: r.get("contentUrl", "") for r in csv.DictReader(fh)}
        mine = rows[args.part :: args.num_parts]
        todo = {}
        for r in mine:
            base = Path(args.videos) / r.page_dir
            if not any((base / f"{r.clip_id}{s}").is_file() for s in VIDEO_SUFFIXES) and url_of.get(r.clip_id):
                todo[f"{r.page_dir}/{r.clip_id}"] = url_of[r.clip_id]
        download_videos(todo, args.videos)
    s = run_part(args.out, args.split, rows, build_webvid_sample, shard_size=args.shard_size, part=args.part,
                 num_parts=args.num_parts, workers=args.workers,
                 meta={"source": "webvid", "image_format": "jpg", "short_side": args.short_side,
                       "frame_step": args.frame_step})
    print(f"{args.split} part {args.part}/{args.num_parts}: {s['written']} of {s['clips']} clips written, "
          f"skipped {s['skipped'] or 'none'}, {s.get('without_caption', 0)} without caption")
    total = merge_summaries(args.out)
    print(f"summary: {Path(args.out) / 'summary.json'}")
    print(json.dumps({k: {kk: v[kk] for kk in ('written', 'skipped')} for k, v in total['splits'].items()}))
    return s


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
