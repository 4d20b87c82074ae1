"""Does a captured cross-frame attention find the true match in the conditioning frame?

The epipolar band only says where a match *may* be; whether the attention has learned to pick it
out along the band is what makes a model warp the conditioning frame instead of smearing it. On data
with exact depth (the synthetic rooms) every conditioning pixel has a known position in every other
frame, so a query placed there has one right answer among the conditioning frame's keys.

:func:`conditioning_matches` lifts a grid of conditioning pixels with their z-depth and projects them
into the other frames; those projections are the queries of :func:`camvid.attention.capture`, the
grid pixels their true matches. :func:`match_mass` then splits each captured layer's attention on
the conditioning frame into: near the true match (within ``radius`` cells), near the query's own
position (what a model that ignores the camera would attend to), and the share the match would get
if the attention were spread evenly over the keys the mask lets it see in that frame ("chance").
A model that matches puts clearly more than chance near the match; one that averages along the band
sits at chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from camvid.attention import LayerAttention, Query
from camvid.evaluation.camera_following import lift_pixels, project_points

__all__ = ["conditioning_matches", "MatchMass", "match_mass", "match_mass_rows"]


def conditioning_matches(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, frames, cond_index: int = 0,
                         step: int = 12) -> tuple[list[Query], np.ndarray]:
    """Queries at the true positions of a grid of conditioning pixels in each of ``frames``.

    ``depth``: (H, W) z-depth of the conditioning frame; ``K`` / ``c2w``: (T, 3, 3) / (T, 4, 4).
    The grid has one pixel every ``step`` pixels (centred in the image); a pixel that lands behind the
    camera or outside the image is left out. Returns the queries ``(frame, x, y)`` and, row for row,
    their matches ``(x, y)`` in the conditioning frame (pixel-centre coordinates).
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2 or not np.isfinite(depth).all() or (depth <= 0).any():
        raise ValueError(f"conditioning_matches: depth must be (H, W), finite and positive, got shape {depth.shape}")
    if step < 1:
        raise ValueError(f"conditioning_matches: step must be >= 1, got {step}")
    H, W = depth.shape
    K, c2w = np.asarray(K, dtype=np.float64), np.asarray(c2w, dtype=np.float64)
    ys = np.arange((H % step) // 2 + step // 2, H, step) + 0.5
    xs = np.arange((W % step) // 2 + step // 2, W, step) + 0.5
    us, vs = (a.ravel() for a in np.meshgrid(xs, ys))
    points = lift_pixels(depth[vs.astype(int), us.astype(int)], K[cond_index], c2w[cond_index], us, vs)
    queries, sources = [], []
    for t in frames:
        if t == cond_index:
            continue
        u, v, z = project_points(points, K[t], c2w[t])
        keep = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        queries += [Query(int(t), float(a), float(b)) for a, b in zip(u[keep], v[keep])]
        sources += list(zip(us[keep], vs[keep]))
    return queries, np.asarray(sources, dtype=np.float64).reshape(-1, 2)


@dataclass
class MatchMass:
    """Attention on the conditioning frame, per (timestep, head, query): ``match`` within the radius of
    the true match, ``static`` within the radius of the query's own position, ``frame`` on the whole
    frame; ``chance`` (query,): the match's share of the frame's visible keys times ``frame`` (its
    mean over timesteps and heads), what evenly spread attention would put near the match."""

    match: torch.Tensor
    static: torch.Tensor
    frame: torch.Tensor
    chance: torch.Tensor


def _window(grid: torch.Tensor, rc: tuple[int, int], radius: int) -> torch.Tensor:
    r, c = rc
    return grid[..., max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1].sum((-1, -2))


def match_mass(layer: LayerAttention, sources: np.ndarray, key_frame: int = 0, radius: int = 1) -> MatchMass:
    """Split ``layer``'s attention on key frame ``key_frame`` (the conditioning frame) by the true
    matches ``sources`` ((query, 2) pixels, from :func:`conditioning_matches`)."""
    sources = np.asarray(sources, dtype=np.float64).reshape(-1, 2)
    if len(sources) != layer.probs.shape[2]:
        raise ValueError(f"match_mass: {len(sources)} matches for the layer's {layer.probs.shape[2]} queries")
    if layer.key_axis != "frame" or not 0 <= key_frame < layer.probs.shape[3]:
        raise ValueError(f"match_mass: key frame {key_frame} is not one of the layer's {layer.probs.shape[3]} "
                         f"key {layer.key_axis}s (it needs a single-video layer: epipolar, epipolar_ref, full3d)")
    (H, W), (h, w) = layer.image_hw, layer.feat_hw
    probs = layer.probs[:, :, :, key_frame]  # (ts, head, q, h, w)
    visible = layer.mask[:, key_frame].float()  # (q, h, w)
    match, static, chance = [], [], []
    for qi, (x, y) in enumerate(sources):
        m_rc = (min(int(y * h / H), h - 1), min(int(x * w / W), w - 1))
        s_rc = tuple(int(v) for v in layer.cells[qi])
        match.append(_window(probs[:, :, qi], m_rc, radius))
        static.append(_window(probs[:, :, qi], s_rc, radius))
        chance.append(_window(visible[qi], m_rc, radius) / visible[qi].sum().clamp(min=1))
    frame = probs.sum((-1, -2))
    chance_t = torch.stack(chance) * frame.mean((0, 1))
    return MatchMass(torch.stack(match, -1), torch.stack(static, -1), frame, chance_t)


def match_mass_rows(name: str, maps, sources: np.ndarray, key_frame: int = 0, radius: int = 1) -> list[dict]:
    """One row per captured layer: mean mass near the match / near the query's own position / chance
    (over timesteps, heads and queries), and the match mass of each captured timestep (``timesteps``,
    in capture order); ``name`` labels the model."""
    rows = []
    for layer in maps:
        mass = match_mass(layer, sources, key_frame, radius)
        rows.append({"model": name, "layer": layer.name, "level": layer.feat_hw,
                     "frame": float(mass.frame.mean()), "match": float(mass.match.mean()),
                     "static": float(mass.static.mean()), "chance": float(mass.chance.mean()),
                     "timesteps": list(layer.timesteps),
                     "match_by_timestep": mass.match.mean((1, 2)).tolist()})
    return rows
