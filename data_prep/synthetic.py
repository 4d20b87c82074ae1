"""Render the embedded synthetic data set in RealEstate10K's on-disk layout (and a WebVid-like set).

    python data_prep/synthetic.py --out data/synthetic --num-clips 40 --num-frames 48 \
        --height 128 --width 128 --seed 0 --webvid

writes ``OUT/{train,test}/<clip_id>.txt`` pose files, ``OUT/<split>/frames/<clip_id>/%05d.png``,
``OUT/<split>/depth/<clip_id>.npy``, ``OUT/captions.json`` and, with ``--webvid``,
``OUT/webvid/webvid.csv`` + ``OUT/webvid/videos/...``. See docs/data.md.
"""

from __future__ import annotations

import argparse
import time

from camvid.data.synthetic_writer import write_synthetic_re10k, write_synthetic_webvid


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output root")
    p.add_argument("--num-clips", type=int, default=20)
    p.add_argument("--num-frames", type=int, default=48)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-every", type=int, default=5, help="every N-th clip goes to the test split (0: none)")
    p.add_argument("--trajectories-per-scene", type=int, default=1,
                   help="clips per room, leaving one first view along different trajectories (split per room)")
    p.add_argument("--depth-dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--texture-size", type=int, default=512, help="texels per 4 m texture tile (multiple of 32)")
    p.add_argument("--webvid", action="store_true", help="also write a WebVid-like set under OUT/webvid")
    p.add_argument("--webvid-clips", type=int, default=None, help="default: same as --num-clips")
    p.add_argument("--webvid-format", choices=["png", "mp4"], default="png")
    args = p.parse_args(argv)

    start = time.perf_counter()
    split = write_synthetic_re10k(
        args.out, args.num_clips, args.num_frames, args.height, args.width, seed=args.seed,
        test_every=args.test_every, depth_dtype=args.depth_dtype, texture_size=args.texture_size,
        trajectories_per_scene=args.trajectories_per_scene,
    )
    print(f"RealEstate10K layout: {len(split.train)} train / {len(split.test)} test clips in {args.out} "
          f"({time.perf_counter() - start:.1f} s)")
    if args.webvid:
        start = time.perf_counter()
        ids = write_synthetic_webvid(
            f"{args.out}/webvid", args.webvid_clips or args.num_clips, args.num_frames, args.height, args.width,
            seed=args.seed, video_format=args.webvid_format,
        )
        print(f"WebVid layout: {len(ids)} clips in {args.out}/webvid ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
