"""Pictures of camera paths: frustums in 3-D (matplotlib PNG; interactive HTML with plotly).

``plot_cameras`` is the one call other code uses (sample.py, the evaluation, notebooks);
docs/trajectories.md shows what it draws.
"""

from camvid.viz.frustums import camera_paths, frustum_segments, plot_cameras, plot_cameras_html

__all__ = ["camera_paths", "frustum_segments", "plot_cameras", "plot_cameras_html"]
