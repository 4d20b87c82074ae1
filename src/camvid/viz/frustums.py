"""Camera frustums of one or more paths, drawn in 3-D.

Every camera is a pyramid from its centre to the image corners at a fixed depth, with a small
triangle on the image's top edge so roll and upside-down cameras are visible. World axes are
OpenCV's (y down); the plot shows ``-y`` upwards so a level camera looks level. Paths are given as
pose files (any layout of :mod:`camvid.geometry.conventions`), :class:`CameraTrack` /
:class:`Cameras`, or (T, 4, 4) camera-to-world arrays / tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camvid.geometry.cameras import CameraTrack
from camvid.geometry.conventions import Cameras, read_cameras, w2c_to_c2w

__all__ = ["CameraPath", "camera_paths", "frustum_segments", "plot_cameras", "plot_cameras_html"]

DEFAULT_FOV_DEG = 60.0


@dataclass
class CameraPath:
    c2w: np.ndarray  # (T, 4, 4) OpenCV camera-to-world
    intrinsics: np.ndarray  # (T, 4) normalised fx, fy, cx, cy
    label: str


def _one(item, label: str, K=None, image_hw=None) -> CameraPath:
    if isinstance(item, (str, Path)):
        item = read_cameras(item)
        label = label or Path(str(item)).stem
    if isinstance(item, Cameras):
        item = item.track
    if isinstance(item, CameraTrack):
        return CameraPath(w2c_to_c2w(item.w2c), np.asarray(item.intrinsics, dtype=np.float64), label)
    c2w = item.detach().cpu().double().numpy() if hasattr(item, "detach") else np.asarray(item, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"plot_cameras: expected (T, 4, 4) camera-to-world poses for {label or 'a path'}, "
                         f"got shape {c2w.shape}")
    if c2w.shape[1] == 3:
        c2w = np.concatenate([c2w, np.tile([[[0, 0, 0, 1.0]]], (len(c2w), 1, 1))], 1)
    if K is not None:
        K = K.detach().cpu().double().numpy() if hasattr(K, "detach") else np.asarray(K, dtype=np.float64)
        K = np.broadcast_to(K, (len(c2w), 3, 3))
        h, w = image_hw if image_hw is not None else (2 * K[0, 1, 2], 2 * K[0, 0, 2])
        intr = np.stack([K[:, 0, 0] / w, K[:, 1, 1] / h, K[:, 0, 2] / w, K[:, 1, 2] / h], -1)
    else:
        f = 0.5 / np.tan(np.radians(DEFAULT_FOV_DEG) / 2)
        intr = np.tile([f, f, 0.5, 0.5], (len(c2w), 1))
    return CameraPath(c2w, intr, label)


def _normalize(c2w: np.ndarray) -> np.ndarray:
    """Relative to the first camera, the furthest camera at distance 1 (the evaluation's canonical form)."""
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    furthest = np.linalg.norm(rel[:, :3, 3], axis=-1).max()
    if furthest > 1e-12:
        rel[:, :3, 3] /= furthest
    return rel


def camera_paths(cameras, labels: Sequence[str] | None = None, normalize: bool = False, K=None,
                 image_hw: tuple[int, int] | None = None) -> list[CameraPath]:
    """Normalise the inputs of :func:`plot_cameras` to a list of :class:`CameraPath`."""
    single = isinstance(cameras, (str, Path, CameraTrack, Cameras)) or (
        hasattr(cameras, "shape") and len(cameras.shape) == 3)
    items = [cameras] if single else list(cameras)
    if not items:
        raise ValueError("plot_cameras: no camera paths given")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"plot_cameras: {len(labels)} labels for {len(items)} camera paths")
    Ks = K if isinstance(K, (list, tuple)) else [K] * len(items)
    paths = []
    for i, item in enumerate(items):
        label = labels[i] if labels is not None else (Path(item).stem if isinstance(item, (str, Path)) else "")
        path = _one(item, label or (f"path {i}" if len(items) > 1 else "cameras"), Ks[i], image_hw)
        if len(path.c2w) == 0:
            raise ValueError(f"plot_cameras: {path.label} has no cameras")
        if not np.isfinite(path.c2w).all():
            bad = int(np.nonzero(~np.isfinite(path.c2w).reshape(len(path.c2w), -1).all(1))[0][0])
            raise ValueError(f"plot_cameras: {path.label}: frame {bad} has a non-finite pose")
        if normalize:
            path.c2w = _normalize(path.c2w)
        paths.append(path)
    return paths


