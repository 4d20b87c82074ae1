"""Caption sources for sampling: the prompts of CVD's "WebVid prompts" protocol.

CVD scores its cross-video metrics and CLIP-T / CLIP-F on RealEstate10K camera-trajectory pairs
with captions from WebVid-10M (Tables 1-3). A prompt file is one of

- a WebVid CSV (``videoid, name, page_dir, ...``; the caption is ``name``), e.g. WebVid's
  ``results_2M_val.csv``, or any CSV with a ``caption`` / ``prompt`` / ``text`` column;
- a JSON list of captions, or a JSON object ``{id: caption}`` (read in sorted id order);
- a text file with one caption per line.

:func:`prompt_for` gives clip ``index`` its caption through a fixed permutation of the file
(``seed``), so a clip's prompt is the same whichever rank or array task samples it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

__all__ = ["CAPTION_COLUMNS", "load_prompts", "prompt_for"]

# caption columns a CSV may carry, in the order they are looked for (WebVid's is "name")
CAPTION_COLUMNS = ("name", "caption", "prompt", "text")


def load_prompts(path: str | Path) -> list[str]:
    """The non-empty captions of a prompt file, in file order (JSON objects: sorted by id)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path} (a WebVid CSV, a JSON list or object of "
                                "captions, or a text file with one caption per line)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            column = next((c for c in CAPTION_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None:
                raise ValueError(f"{path}: no caption column; expected one of {list(CAPTION_COLUMNS)} "
                                 f"(WebVid's is 'name'), found {reader.fieldnames}")
            captions = [row[column] for row in reader]
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict):
            captions = [data[k] for k in sorted(data)]
        elif isinstance(data, list):
            captions = data
        else:
            raise ValueError(f"{path}: expected a JSON list of captions or an object {{id: caption}}, "
                             f"got {type(data).__name__}")
        if not all(isinstance(c, str) for c in captions):
            raise ValueError(f"{path}: every caption must be a string")
    else:
        captions = path.read_text(encoding="utf-8").splitlines()
    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        raise ValueError(f"{path}: no captions in the file")
    return captions


def prompt_for(captions: list[str], index: int, seed: int = 0) -> tuple[str, int]:
    """(caption, its row in ``captions``) for clip ``index``: the ``index``-th entry of a fixed
    permutation of the captions (``seed``), cycling when there are more clips than captions."""
    if not captions:
        raise ValueError("prompt_for: no captions")
    order = np.random.default_rng(int(seed)).permutation(len(captions))
    row = int(order[int(index) % len(captions)])
    return captions[row], row
