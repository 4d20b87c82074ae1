"""Run the inspection notebooks headless (``make notebooks``, the tests): parameters through the
environment, outputs kept in memory, an HTML report per notebook."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NOTEBOOK_PARAMETERS", "execute_notebook"]

# environment variable read by the notebooks' parameter cells -> what it sets
NOTEBOOK_PARAMETERS = {
    "CAMVID_NB_RUN": "attention_maps: run directory or step_<N> checkpoint",
    "CAMVID_NB_RELEASED": "attention_maps: released weights instead of RUN: src/sample.py overrides "
                          "(model=... backbone=... pretrained=... method_ckpt=...)",
    "CAMVID_NB_COMPARE": "attention_maps: more runs (comma-separated) for the inside-vs-outside comparison",
    "CAMVID_NB_CVD_RUN": "attention_maps: a CVD run for the cross-video section",
    "CAMVID_NB_CLIP": "attention_maps: clip index of the run's test split",
    "CAMVID_NB_IMAGE": "attention_maps: a conditioning image instead of a test clip",
    "CAMVID_NB_TRAJECTORY": "attention_maps: camera path of CAMVID_NB_IMAGE (preset or pose file)",
    "CAMVID_NB_QUERY": "attention_maps: query pixel 'frame,x,y'",
    "CAMVID_NB_STEPS": "attention_maps: DDIM steps of the captured sampling run",
    "CAMVID_NB_TIMESTEPS": "attention_maps: noise levels of the model comparison (comma-separated)",
    "CAMVID_NB_DEVICE": "attention_maps: torch device",
    "CAMVID_NB_SAMPLES": "cameras: samples folder written by src/sample.py",
    "CAMVID_NB_EVAL": "cameras: its evaluation folder (src/evaluate.py out_dir)",
    "CAMVID_NB_SAMPLE": "cameras: sample id (default: the first)",
    "CAMVID_NB_TRIALS": "cameras: SfM trials when the evaluation has no poses",
}


def execute_notebook(path: str | Path, params: dict[str, str] | None = None, *, repo: str | Path,
                     html: str | Path | None = None, cwd: str | Path | None = None, timeout: int = 1800):
    """Execute ``path`` top to bottom in a fresh kernel (working directory ``cwd``, default ``repo``;
    the notebooks resolve relative paths against ``repo``, passed as ``CAMVID_REPO``).

    ``params``: ``CAMVID_NB_*`` variables (see :data:`NOTEBOOK_PARAMETERS`). Writes the executed
    notebook as HTML to ``html`` (also when a cell fails, so the report shows the error) and returns the
    executed notebook; a failing cell raises ``nbclient.exceptions.CellExecutionError``.
    """
    import nbformat
    from nbclient import NotebookClient

    unknown = sorted(set(params or {}) - set(NOTEBOOK_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown}; valid: {', '.join(NOTEBOOK_PARAMETERS)}")
    nb = nbformat.read(str(path), as_version=4)
    env = {**os.environ, "CAMVID_REPO": str(Path(repo).resolve()), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           **{k: str(v) for k, v in (params or {}).items()}}
    if env.get("PYTHONPATH"):  # the kernel starts elsewhere (cwd): keep a relative PYTHONPATH=src working
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    workdir = Path(cwd or repo)
    workdir.mkdir(parents=True, exist_ok=True)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute(env=env)
    finally:
        if html is not None:
            from nbconvert import HTMLExporter

            body, _ = HTMLExporter().from_notebook_node(nb)
            Path(html).parent.mkdir(parents=True, exist_ok=True)
            Path(html).write_text(body, encoding="utf-8")
    return nb