def _display(points: np.ndarray) -> np.ndarray:
    """OpenCV world (x right, y down, z forward) -> plot axes (x, z, -y): up is up."""
    return np.stack([points[..., 0], points[..., 2], -points[..., 1]], axis=-1)


def frustum_segments(c2w: np.ndarray, intrinsics: np.ndarray, depth: float) -> np.ndarray:
    """(T, 11, 2, 3) world-space line segments of each camera: 4 edges from the centre to the image
    corners at z = ``depth``, the 4 image edges, and a 3-segment "up" triangle on the top edge."""
    fx, fy, cx, cy = (intrinsics[:, i][:, None] for i in range(4))
    # image corners (u, v in [0, 1]) -> camera rays with z = 1
    u = np.array([0.0, 1.0, 1.0, 0.0])[None]
    v = np.array([0.0, 0.0, 1.0, 1.0])[None]
    corners = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u * fx)], -1) * depth  # (T, 4, 3)
    top_mid = (corners[:, 0] + corners[:, 1]) / 2
    half_w = (corners[:, 1] - corners[:, 0]) * 0.2
    apex_up = top_mid + np.stack([np.zeros(len(fx)), -np.abs(half_w[:, 0]) * 1.2, np.zeros(len(fx))], -1)
    tri = np.stack([top_mid - half_w, top_mid + half_w, apex_up], 1)  # (T, 3, 3)
    centre = np.zeros_like(corners[:, :1])
    local = np.concatenate([
        np.stack([np.repeat(centre, 4, 1), corners], 2),  # centre -> corners
        np.stack([corners, np.roll(corners, -1, 1)], 2),  # image rectangle
        np.stack([tri, np.roll(tri, -1, 1)], 2),  # up marker
    ], 1)  # (T, 11, 2, 3)
    R, t = c2w[:, None, None, :3, :3], c2w[:, None, None, :3, 3]
    return np.einsum("tabij,tabj->tabi", np.broadcast_to(R, (*local.shape[:3], 3, 3)), local) + t


def _layout(paths: list[CameraPath], frustum_size: float | None) -> tuple[float, np.ndarray, float]:
    centres = np.concatenate([p.c2w[:, :3, 3] for p in paths])
    extent = float(np.linalg.norm(centres.max(0) - centres.min(0)))
    depth = frustum_size if frustum_size is not None else (0.12 * extent if extent > 1e-9 else 0.3)
    mid = (centres.max(0) + centres.min(0)) / 2
    half = max(extent / 2, 0.0) + 1.6 * depth
    return depth, mid, half


def _every(T: int, every: int | None, paths: int = 1) -> np.ndarray:
    # about 20 cameras of a single path, 8 of each when paths are compared (overlaps stay legible)
    step = every or max(1, int(np.ceil(T / (20 if paths == 1 else 8))))
    idx = list(range(0, T, step))
    if idx[-1] != T - 1:
        idx.append(T - 1)
    return np.asarray(idx)


