"""Matplotlib figures of the inspection notebooks: bands, attention overlays, register share, band mass,
videos side by side. Every function returns the figure (the notebook shows it, ``make notebooks`` keeps it
in the HTML report)."""

from __future__ import annotations

import numpy as np
import torch

from camvid.attention import AttentionMaps, LayerAttention, Query

__all__ = ["short_name", "plot_query_bands", "plot_attention_heads", "plot_attention_layers", "plot_register_share",
           "plot_band_mass", "plot_videos", "draw_line", "plot_per_frame"]

BAND_RGBA = (0.1, 0.9, 0.3, 0.35)
# module-path pieces every layer of a family shares: dropped from labels
_NOISE = ("model.diffusion_model.", "unet.", ".transformer_blocks.0.epipolar.epipolar_attn", ".epi_transformer",
          ".transformer_blocks.0")


def short_name(name: str) -> str:
    """A layer's module path without the parts every layer of its family shares, for labels."""
    for piece in _NOISE:
        name = name.replace(piece, "")
    return name.replace(".attention_blocks.", " attn ")


GAP = 0.06  # gap between the frames of a strip, as a fraction of the frame width


def _rows_figure(rows: int, width_frames: int, frame_hw: tuple[int, int], size: float = 1.6):
    """One axes per row; each row shows ``width_frames`` frames side by side as one strip image (one
    image per row instead of one axes per frame keeps large grids quick to draw)."""
    import matplotlib.pyplot as plt

    H, W = frame_hw
    aspect = H / (W * (width_frames + GAP * (width_frames - 1)))
    fig_w = min(18.0, size * width_frames + 1.6)
    row_h = 0.85 * fig_w * aspect  # the strip spans about 85% of the width (labels and colour bar beside it)
    fig, axes = plt.subplots(rows, 1, figsize=(fig_w, rows * row_h * 1.15 + 0.7), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig, axes[:, 0]


def _offset(j: int, W: int) -> float:
    return j * W * (1 + GAP)


def _strip(images: np.ndarray, fill=np.nan) -> np.ndarray:
    """(F, H, W[, C]) -> (H, F*W + gaps[, C]) with ``fill`` in the gaps."""
    F, H, W = images.shape[:3]
    gap = int(round(W * GAP))
    out = np.full((H, F * W + (F - 1) * gap, *images.shape[3:]), fill, dtype=np.float32)
    for j in range(F):
        x0 = j * (W + gap)
        out[:, x0:x0 + W] = images[j]
    return out


def _clip_line(line, image_hw: tuple[int, int]):
    """End points of ``a x + b y + c = 0`` inside the ``image_hw`` box, or None when it misses the image."""
    a, b, c = (float(v) for v in line)
    H, W = image_hw
    pts = []
    if abs(b) > 1e-12:
        pts += [(x, -(a * x + c) / b) for x in (0.0, float(W))]
    if abs(a) > 1e-12:
        pts += [(-(b * y + c) / a, y) for y in (0.0, float(H))]
    inside = sorted({(round(x, 9), round(y, 9)) for x, y in pts if -1e-6 <= x <= W + 1e-6 and -1e-6 <= y <= H + 1e-6})
    return None if len(inside) < 2 else (inside[0], inside[-1])


def draw_line(ax, line, image_hw: tuple[int, int], x_offset: float = 0.0, **style) -> None:
    """Draw ``a x + b y + c = 0`` (pixels) across one ``image_hw`` frame placed at ``x_offset``."""
    ends = _clip_line(line, image_hw)
    if ends is not None:
        (x0, y0), (x1, y1) = ends
        ax.plot([x0 + x_offset, x1 + x_offset], [y0, y1], **{"color": "yellow", "lw": 0.8, **style})


def _titles(ax, labels, W: int) -> None:
    for j, label in enumerate(labels):
        ax.text(_offset(j, W) + W / 2, -1.5, str(label), ha="center", va="bottom", fontsize=7)


def _finish(ax, F: int, H: int, W: int) -> None:
    ax.set_xlim(0, _offset(F - 1, W) + W)
    ax.set_ylim(H, 0)


def _band_overlay(bands: torch.Tensor) -> np.ndarray:
    rgba = np.zeros((*bands.shape, 4), dtype=np.float32)
    rgba[bands.numpy()] = BAND_RGBA
    return rgba


def _upsample(cells: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(..., h, w) key-cell values -> (..., H, W): each pixel shows the cell that covers it."""
    H, W = image_hw
    h, w = cells.shape[-2:]
    return cells.repeat(H // h, axis=-2).repeat(W // w, axis=-1)


def _mark(ax, query: Query, x_offset: float = 0.0) -> None:
    ax.plot([query.x + x_offset], [query.y], marker="+", color="red", ms=9, mew=2)


def plot_query_bands(frames: np.ndarray, bands: dict, query: Query, key_frames: list[int] | None = None,
                     title: str = ""):
    """Rows: feature levels; columns: key frames. The band's cells (green) and the cell centre's
    epipolar line (yellow) over each frame; the query (red +) in its own frame.

    ``frames`` (F, H, W, 3) uint8 are the key frames (for cross-video: the partner videos' frames at the
    query's time, and ``key_frames`` labels them)."""
    levels = list(bands)
    F, H, W = frames.shape[:3]
    fig, axes = _rows_figure(len(levels), F, (H, W))
    strip = _strip(frames.astype(np.float32) / 255.0, fill=1.0)
    for ax, level in zip(axes, levels):
        qb = bands[level]
        ax.imshow(strip, interpolation="nearest")
        overlay = _band_overlay(torch.from_numpy(_upsample(qb.band.numpy(), (H, W))))
        ax.imshow(_strip(overlay, fill=0.0), interpolation="nearest")
        for j in range(F):
            draw_line(ax, qb.lines[j], (H, W), _offset(j, W))
        if key_frames is None:
            _mark(ax, query, _offset(query.frame, W))
        _finish(ax, F, H, W)
        ax.set_ylabel(f"{level[0]}x{level[1]}", fontsize=8)
    _titles(axes[0], [f"frame {j}" for j in range(F)] if key_frames is None else key_frames, W)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _heat_row(ax, frames: np.ndarray, heat: np.ndarray, fig):
    """One strip: the frames with ``heat`` (F, H, W) over them, one colour scale for the row."""
    F, H, W = frames.shape[:3]
    ax.imshow(_strip(frames.astype(np.float32) / 255.0, fill=1.0), interpolation="nearest")
    vmax = max(float(np.nanmax(heat)), 1e-12)
    im = ax.imshow(np.ma.masked_invalid(_strip(heat)), cmap="magma", alpha=0.65, vmin=0.0, vmax=vmax,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    _finish(ax, F, H, W)


def plot_attention_heads(frames: np.ndarray, layer: LayerAttention, query_index: int, queries: list[Query],
                         timestep_index: int = -1, lines: torch.Tensor | None = None, key_labels=None):
    """One layer: rows = heads and their mean, columns = key frames; the query's attention (per key
    cell) over each frame, one colour scale per row; register share in the row label."""
    probs = layer.probs[timestep_index, :, query_index]  # (head, F, h, w)
    stacked = torch.cat([probs, probs.mean(0, keepdim=True)]).numpy()
    shares = layer.registers[timestep_index, :, query_index].sum(-1)
    labels = [f"head {h}\nreg {float(s):.2f}" for h, s in zip(layer.heads, shares)] + \
             [f"mean\nreg {float(shares.mean()):.2f}"]
    F, H, W = frames.shape[:3]
    h, w = layer.feat_hw
    fig, axes = _rows_figure(len(stacked), F, (H, W))
    query = queries[query_index]
    for ax, row, label in zip(axes, stacked, labels):
        _heat_row(ax, frames, _upsample(row, (H, W)), fig)
        for j in range(F if lines is not None else 0):
            draw_line(ax, lines[j], (H, W), _offset(j, W), lw=0.6)
        if key_labels is None:
            _mark(ax, query, _offset(query.frame, W))
        ax.set_ylabel(label, fontsize=7)
    _titles(axes[0], [f"frame {j}" for j in range(F)] if key_labels is None else key_labels, W)
    fig.suptitle(f"{short_name(layer.name)} ({layer.variant}, {h}x{w}), t={layer.timesteps[timestep_index]}",
                 fontsize=9)
    return fig


def plot_attention_layers(frames: np.ndarray, maps: AttentionMaps, query_index: int = 0,
                          timestep_index: int = -1, key_labels=None):
    """Rows = captured layers (mean over heads), columns = key frames."""
    F, H, W = frames.shape[:3]
    fig, axes = _rows_figure(len(maps), F, (H, W))
    query = maps.queries[query_index]
    for ax, layer in zip(axes, maps):
        row = layer.probs[timestep_index, :, query_index].mean(0).numpy()  # (F, h, w)
        _heat_row(ax, frames, _upsample(row, (H, W)), fig)
        if key_labels is None:
            _mark(ax, query, _offset(query.frame, W))
        ax.set_ylabel(f"{short_name(layer.name)}\n{layer.feat_hw[0]}x{layer.feat_hw[1]}", fontsize=6)
    _titles(axes[0], [f"frame {j}" for j in range(F)] if key_labels is None else key_labels, W)
    fig.suptitle(f"attention of query {query_index} per layer (mean over heads), t={maps.timesteps[timestep_index]}",
                 fontsize=9)
    return fig


def plot_register_share(maps: AttentionMaps):
    """Register share (mean over heads and queries) per layer and timestep: a heat map and its curves."""
    import matplotlib.pyplot as plt

    share = maps.register_share(heads="mean").mean((2, 3)).numpy()  # (layer, timestep)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.35 * len(maps) + 2.2))
    im = left.imshow(share, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-6, float(share.max())))
    left.set_yticks(range(len(maps)), [f"{short_name(n.name)} {n.feat_hw[0]}x{n.feat_hw[1]}" for n in maps],
                    fontsize=6)
    left.set_xticks(range(len(maps.timesteps)), [str(t) for t in maps.timesteps], fontsize=6, rotation=90)
    left.set_xlabel("timestep t (denoiser call)")
    left.set_title("share of attention on register tokens", fontsize=9)
    fig.colorbar(im, ax=left)
    for i, layer in enumerate(maps):
        right.plot(maps.timesteps, share[i], marker=".", lw=0.8, label=short_name(layer.name))
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
    ax.set_xticks(x, [f"{r['model']} {short_name(r['layer'])} {r['level'][0]}x{r['level'][1]}" for r in rows],
                  fontsize=6, rotation=90)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("attention mass")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_videos(videos: dict[str, np.ndarray], max_frames: int = 16):
    """Videos side by side: one row per named (T, H, W, 3) uint8 video, one column per frame."""
    names = list(videos)
    T = min(max_frames, min(len(v) for v in videos.values()))
    H, W = next(iter(videos.values())).shape[1:3]
    fig, axes = _rows_figure(len(names), T, (H, W), size=1.2)
    for ax, name in zip(axes, names):
        ax.imshow(_strip(videos[name][:T].astype(np.float32) / 255.0, fill=1.0), interpolation="nearest")
        _finish(ax, T, H, W)
        ax.set_ylabel(name, fontsize=7)
    _titles(axes[0], range(T), W)
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
