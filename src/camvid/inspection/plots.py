"""Matplotlib figures of the inspection notebooks: bands, attention overlays, register share, band mass,
videos side by side. Every function returns the figure (the notebook shows it, ``make notebooks`` keeps it
in the HTML report)."""

from __future__ import annotations

import numpy as np
import torch

from camvid.attention import AttentionMaps, LayerAttention, Query

__all__ = ["plot_query_bands", "plot_attention_heads", "plot_attention_layers", "plot_register_share",
           "plot_band_mass", "plot_videos", "draw_line", "plot_camera_paths", "plot_per_frame"]

BAND_RGBA = (0.1, 0.9, 0.3, 0.35)


def _figure(rows: int, cols: int, size: float = 1.6):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * size + 0.6, rows * size + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def draw_line(ax, line, image_hw: tuple[int, int], **style) -> None:
    """Draw ``a x + b y + c = 0`` (pixels) across an ``image_hw`` image."""
    a, b, c = (float(v) for v in line)
    H, W = image_hw
    if abs(b) >= abs(a):
        xs = np.array([0.0, W])
        ys = -(a * xs + c) / b
    else:
        ys = np.array([0.0, H])
        xs = -(b * ys + c) / a
    ax.plot(xs, ys, **{"color": "yellow", "lw": 0.8, **style})
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)


def _band_overlay(band: torch.Tensor) -> np.ndarray:
    rgba = np.zeros((*band.shape, 4), dtype=np.float32)
    rgba[band.numpy()] = BAND_RGBA
    return rgba


def _mark(ax, query: Query) -> None:
    ax.plot([query.x], [query.y], marker="+", color="red", ms=9, mew=2)


