"""Collaborative Video Diffusion (CVD): cross-video epipolar synchronisation modules for AnimateDiff."""

from camvid.models.cvd.modules import EpiAttention, EpiModule, EpiTransformer, EpiTransformerBlock
from camvid.models.cvd.sync import ATTENTION_PATHS, CrossVideoSync, PairGeometry, install_cvd_modules

__all__ = [
    "ATTENTION_PATHS",
    "CrossVideoSync",
    "EpiAttention",
    "EpiModule",
    "EpiTransformer",
    "EpiTransformerBlock",
    "PairGeometry",
    "install_cvd_modules",
]
