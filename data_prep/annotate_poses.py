"""A RealEstate10K pose file for your own video, by structure-from-motion (the evaluation's pycolmap).

    python data_prep/annotate_poses.py my_video.mp4 -o my_video.txt --stride 2
    python data_prep/annotate_poses.py frames_dir/ -o poses.txt --fov 65 --scale sfm --interpolate

Frames are taken every ``--stride``-th (and at most ``--max-frames``), downscaled to ``--max-size``
on the long side, and reconstructed with the CamI2V evaluation settings (SIFT + guided exhaustive
matching + GLOMAP, one SIMPLE_PINHOLE camera). Intrinsics are estimated unless given
(``--intrinsics fx,fy,cx,cy`` normalised, or ``--fov`` degrees horizontal). Poses are relative to
the first frame; ``--scale normalized`` (default) puts the furthest camera at distance 1 like the
evaluation, ``--scale sfm`` keeps SfM's. Frames that fail to register are reported with the reason
and left out (their timestamps are missing from the file) unless ``--interpolate`` fills them; the
header line records the settings, failed and interpolated frames. Long videos: ``--matcher
sequential`` is much faster than exhaustive matching. Also writes ``<output>.png`` with the path
(``--no-plot`` to skip). See docs/trajectories.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _intrinsics(args):
    if args.intrinsics and args.fov:
        raise SystemExit("give --intrinsics or --fov, not both")
    if args.intrinsics:
        try:
            values = tuple(float(v) for v in args.intrinsics.split(","))
        except ValueError:
            values = ()
        if len(values) != 4:
            raise SystemExit(f"--intrinsics {args.intrinsics!r}: expected 4 comma-separated normalised numbers fx,fy,cx,cy")
        return values
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a video file (mp4, mov, ...) or a folder of frames")
    p.add_argument("-o", "--output", help="pose file to write (default: the source with .txt)")
    p.add_argument("--stride", type=int, default=1, help="take every N-th frame (default 1)")
    p.add_argument("--max-frames", type=int, default=None, help="at most this many frames after the stride")
    p.add_argument("--max-size", type=int, default=640, help="longest side SfM sees, pixels (default 640)")
    p.add_argument("--intrinsics", help="normalised fx,fy,cx,cy of the video (fixed, as in the evaluation)")
    p.add_argument("--fov", type=float, help="or the horizontal field of view in degrees (centred, square pixels)")
    p.add_argument("--scale", choices=["normalized", "sfm"], default="normalized",
                   help="normalized: furthest camera at distance 1 (the evaluation's); sfm: SfM's arbitrary scale")
    p.add_argument("--interpolate", action="store_true",
                   help="fill frames that failed to register (slerp / lerp), listed in the header")
    p.add_argument("--trials", type=int, default=1, help="mapping trials; the one registering most frames is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, help="frame rate of a frame folder (timestamps; default 30)")
    p.add_argument("--matcher", choices=["exhaustive", "sequential"], default="exhaustive")
    p.add_argument("--mapper", choices=["global", "incremental"], default="global")
    p.add_argument("--threads", type=int, default=1, help="pycolmap threads")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG of the recovered path")
    args = p.parse_args(argv)

    from camvid.evaluation.annotate import AnnotateOptions, AnnotationFailed, annotate_video
    from camvid.evaluation.sfm import SfmOptions
    from camvid.geometry.cameras import write_pose_file

    intrinsics = _intrinsics(args)
    sfm = SfmOptions(matcher=args.matcher, mapper=args.mapper, num_threads=args.threads)
    options = AnnotateOptions(stride=args.stride, max_frames=args.max_frames, max_size=args.max_size,
                              intrinsics=intrinsics, scale=args.scale, interpolate=args.interpolate,
                              trials=args.trials, seed=args.seed, fps=args.fps, sfm=sfm)
    if args.fov:
        if not 0 < args.fov < 180:
            raise SystemExit(f"--fov {args.fov}: expected degrees in (0, 180)")
        from camvid.evaluation.annotate import read_frames

        frames, _, _ = read_frames(args.source, max_frames=1, max_size=args.max_size)
        h, w = frames.shape[1:3]
        f = 0.5 * w / math.tan(math.radians(args.fov) / 2)
        options.intrinsics = (f / w, f / h, 0.5, 0.5)
    output = Path(args.output or Path(args.source).with_suffix(".txt"))
    try:
        result = annotate_video(args.source, options)
    except AnnotationFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.report())
    write_pose_file(output, result.track)
    print(f"wrote {len(result.track)} cameras to {output}")
    if not args.no_plot:
        from camvid.viz import plot_cameras

        picture = output.with_suffix(".png")
        plot_cameras([result.track], picture, labels=[output.stem], title=f"{output.name}: recovered cameras")
        print(f"wrote {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
