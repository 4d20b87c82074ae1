"""``make table TABLE=...``: a table sweep's finished jobs in the paper's layout, beside the paper.

A table config (``conf/table/<name>.yaml``) lists the paper's rows (label + preset) and columns. A
job of the sweep leaves ``<root>/<row preset>/seed_<s>/samples/eval/results.json``; this module reads
every such file, averages the seeds (mean ± std), puts the paper's number (``paper_numbers.yaml``,
keyed by the preset's ``paper_row``) in the adjacent column with the relative difference, and writes
``table.md`` and ``table.csv``. A cell that cannot be filled says why: no preset for the row, no
finished job, or the metric's own "not computed" reason.

A ``scale=tiny`` table (``--scale tiny``, or ``tiny_frozen``) shows, before the paper's columns, the tiny world's own
measure (``conf/scale/tiny.yaml`` evaluates it for every row): the camera-following PSNR, its
ground-truth-video upper bound (``CamFollowPSNR_gt``, the reference of the same results row), the
static and wrong-trajectory references, the margin between a job's own-camera score and its
wrong-trajectory score (``CamFollowMargin``, paired per job) and the first-frame PSNR
(docs/evaluation.md). The papers do
not report these, so their paper column reads "—". A table config may name its own ``tiny_columns``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from camvid.evaluation.tables import format_value, load_paper_numbers

__all__ = ["Cell", "TableRow", "TINY_COLUMNS", "load_table_config", "collect_table", "to_markdown", "write_table",
           "main"]

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
# the camera-following family (camvid.evaluation.camera_following) in the order the tiny tables show it;
# "<metric>_gt" is the results row's reference (the same measure on the ground-truth videos)
TINY_COLUMNS = ("CamFollowPSNR", "CamFollowPSNR_gt", "CamFollowPSNR_static", "CamFollowPSNR_wrong_traj",
                "CamFollowMargin", "FirstFramePSNR")
GT_SUFFIX = "_gt"
# the conf/scale/ presets that run on one CPU machine (their tables show the camera-following columns)
TINY_SCALES = ("tiny", "tiny_frozen")
# columns computed per job from two others (name -> (a, b): a - b). CamFollowMargin is a job's own-camera
# score minus the same videos against the other clips' cameras: paired within the job, so the seeds'
# common ups and downs (a sharper or blurrier model scores higher or lower against every camera) cancel
DERIVED = {"CamFollowMargin": ("CamFollowPSNR", "CamFollowPSNR_wrong_traj")}


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # one per finished seed that computed it
    paper: float | None = None
    note: str = ""

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def rel_diff(self) -> float | None:
        """(ours - paper) / |paper|; None when either is missing or the paper's is 0."""
        if self.mean is None or self.paper is None or self.paper == 0:
            return None
        return (self.mean - self.paper) / abs(self.paper)


@dataclass
class TableRow:
    label: str
    preset: str | None
    paper_row: str | None
    seeds: list[str]
    cells: dict[str, Cell]
    note: str = ""


def load_table_config(name: str, conf_dir: Path = CONF_DIR) -> dict:
    path = conf_dir / "table" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "table").glob("*.yaml"))
        raise FileNotFoundError(f"TABLE={name}: no {path}; known tables: {', '.join(known)}")
    return yaml.safe_load(path.read_text())["table"]


def preset_paper_row(preset: str, conf_dir: Path = CONF_DIR) -> str | None:
    path = conf_dir / "experiment" / f"{preset}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"table row preset {preset!r}: no {path}")
    return (yaml.safe_load(path.read_text()) or {}).get("paper_row")


def _job_results(row_dir: Path) -> dict[str, list[Path]]:
    """seed folder name -> the results.json files of every finished job of one row: ``samples/eval``
    and those of the job's further sample sets (``samples_<name>/eval``, ``stage_sample.sets``)."""
    jobs: dict[str, list[Path]] = {}
    for p in sorted(row_dir.glob("seed_*/samples/eval/results.json")):
        seed_dir = p.parents[2]
        jobs[seed_dir.name] = [p, *sorted(seed_dir.glob("samples_*/eval/results.json"))]
    return jobs


def _results_by_metric(results: Path | list[Path]) -> dict[str, dict]:
    """metric -> results row, plus ``<metric>_gt`` for every row carrying a ground-truth reference.
    Over several sample sets a metric's computed value wins over another set's "not computed"."""
    found: dict[str, dict] = {}
    for path in [results] if isinstance(results, Path) else results:
        rows = json.loads(path.read_text())["rows"]
        for r in rows:
            extra = {r["metric"]: r}
            if r.get("reference") is not None:
                extra[f"{r['metric']}{GT_SUFFIX}"] = {"metric": f"{r['metric']}{GT_SUFFIX}", "value": r["reference"]}
            for name, row in extra.items():
                if name not in found or (found[name].get("value") is None and row.get("value") is not None):
                    found[name] = row
    for name, (a, b) in DERIVED.items():
        va, vb = (found.get(m, {}).get("value") for m in (a, b))
        if name not in found and va is not None and vb is not None:
            found[name] = {"metric": name, "value": float(va) - float(vb)}
    return found


