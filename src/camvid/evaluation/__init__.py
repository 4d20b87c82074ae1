"""Evaluation of generated videos: the CamI2V camera protocol (pycolmap / GLOMAP), CVD's geometry
consistency, FVD / FID / KID / CLIP, and the sample folder layout shared with ``src/sample.py``.

Submodules import their heavy dependencies (pycolmap, transformers, torchmetrics) lazily.
"""

from camvid.evaluation.layout import SampleRecord, read_samples, write_sample

__all__ = ["SampleRecord", "read_samples", "write_sample"]
