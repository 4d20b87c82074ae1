"""The pictures of docs/trajectories.md, rendered by the trajectory viewer (camvid.viz).

    python scripts/trajectory_pictures.py --out docs/img

1. every named preset of src/sample.py (16 frames, seed 0);
2. CVD's folded pair (two videos leaving one camera in opposite directions) and a multi-view request;
3. annotation of a synthetic render (data_prep/annotate_poses.py's Python call) against its true
   cameras, with the errors printed (the numbers quoted in the docs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/img")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--dpi", type=int, default=70)
    p.add_argument("--skip-sfm", action="store_true", help="skip the annotation example (pycolmap, ~15 s)")
    args = p.parse_args(argv)

    from camvid.data.synthetic import TRAJECTORY_KINDS, make_trajectory
    from camvid.trajectories import preset_track
    from camvid.viz import plot_cameras

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    T = args.frames
    for kind in TRAJECTORY_KINDS:
        path = out / f"trajectory_{kind}.png"
        plot_cameras(preset_track(kind, T, (256, 256)), path, labels=[kind], dpi=args.dpi,
                     title=f"trajectory={kind} ({T} frames, seed 0)")
        print(f"wrote {path}")

    # CVD folding: a 2T-1 window cut at its middle frame; A runs forward, B backward (clips.fold_indices)
    from camvid.data.clips import fold_indices

    long = make_trajectory("mixed", 2 * T - 1, 0)
    a, b = fold_indices(len(long), T, 1, None)
    path = out / "trajectory_cvd_fold.png"
    plot_cameras([long[a], long[b]], path, labels=["video A (forward)", "video B (backward)"], dpi=args.dpi,
                 title="CVD folded pair: both videos start at one camera")
    print(f"wrote {path}")
    path = out / "trajectory_multiview.png"
    plot_cameras([preset_track("orbit", T, (256, 256), seed=0), preset_track("pan", T, (256, 256), seed=1)], path,
                 labels=["view0: orbit", "view1: pan"], normalize=True, dpi=args.dpi,
                 title="trajectory=[orbit,pan] (multi-view methods)")
    print(f"wrote {path}")

    if not args.skip_sfm:
        from camvid.data.synthetic import default_intrinsics, make_scene, render_frames
        from camvid.evaluation.annotate import AnnotateOptions, annotate_frames
        from camvid.evaluation.pose_metrics import camera_errors

        H = W = 128
        K = default_intrinsics(H, W)
        gt = make_trajectory("orbit", T, 0)
        frames, _ = render_frames(make_scene(0), K, gt, H, W)
        result = annotate_frames(frames, np.arange(T), 8.0, AnnotateOptions(), source="synthetic orbit render")
        print(result.report())
        errors = camera_errors(result.track.c2w(), gt)
        print(f"estimated intrinsics vs true fx/W {K[0, 0] / W:.4f}: {result.K[0, 0] / W:.4f}")
        print(f"errors summed over {T} frames: " + ", ".join(f"{k} {v:.4f}" for k, v in errors.items()))
        path = out / "annotate_synthetic.png"
        plot_cameras([gt, result.track.c2w()], path, labels=["true cameras", "annotated (SfM, estimated K)"],
                     normalize=True, dpi=args.dpi,
                     title=f"annotate_poses on a render: RotErr {errors['RotErr']:.3f}, TransErr {errors['TransErr']:.3f}")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
