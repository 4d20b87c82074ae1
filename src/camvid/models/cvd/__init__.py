"""Collaborative Video Diffusion (CVD): cross-video epipolar synchronisation modules placed after the
AnimateDiff motion modules. The module itself is ``camvid.attention.CrossVideoSyncModule``."""

from camvid.models.cvd.sync import CrossVideoSync, install_cvd_modules, open_cross_mask

__all__ = ["CrossVideoSync", "install_cvd_modules", "open_cross_mask"]
