"""Camera paths between tools: convert, validate, view and transfer pose files.

    python data_prep/poses.py validate clip.txt [--size 1280x720]
    python data_prep/poses.py convert transforms.json clip.txt                # NeRF -> RealEstate10K
    python data_prep/poses.py convert clip.txt colmap_model/ --size 1280x720   # -> cameras.txt + images.txt
    python data_prep/poses.py convert blender.txt clip.txt --in-pose c2w --in-axes opengl
    python data_prep/poses.py view clip.txt other.txt -o paths.png [--html paths.html]
    python data_prep/poses.py transfer clip.txt new.txt --image photo.jpg --scale 1.0

Layouts (``--from`` / ``--to``, guessed from the name when omitted): ``re10k`` (RealEstate10K pose
file), ``colmap`` (a folder with cameras.txt + images.txt), ``nerf`` (transforms.json),
``matrices`` (one flattened 3x4 or 4x4 pose per line). Conventions and what the validator checks:
docs/conventions.md; trajectories and the viewer: docs/trajectories.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from camvid.geometry.conventions import (
    AXES,
    FORMATS,
    INTRINSICS_KINDS,
    POSE_KINDS,
    parse_size,
    read_cameras,
    write_cameras,
)


def _reading_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--from", dest="fmt", choices=FORMATS, help="input layout (default: guessed from the name)")
    p.add_argument(f"--{prefix}pose", dest="in_pose", choices=POSE_KINDS,
                   help="the stored matrices are world-to-camera or camera-to-world (default: the layout's own)")
    p.add_argument(f"--{prefix}axes", dest="in_axes", choices=AXES, help="camera axes of the stored matrices")
    p.add_argument(f"--{prefix}intrinsics", dest="in_intrinsics", choices=INTRINSICS_KINDS, default="normalized",
                   help="intrinsics of a RealEstate10K-layout file (default: normalized)")
    p.add_argument("--size", help="image size WIDTHxHEIGHT (pixel intrinsics, COLMAP / NeRF output)")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view for layouts without intrinsics")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate for timestamps of layouts without them")


def _read(args, path: str):
    return read_cameras(path, args.fmt, pose=args.in_pose, axes=args.in_axes, intrinsics=args.in_intrinsics,
                        size=parse_size(args.size), fov_deg=args.fov, fps=args.fps)


def _convert(args) -> int:
    cams = _read(args, args.input)
    for note in cams.notes:
        print(f"note: {note}")
    write_cameras(args.output, cams, args.to, pose=args.out_pose, axes=args.out_axes, intrinsics=args.out_intrinsics)
    print(f"wrote {len(cams)} cameras to {args.output}")
    return 0


def _validate(args) -> int:
    from camvid.geometry.pose_validation import validate_pose_file

    status = 0
    for path in args.inputs:
        report = validate_pose_file(path, args.fmt, pose=args.in_pose, axes=args.in_axes,
                                    intrinsics=args.in_intrinsics, size=parse_size(args.size))
        print(report.format())
        status |= 0 if report.ok else 1
    return status


def _view(args) -> int:
    from camvid.viz import plot_cameras, plot_cameras_html

    tracks = [_read(args, p) for p in args.inputs]
    labels = args.labels or [Path(p).stem for p in args.inputs]
    if len(labels) != len(tracks):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(tracks)} files")
    out = Path(args.output or Path(args.inputs[0]).with_suffix(".png"))
    plot_cameras(tracks, out, labels=labels, title=args.title, normalize=args.normalize)
    print(f"wrote {out}")
    if args.html:
        plot_cameras_html(tracks, args.html, labels=labels, title=args.title, normalize=args.normalize)
        print(f"wrote {args.html}")
    return 0


def _transfer(args) -> int:
    from camvid.geometry.conventions import Cameras, write_re10k
    from camvid.trajectories import image_size, transfer_track

    cams = _read(args, args.input)
    if (args.image is None) == (args.target_size is None):
        raise SystemExit("transfer: give the target image (--image PATH) or its size (--target-size WxH)")
    width, height = image_size(args.image) if args.image else parse_size(args.target_size)
    track = transfer_track(cams.track, (height, width), translation_scale=args.scale, num_frames=args.frames)
    write_re10k(args.output, Cameras(track, width, height))
    print(f"wrote {len(track)} cameras for a {width}x{height} image to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert between layouts and conventions")
    c.add_argument("input")
    c.add_argument("output")
    _reading_options(c, "in-")
    c.add_argument("--to", choices=FORMATS, help="output layout (default: from the name: .json nerf, a folder colmap, "
                   "else re10k)")
    c.add_argument("--out-pose", choices=POSE_KINDS, help="for re10k / matrices output (default: the layout's own)")
    c.add_argument("--out-axes", choices=AXES)
    c.add_argument("--out-intrinsics", choices=INTRINSICS_KINDS, default="normalized")
    c.set_defaults(run=_convert)

    v = sub.add_parser("validate", help="name what is wrong with pose files; exit status 1 if anything is")
    v.add_argument("inputs", nargs="+")
    _reading_options(v)
    v.set_defaults(run=_validate)

    w = sub.add_parser("view", help="draw camera frustums of one or more pose files (PNG, optional HTML)")
    w.add_argument("inputs", nargs="+")
    w.add_argument("-o", "--output", help="PNG path (default: the first input with .png)")
    w.add_argument("--html", help="also write an interactive HTML page (needs plotly: pip install -e '.[viz]')")
    w.add_argument("--labels", nargs="+")
    w.add_argument("--title")
    w.add_argument("--normalize", action="store_true",
                   help="relative to each path's first frame, furthest camera at distance 1 (as the evaluation)")
    _reading_options(w)
    w.set_defaults(run=_view)

    t = sub.add_parser("transfer", help="a clip's camera path for another image: aspect-adapted intrinsics "
                       "(square pixels), rescaled translation, relative to the first frame")
    t.add_argument("input")
    t.add_argument("output")
    t.add_argument("--image", help="the target image (its size is used)")
    t.add_argument("--target-size", help="or the target size WIDTHxHEIGHT")
    t.add_argument("--scale", type=float, default=None, help="distance of the furthest camera from the first "
                   "(default: keep the path's own scale)")
    t.add_argument("--frames", type=int, default=None, help="keep the first N frames")
    _reading_options(t)
    t.set_defaults(run=_transfer)

    args = p.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