def plot_query_bands(frames: np.ndarray, bands: dict, query: Query, key_frames: list[int] | None = None,
                     title: str = ""):
    """Rows: feature levels; columns: key frames. The band's cells (green) and the cell centre's
    epipolar line (yellow) over each frame; the query (red +) in its own frame.

    ``frames`` (F, H, W, 3) uint8 are the key frames (for cross-video: the partner videos' frames at the
    query's time, and ``key_frames`` labels them)."""
    levels = list(bands)
    F, H, W = frames.shape[:3]
    fig, axes = _figure(len(levels), F)
    for r, level in enumerate(levels):
        qb = bands[level]
        for j in range(F):
            ax = axes[r, j]
            ax.imshow(frames[j], extent=(0, W, H, 0))
            ax.imshow(_band_overlay(qb.band[j]), extent=(0, W, H, 0), interpolation="nearest")
            draw_line(ax, qb.lines[j], (H, W))
            if key_frames is None and j == query.frame:
                _mark(ax, query)
            if r == 0:
                ax.set_title(f"frame {j}" if key_frames is None else f"{key_frames[j]}", fontsize=8)
        axes[r, 0].set_ylabel(f"{level[0]}x{level[1]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _heat(ax, frame: np.ndarray, heat: np.ndarray, vmax: float):
    H, W = frame.shape[:2]
    ax.imshow(frame, extent=(0, W, H, 0))
    return ax.imshow(heat, cmap="magma", alpha=0.65, vmin=0.0, vmax=max(vmax, 1e-12), extent=(0, W, H, 0),
                     interpolation="nearest")


def plot_attention_heads(frames: np.ndarray, layer: LayerAttention, query_index: int, queries: list[Query],
                         timestep_index: int = -1, lines: torch.Tensor | None = None, key_labels=None):
    """One layer: rows = heads and their mean, columns = key frames; the query's attention (per key
    cell) over each frame, one colour scale per row; register share in the row label."""
    probs = layer.probs[timestep_index, :, query_index]  # (head, F, h, w)
    stacked = torch.cat([probs, probs.mean(0, keepdim=True)])
    shares = layer.registers[timestep_index, :, query_index].sum(-1)
    labels = [f"head {h}\nreg {float(s):.2f}" for h, s in zip(layer.heads, shares)] + \
             [f"mean\nreg {float(shares.mean()):.2f}"]
    F, H, W = frames.shape[:3]
    h, w = layer.feat_hw
    fig, axes = _figure(len(stacked), F)
    query = queries[query_index]
    for r, row in enumerate(stacked):
        vmax = float(row.max())
        for j in range(F):
            ax = axes[r, j]
            im = _heat(ax, frames[j], row[j].numpy(), vmax)
            if lines is not None:
                draw_line(ax, lines[j], (H, W), lw=0.6)
            if key_labels is None and j == query.frame:
                _mark(ax, query)
            if r == 0:
                ax.set_title(f"frame {j}" if key_labels is None else str(key_labels[j]), fontsize=8)
        axes[r, 0].set_ylabel(labels[r], fontsize=7)
        fig.colorbar(im, ax=axes[r, -1], fraction=0.05)
    t = layer.timesteps[timestep_index]
    fig.suptitle(f"{layer.name} ({layer.variant}, {h}x{w}), t={t}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_attention_layers(frames: np.ndarray, maps: AttentionMaps, query_index: int = 0,
                          timestep_index: int = -1, key_labels=None):
    """Rows = captured layers (mean over heads), columns = key frames."""
    F = frames.shape[0]
    fig, axes = _figure(len(maps), F)
    query = maps.queries[query_index]
    for r, layer in enumerate(maps):
        row = layer.at_image()[timestep_index, :, query_index].mean(0)  # (F, H, W)
        vmax = float(row.max())
        for j in range(F):
            _heat(axes[r, j], frames[j], row[j].numpy(), vmax)
            if key_labels is None and j == query.frame:
                _mark(axes[r, j], query)
            if r == 0:
                axes[r, j].set_title(f"frame {j}" if key_labels is None else str(key_labels[j]), fontsize=8)
        short = layer.name.replace(".transformer_blocks.0", "").replace(".epipolar_attn", "")
        axes[r, 0].set_ylabel(f"{short}\n{layer.feat_hw[0]}x{layer.feat_hw[1]}", fontsize=6)
    fig.suptitle(f"attention of query {query_index} per layer (mean over heads), t={maps.timesteps[timestep_index]}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_register_share(maps: AttentionMaps):
    """Register share (mean over heads and queries) per layer and timestep: a heat map and its curves."""
    import matplotlib.pyplot as plt

    share = maps.register_share().mean((2, 3)).numpy()  # (layer, timestep)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.35 * len(maps) + 2.2))
    im = left.imshow(share, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-6, float(share.max())))
    left.set_yticks(range(len(maps)), [f"{n.feat_hw[0]}x{n.feat_hw[1]} {i}" for i, n in enumerate(maps)],
                    fontsize=6)
    left.set_xticks(range(len(maps.timesteps)), [str(t) for t in maps.timesteps], fontsize=6, rotation=90)
    left.set_xlabel("timestep t (denoiser call)")
    left.set_title("share of attention on register tokens", fontsize=9)
    fig.colorbar(im, ax=left)
    for i, layer in enumerate(maps):
        right.plot(maps.timesteps, share[i], marker=".", lw=0.8, label=f"{i}: {layer.feat_hw[0]}x{layer.feat_hw[1]}")
    right.set_xlabel("timestep t")
    right.set_ylabel("register share")
    if len(maps.timesteps) > 1 and maps.timesteps[0] > maps.timesteps[-1]:
        right.invert_xaxis()  # sampling order: noise (large t) on the left
    right.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_band_mass(rows: list[dict]):
    """Stacked bars per (model, layer): inside / outside the band / registers, with the chance level."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(rows) + 2), 3.6))
    x = np.arange(len(rows))
    inside = np.array([r["inside"] for r in rows])
    outside = np.array([r["outside"] for r in rows])
    regs = np.array([r["registers"] for r in rows])
    ax.bar(x, inside, color="tab:green", label="inside band")
    ax.bar(x, outside, bottom=inside, color="tab:gray", label="outside band")
    ax.bar(x, regs, bottom=inside + outside, color="tab:purple", label="registers")
    ax.scatter(x, [r["chance"] for r in rows], marker="_", s=120, color="black", zorder=3,
               label="band share of keys (chance)")
    ax.set_xticks(x, [f"{r['model']}\n{r['level'][0]}x{r['level'][1]}" for r in rows], fontsize=6, rotation=90)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("attention mass")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_videos(videos: dict[str, np.ndarray], max_frames: int = 16):
    """Videos side by side: one row per named (T, H, W, 3) uint8 video, one column per frame."""
    names = list(videos)
    T = min(max_frames, min(len(v) for v in videos.values()))
    fig, axes = _figure(len(names), T, size=1.2)
    for r, name in enumerate(names):
        for j in range(T):
            axes[r, j].imshow(videos[name][j])
            if r == 0:
                axes[r, j].set_title(str(j), fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    return fig


def _frustum_lines(c2w: np.ndarray, K: np.ndarray, image_hw: tuple[int, int], depth: float) -> list[np.ndarray]:
    """Line strips of one camera: centre to the four image corners at ``depth``, the image rectangle,
    and a tick on the top edge (so roll is visible)."""
    H, W = image_hw
    corners = np.array([[0, 0], [W, 0], [W, H], [0, H]], dtype=np.float64)
    rays = np.linalg.solve(K, np.concatenate([corners, np.ones((4, 1))], 1).T).T * depth
    pts = rays @ c2w[:3, :3].T + c2w[:3, 3]
    centre = c2w[:3, 3]
    top = (pts[0] + pts[1]) / 2 - 0.25 * (pts[3] - pts[0])
    strips = [np.stack([centre, p]) for p in pts]
    strips.append(np.concatenate([pts, pts[:1]]))
    strips.append(np.stack([pts[0], top, pts[1]]))
    return strips


def plot_camera_paths(paths: dict[str, np.ndarray], K: np.ndarray, image_hw: tuple[int, int],
                      depth: float = 0.15):
    """Frustums of several (T, 4, 4) camera-to-world paths in one 3-D plot, each in the evaluation's
    canonical form (relative to its frame 0, furthest camera at distance 1), so an SfM reconstruction
    of any scale overlays the requested path. OpenCV axes; ``-y`` is drawn upwards."""
    import matplotlib.pyplot as plt

    from camvid.evaluation.pose_metrics import canonicalize

    fig = plt.figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot(projection="3d")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    K = np.asarray(K, dtype=np.float64)
    everything = []
    for i, (label, c2w) in enumerate(paths.items()):
        rel = canonicalize(np.asarray(c2w, dtype=np.float64))
        color = colors[i % len(colors)]
        for t, pose in enumerate(rel):
            for strip in _frustum_lines(pose, K, image_hw, depth):
                xyz = strip * np.array([1, -1, 1])  # y down (OpenCV) -> drawn up
                ax.plot(xyz[:, 0], xyz[:, 2], xyz[:, 1], color=color, lw=0.7, alpha=0.4 + 0.6 * t / max(1, len(rel) - 1))
                everything.append(xyz)
        centres = rel[:, :3, 3] * np.array([1, -1, 1])
        ax.plot(centres[:, 0], centres[:, 2], centres[:, 1], color=color, lw=1.8, label=label)
    pts = np.concatenate(everything)
    mid, span = (pts.max(0) + pts.min(0)) / 2, (pts.max(0) - pts.min(0)).max() / 2 + 1e-3
    ax.set_xlim(mid[0] - span, mid[0] + span)
    ax.set_ylim(mid[2] - span, mid[2] + span)
    ax.set_zlim(mid[1] - span, mid[1] + span)
    ax.set_xlabel("x")
    ax.set_ylabel("z (forward)")
    ax.set_zlabel("-y (up)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_per_frame(series: dict[str, dict[str, np.ndarray]], ylabels: dict[str, str] | None = None):
    """One panel per metric, one curve per labelled series: ``{label: {metric: (T,) values}}``."""
    import matplotlib.pyplot as plt

    metrics = list(next(iter(series.values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, values in series.items():
            if metric in values:
                ax.plot(np.arange(len(values[metric])), values[metric], marker=".", label=label)
        ax.set_xlabel("frame")
        ax.set_ylabel((ylabels or {}).get(metric, metric))
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
