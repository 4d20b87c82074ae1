"""`make notebooks`: execute the inspection notebooks headless and write one HTML report each.

    python scripts/run_notebooks.py                       # on the `make demo` run (outputs/demo)
    python scripts/run_notebooks.py --run RUN_DIR --compare RUN_A,RUN_B --cvd-run CVD_RUN_DIR \
        --samples SAMPLES_DIR --eval EVAL_DIR --out outputs/notebooks

Reports: <out>/attention_maps.html, <out>/cameras.html, <out>/epipolar_masks.html (+ the figure it saves).
The notebooks in notebooks/ are not modified (they stay without outputs in git).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("attention_maps", "cameras", "epipolar_masks")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="outputs/demo", help="the `make demo` output folder (defaults of the others)")
    p.add_argument("--run", help="run dir or <run>/checkpoints/step_<N> (default: <demo>/train)")
    p.add_argument("--released", default="", help="released weights instead of --run: src/sample.py overrides, "
                   "e.g. 'model=cami2v backbone=dynamicrafter_256 pretrained=PATH method_ckpt=PATH'")
    p.add_argument("--compare", default="", help="more runs, comma-separated, for the inside-vs-outside comparison")
    p.add_argument("--cvd-run", default="", help="a CVD run for the cross-video section")
    p.add_argument("--samples", help="samples folder (default: <demo>/samples)")
    p.add_argument("--eval", help="its evaluation folder (default: <demo>/eval)")
    p.add_argument("--image", default="", help="a conditioning image instead of the run's first test clip")
    p.add_argument("--trajectory", default="orbit", help="camera path for --image: preset or pose file")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of the captured sampling run")
    p.add_argument("--only", choices=NOTEBOOKS, action="append", help="run only these notebooks")
    p.add_argument("--out", default="outputs/notebooks", help="where the HTML reports go")
    args = p.parse_args(argv)

    from nbclient.exceptions import CellExecutionError

    from camvid.inspection.notebooks import execute_notebook

    demo = Path(args.demo)
    run = args.run or str(demo / "train")
    samples = args.samples or str(demo / "samples")
    needed = [("samples", samples)] + ([] if args.released else [("run", run)])
    missing = [what for what, path in needed if not (REPO / path).exists() and not Path(path).exists()]
    if missing and (args.only is None or set(args.only) & {"attention_maps", "cameras"}):
        print(f"run_notebooks: {', '.join(missing)} not found ({run}, {samples}): run `make demo` first, or give "
              "--run / --samples", file=sys.stderr)
        return 2
    params = {
        "attention_maps": {"CAMVID_NB_RUN": run, "CAMVID_NB_RELEASED": args.released, "CAMVID_NB_COMPARE": args.compare, "CAMVID_NB_CVD_RUN": args.cvd_run,
                           "CAMVID_NB_STEPS": str(args.steps), "CAMVID_NB_IMAGE": args.image,
                           "CAMVID_NB_TRAJECTORY": args.trajectory},
        "cameras": {"CAMVID_NB_SAMPLES": samples, "CAMVID_NB_EVAL": args.eval or str(demo / "eval")},
        "epipolar_masks": {},
    }
    out = Path(args.out).resolve()
    failed = []
    for name in args.only or NOTEBOOKS:
        html = out / f"{name}.html"
        print(f"=== {name}.ipynb -> {html}", flush=True)
        try:
            # run inside the report folder: files a notebook writes (epipolar_masks.png) land beside its report
            execute_notebook(REPO / "notebooks" / f"{name}.ipynb", params[name], repo=REPO, html=html, cwd=out)
        except CellExecutionError as err:
            failed.append(name)
            print(f"{name}: a cell failed (the report shows where):\n{str(err)[-2000:]}", file=sys.stderr)
    print(f"reports in {out}/" + ("" if not failed else f"; FAILED: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