def plot_cameras(cameras, path: str | Path | None = None, *, labels: Sequence[str] | None = None,
                 title: str | None = None, normalize: bool = False, K=None, image_hw: tuple[int, int] | None = None,
                 frustum_size: float | None = None, every: int | None = None, elev: float = 20.0,
                 azim: float = -60.0, ax=None, dpi: int = 100):
    """Draw camera frustums of one or more paths; returns the matplotlib Figure (saved as PNG at ``path``).

    cameras:      one path or a list of paths; a path is a pose file (any layout), a CameraTrack /
                  Cameras, or (T, 4, 4) camera-to-world poses (numpy or torch, OpenCV axes).
    labels:       one legend entry per path (default: file stems / "path i").
    normalize:    relative to each path's first camera, furthest camera at distance 1 (how the
                  evaluation compares requested and recovered cameras).
    K, image_hw:  pixel intrinsics (3, 3) or (T, 3, 3) for array inputs (one per path in a list) and
                  the (height, width) they refer to; without them a 60 degree camera is drawn.
    frustum_size: depth of the drawn pyramids in world units (default: 12 % of the scene extent).
    every:        draw every n-th camera (default: about 20 per path; first and last always).
    ax:           an existing 3-D axes to draw into (then nothing is saved unless ``path`` is given).
    """
    import mpl_toolkits.mplot3d  # noqa: F401  (registers the 3-D projection)
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    paths = camera_paths(cameras, labels, normalize, K, image_hw)
    depth, mid, half = _layout(paths, frustum_size)
    if ax is None:
        # a bare Figure, not pyplot: no GUI backend or global state, safe in workers and scripts,
        # and Jupyter still displays the returned figure
        fig = Figure(figsize=(5.2, 5.0), dpi=dpi)
        ax = fig.add_subplot(projection="3d")
    else:
        fig = ax.figure
    single = len(paths) == 1
    for i, p in enumerate(paths):
        T = len(p.c2w)
        shown = _every(T, every, len(paths))
        if single:
            colours = colormaps["viridis"](np.linspace(0.0, 0.9, len(shown)))
            line_colour = "0.4"
        else:
            base = colormaps["tab10"](i % 10)
            colours = [base] * len(shown)
            line_colour = base
        seg = _display(frustum_segments(p.c2w[shown], p.intrinsics[shown], depth))  # (n, 11, 2, 3)
        centres = _display(p.c2w[:, :3, 3])
        ax.plot(*centres.T, color=line_colour, lw=1.2, alpha=0.8, label=p.label if not single else None)
        # one collection per path: thousands of separate plot() calls are slow to draw
        n = len(seg)
        ax.add_collection3d(Line3DCollection(
            seg.reshape(-1, 2, 3), colors=np.repeat(np.asarray(colours), seg.shape[1], 0),
            linewidths=np.repeat(np.where(np.arange(n) == 0, 1.6, 0.8), seg.shape[1])))
        ax.scatter(*centres[0], color=colours[0], s=18, marker="o")
    lo, hi = _display(mid[None] - half)[0], _display(mid[None] + half)[0]
    for setter, a, b in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), lo, hi):
        setter(min(a, b), max(a, b))
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x")
    ax.set_ylabel("z")
    ax.set_zlabel("-y (up)")
    ax.view_init(elev=elev, azim=azim)
    ax.tick_params(labelsize=7)
    if single:
        T = len(paths[0].c2w)
        ax.set_title(title or f"{paths[0].label}: {T} cameras (first purple, last yellow)", fontsize=9)
    else:
        ax.legend(loc="upper left", fontsize=8)
        if title:
            ax.set_title(title, fontsize=9)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def plot_cameras_html(cameras, path: str | Path, *, labels: Sequence[str] | None = None, title: str | None = None,
                      normalize: bool = False, K=None, image_hw: tuple[int, int] | None = None,
                      frustum_size: float | None = None, every: int | None = None) -> Path:
    """The same frustums as an interactive HTML page (plotly, an optional extra: ``pip install -e '.[viz]'``)."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ImportError("the interactive HTML viewer needs plotly: pip install plotly "
                          "(or pip install -e '.[viz]'); the PNG viewer (plot_cameras) needs only matplotlib") from None
    paths = camera_paths(cameras, labels, normalize, K, image_hw)
    depth, _, _ = _layout(paths, frustum_size)
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, p in enumerate(paths):
        colour = palette[i % len(palette)]
        shown = _every(len(p.c2w), every, len(paths))
        seg = _display(frustum_segments(p.c2w[shown], p.intrinsics[shown], depth))
        xyz = [[], [], []]
        for frame in seg:
            for a, b in frame:
                for k in range(3):
                    xyz[k] += [a[k], b[k], None]  # None breaks the line between segments
        fig.add_trace(go.Scatter3d(x=xyz[0], y=xyz[1], z=xyz[2], mode="lines", line={"color": colour, "width": 3},
                                   name=f"{p.label} frustums", legendgroup=p.label))
        c = _display(p.c2w[:, :3, 3])
        fig.add_trace(go.Scatter3d(x=c[:, 0], y=c[:, 1], z=c[:, 2], mode="lines+markers", name=p.label,
                                   legendgroup=p.label, line={"color": colour, "width": 2}, marker={"size": 2},
                                   text=[f"{p.label} frame {t}" for t in range(len(c))]))
    fig.update_layout(title=title, scene={"aspectmode": "data", "xaxis_title": "x", "yaxis_title": "z",
                                          "zaxis_title": "-y (up)"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True)  # self-contained: opens offline
    return path