def collect_table(name: str, root: Path, conf_dir: Path = CONF_DIR, scale: str = "full") -> tuple[dict, list[TableRow]]:
    """The table config and its rows filled from the finished jobs under ``root``; a scale of
    :data:`TINY_SCALES` puts the camera-following columns (``tiny_columns`` or :data:`TINY_COLUMNS`) before
    the paper's."""
    spec = load_table_config(name, conf_dir)
    if scale in TINY_SCALES:
        extra = [c for c in spec.get("tiny_columns", TINY_COLUMNS) if c not in spec["columns"]]
        spec = {**spec, "columns": [*extra, *spec["columns"]], "unpublished": extra}
    paper = load_paper_numbers()
    rows = []
    for entry in spec["rows"]:
        preset = entry.get("preset")
        prow = entry.get("paper_row") or (preset_paper_row(preset, conf_dir) if preset else None)
        published = (paper.get(prow) or {}).get("metrics", {}) if prow else {}
        cells = {c: Cell(paper=published.get(c)) for c in spec["columns"]}
        if preset is None:
            for c in cells.values():
                c.note = f"not run: {entry.get('note', 'no preset for this row')}"
            rows.append(TableRow(entry["label"], None, prow, [], cells, entry.get("note", "")))
            continue
        jobs = _job_results(root / preset)
        if not jobs:
            for c in cells.values():
                c.note = f"not computed: no finished job under {root / preset}/seed_*"
        reasons: dict[str, set[str]] = {c: set() for c in cells}
        for results in jobs.values():
            found = _results_by_metric(results)
            for col, cell in cells.items():
                r = found.get(col)
                if r is None:
                    reasons[col].add("the evaluation did not report it")
                elif r["value"] is None or (isinstance(r["value"], float) and math.isnan(r["value"])):
                    reasons[col].add(r.get("note") or "not computed")
                else:
                    cell.values.append(float(r["value"]))
        for col, cell in cells.items():
            if jobs and reasons[col]:
                missing = len(jobs) - len(cell.values)
                cell.note = f"{missing}/{len(jobs)} seeds: " + "; ".join(sorted(reasons[col]))
        rows.append(TableRow(entry["label"], preset, prow, sorted(jobs), cells))
    return spec, rows


def _ours(cell: Cell) -> str:
    if cell.mean is None:
        return "—"
    text = format_value(cell.mean)
    return f"{text} ± {format_value(cell.std)}" if cell.std is not None else text


def _rel(cell: Cell) -> str:
    return "" if cell.rel_diff is None else f"{100 * cell.rel_diff:+.1f}%"


def to_markdown(spec: dict, rows: list[TableRow], root: Path) -> str:
    cols = spec["columns"]
    head = ["row", "seeds"] + [h for c in cols for h in (f"{c} ours", f"{c} paper", f"{c} Δ")]
    lines = [f"## {spec['title']}", "", f"Jobs: `{root}` · ours = mean ± std over seeds · "
             "paper = the published number · Δ = (ours − paper) / |paper|", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: dict[str, int] = {}  # one numbered note per distinct reason of a row
    for row in rows:
        cells = []
        for c in cols:
            cell = row.cells[c]
            mark = ""
            if cell.note:
                text = f"{row.label}: {cell.note}"
                mark = f" [{notes.setdefault(text, len(notes) + 1)}]"
            paper = "—" if c in spec.get("unpublished", ()) else "" if cell.paper is None else format_value(cell.paper)
            cells += [_ours(cell) + mark, paper, _rel(cell)]
        lines.append("| " + " | ".join([row.label, str(len(row.seeds))] + cells) + " |")
    if notes:
        lines += ["", "Notes:"] + [f"{i}. {n}" for n, i in notes.items()]
    return "\n".join(lines) + "\n"


def write_table(spec: dict, rows: list[TableRow], root: Path, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "table.md", "csv": out_dir / "table.csv"}
    paths["md"].write_text(to_markdown(spec, rows, root))
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "preset", "paper_row", "metric", "ours_mean", "ours_std", "num_seeds", "paper",
                    "rel_diff", "note"])
        for row in rows:
            for c in spec["columns"]:
                cell = row.cells[c]
                w.writerow([row.label, row.preset or "", row.paper_row or "", c,
                            "" if cell.mean is None else cell.mean, "" if cell.std is None else cell.std,
                            len(cell.values), "" if cell.paper is None else cell.paper,
                            "" if cell.rel_diff is None else cell.rel_diff, cell.note])
    return paths


def default_root(name: str, scale: str = "full") -> Path:
    """Where ``python src/train.py -m table=<name> scale=<scale>`` puts its jobs (conf/table/*.yaml:
    ``${paths.log_dir}/tables/<scale>/<name>``, ``paths.log_dir`` = ``$CAMVID_ROOT/outputs``)."""
    return Path(os.environ.get("CAMVID_ROOT", ".")) / "outputs" / "tables" / scale / name


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description="Collect a table sweep's finished jobs into the paper's layout.")
    parser.add_argument("table", help="a conf/table/<name>.yaml, e.g. cami2v_t2")
    parser.add_argument("--scale", default="full", help="the sweep's scale= (full, tiny or tiny_frozen)")
    parser.add_argument("--root", default=None, help="the sweep directory (default: outputs/tables/<scale>/<table>)")
    parser.add_argument("--out", default=None, help="where table.md/table.csv go (default: the sweep directory)")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else default_root(args.table, args.scale)
    spec, rows = collect_table(args.table, root, scale=args.scale)
    paths = write_table(spec, rows, root, Path(args.out) if args.out else root)
    print(paths["md"].read_text())
    print(f"written: {paths['md']} and {paths['csv']}")
    return paths


if __name__ == "__main__":
    main()
