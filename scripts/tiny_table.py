"""A paper table at ``scale=tiny`` (or ``tiny_frozen``) on one machine: every row x seed, a few jobs at a
time, then the table.

``python src/train.py -m table=T scale=tiny seed=1,2,3`` runs the jobs one after another in one
process (Hydra's basic launcher); on a laptop with N cores it is faster to run N jobs side by side,
one thread each (a tiny job does not scale past one or two threads). This script does that:

    python scripts/tiny_table.py cami2v_t1 --seeds 1 2 3 --lanes 2

Each job is exactly ``python src/train.py table=T scale=tiny experiment=<row preset> seed=<s>``
(extra ``key=value`` arguments are passed to every job), so it lands where the sweep would put it
(``$CAMVID_ROOT/outputs/tables/tiny/T/<preset>/seed_<s>``) and a finished job is skipped when the
command is run again (its stages find their outputs). Its log goes to ``<sweep>/logs/``. At the end
the table is rendered as ``make table TABLE=T SCALE=tiny`` does (``table.md``, ``table.csv``).
``--scale tiny_frozen`` runs the same jobs with the papers' frozen-base recipe (conf/scale/tiny_frozen.yaml)
into ``outputs/tables/tiny_frozen/T``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from camvid.experiments.tables import TINY_SCALES, default_root, load_table_config  # noqa: E402
from camvid.experiments.tables import main as render_table  # noqa: E402


def jobs_of(table: str, seeds: list[int], rows: list[str] | None) -> list[tuple[str, int]]:
    """(preset, seed) for every row of the table that has a preset, in the paper's order."""
    presets = [r["preset"] for r in load_table_config(table)["rows"] if r.get("preset")]
    if rows:
        unknown = sorted(set(rows) - set(presets))
        if unknown:
            raise SystemExit(f"--rows {' '.join(unknown)}: not a row preset of table {table} (its rows: "
                             f"{', '.join(presets)})")
        presets = [p for p in presets if p in rows]
    return [(p, s) for s in seeds for p in presets]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help="a conf/table/<name>.yaml, e.g. cami2v_t2")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--lanes", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                   help="jobs run side by side (default: 2, or 1 on a 1-core machine)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per job (default: the machine's cores / lanes, at least 1)")
    p.add_argument("--rows", nargs="+", default=None, help="only these row presets")
    p.add_argument("--scale", default="tiny", choices=TINY_SCALES,
                   help="tiny: the tiny tables' recipe (base and modules train); tiny_frozen: the papers' "
                        "frozen base, only the camera modules train (conf/scale/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides passed to every job (anywhere on the line)")
    argv = sys.argv[1:] if argv is None else list(argv)
    # key=value words are overrides wherever they stand (after --seeds / --rows they would be swallowed)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = p.parse_args([a for a in argv if a not in overrides])
    args.overrides = [*args.overrides, *overrides]
    if args.lanes < 1:
        p.error(f"--lanes must be >= 1, got {args.lanes}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"overrides must be key=value, got {bad}")

    todo = deque(jobs_of(args.table, args.seeds, args.rows))
    root = default_root(args.table, args.scale)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.lanes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
               WANDB_MODE=os.environ.get("WANDB_MODE", "offline"), WANDB_SILENT="true")
    print(f"{args.table} at scale={args.scale}: {len(todo)} jobs, {args.lanes} at a time, {threads} thread(s) each; "
          f"jobs in {root}, logs in {logs}", flush=True)

    running: dict[subprocess.Popen, tuple[str, int, float]] = {}
    failed: list[str] = []
    start = time.perf_counter()
    try:
        _run_lanes(todo, running, failed, args, env, logs)
    finally:  # Ctrl-C or an error here: no job keeps running behind the user's back
        for proc in running:
            proc.terminate()
    print(f"all jobs finished in {time.perf_counter() - start:.0f} s", flush=True)
    render_table([args.table, "--scale", args.scale, "--root", str(root)])
    if failed:
        print(f"failed jobs (their cells say so): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _run_lanes(todo: deque, running: dict, failed: list, args, env: dict, logs: Path) -> None:
    while todo or running:
        while todo and len(running) < args.lanes:
            preset, seed = todo.popleft()
            cmd = [sys.executable, str(REPO / "src" / "train.py"), f"table={args.table}", f"scale={args.scale}",
                   f"experiment={preset}", f"seed={seed}", "hydra.job_logging.root.level=WARNING", *args.overrides]
            log = (logs / f"{preset}.seed_{seed}.log").open("w")
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            running[proc] = (preset, seed, time.perf_counter())
        time.sleep(1.0)
        for proc in [q for q in running if q.poll() is not None]:
            preset, seed, began = running.pop(proc)
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(f"  {preset} seed {seed}: {status} in {time.perf_counter() - began:.0f} s "
                  f"(log: {logs / f'{preset}.seed_{seed}.log'})", flush=True)
            if proc.returncode != 0:
                failed.append(f"{preset} seed {seed}")


if __name__ == "__main__":
    sys.exit(main())
