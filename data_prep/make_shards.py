"""Pack a RealEstate10K-layout or WebVid-layout directory into WebDataset shards.

    python data_prep/make_shards.py re10k --root data/synthetic --split train --out shards/re10k/train
    python data_prep/make_shards.py webvid --root data/synthetic/webvid --out shards/webvid

Writes ``OUT/shard-%06d.tar`` and ``OUT/manifest.json`` (sample count per shard, clips skipped and
why: a bad clip is reported, not fatal). For the public RealEstate10K / WebVid releases (videos, not
frame folders) use data_prep/re10k.py and data_prep/webvid.py. See docs/data.md.
"""

from __future__ import annotations

import argparse
import time

from camvid.data.shards import write_re10k_shards, write_webvid_shards


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["re10k", "webvid"])
    p.add_argument("--root", required=True, help="data set root (RealEstate10K layout or WebVid CSV + videos)")
    p.add_argument("--out", required=True, help="shard directory")
    p.add_argument("--split", default="train", help="RealEstate10K split (train/test)")
    p.add_argument("--shard-size", type=int, default=100, help="clips per shard")
    p.add_argument("--image-format", choices=["png", "jpg"], default=None,
                   help="png (lossless, default for re10k) or jpg quality 95 (default for webvid)")
    p.add_argument("--with-depth", action="store_true", help="include depth/<clip_id>.npy when present")
    p.add_argument("--part", type=int, default=0, help="pack only clips part, part+num_parts, ... (array jobs)")
    p.add_argument("--num-parts", type=int, default=1)
    p.add_argument("--csv", default="webvid.csv", help="WebVid CSV file name under --root")
    args = p.parse_args(argv)

    start = time.perf_counter()
    if args.source == "re10k":
        manifest = write_re10k_shards(args.root, args.split, args.out, args.shard_size,
                                      args.image_format or "png", args.with_depth,
                                      part=args.part, num_parts=args.num_parts)
    else:
        manifest = write_webvid_shards(args.root, args.out, args.shard_size, args.image_format or "jpg", args.csv)
    print(f"{manifest['num_samples']} samples in {len(manifest['shards'])} shards under {args.out} "
          f"({time.perf_counter() - start:.1f} s)")
    if manifest["skipped"]:
        print(f"{len(manifest['skipped'])} clip(s) skipped (listed in {args.out}/manifest.json):")
        for s in manifest["skipped"][:10]:
            print(f"  {s['clip']}: {s['message']}")


if __name__ == "__main__":
    main()
