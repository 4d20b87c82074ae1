"""Helpers of the inspection notebooks (notebooks/*.ipynb): load a run and a clip, the epipolar bands
of a query pixel, how much captured attention falls inside them, and the figures. The attention itself
is captured by :func:`camvid.attention.capture`."""

from camvid.inspection.bands import (
    BAND_OPTIONS,
    BandMass,
    QueryBand,
    band_mass,
    band_mass_rows,
    band_options,
    band_rows,
    layer_band,
    query_bands,
)
from camvid.inspection.matches import MatchMass, conditioning_matches, match_mass, match_mass_rows
from camvid.inspection.runs import (
    LoadedRun,
    clip_frames,
    clip_from_image,
    load_released,
    load_run,
    noised_forward,
    run_clip,
)

__all__ = [
    "BAND_OPTIONS",
    "BandMass",
    "QueryBand",
    "band_mass",
    "band_mass_rows",
    "band_options",
    "band_rows",
    "layer_band",
    "query_bands",
    "MatchMass",
    "conditioning_matches",
    "match_mass",
    "match_mass_rows",
    "LoadedRun",
    "clip_frames",
    "clip_from_image",
    "load_released",
    "load_run",
    "noised_forward",
    "run_clip",
]
