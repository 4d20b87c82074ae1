"""The results table: our numbers beside the paper's, written as markdown, CSV and JSON.

A metric that could not be computed keeps its row with ``value=None`` and the reason; no number
is ever filled in for it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import yaml

from camvid.fsutil import atomic_write_text

__all__ = ["ResultRow", "load_paper_numbers", "paper_row", "format_value", "to_markdown", "write_tables"]


@dataclass
class ResultRow:
    metric: str
    value: float | None  # None: not computed (``note`` says why)
    reference: float | None = None  # the same metric on the GT videos, when that applies
    paper: float | None = None
    note: str = ""
    better: str = ""  # "lower" / "higher" / ""


def load_paper_numbers() -> dict[str, dict]:
    text = resources.files("camvid.evaluation").joinpath("paper_numbers.yaml").read_text()
    return yaml.safe_load(text)


def paper_row(row_id: str | None) -> dict | None:
    if row_id is None:
        return None
    table = load_paper_numbers()
    if row_id not in table:
        raise ValueError(f"unknown paper row {row_id!r}; known rows: {', '.join(sorted(table))}")
    return table[row_id]


def format_value(value: float | None) -> str:
    if value is None:
        return "not computed"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"


def to_markdown(rows: list[ResultRow], title: str, paper_source: str | None = None) -> str:
    lines = [f"### {title}", ""]
    if paper_source:
        lines += [f"Paper row: {paper_source}", ""]
    lines += ["| metric | ours | GT videos (reference) | paper | note |", "|---|---|---|---|---|"]
    for r in rows:
        arrow = {"lower": " ↓", "higher": " ↑"}.get(r.better, "")
        ref = "" if r.reference is None else format_value(r.reference)
        paper = "" if r.paper is None else format_value(r.paper)
        lines.append(f"| {r.metric}{arrow} | {format_value(r.value)} | {ref} | {paper} | {r.note} |")
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | Path, rows: list[ResultRow], extra: dict, title: str,
                 paper_source: str | None = None) -> dict[str, Path]:
    """results.md / results.csv / results.json in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
    # atomic: a reader (or a crash) never sees half a table; modes follow the umask (shared storage)
    atomic_write_text(paths["md"], to_markdown(rows, title, paper_source))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(asdict(rows[0]).keys()) if rows else ["metric"])
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["json"], json.dumps({"title": title, "paper_source": paper_source,
                                                 "rows": [asdict(r) for r in rows], **extra}, indent=2, default=str))
    return paths
