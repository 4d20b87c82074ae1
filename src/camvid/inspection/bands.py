"""Where a query pixel's epipolar band lies, and how much of the captured attention falls inside it.

The bands are the model's own masks (``camvid.attention.AttentionContext``, same thresholds, pseudo
lines and seeds), evaluated for the chosen queries only, so "inside the band" means exactly the keys
an epipolar layer at that level would let the query see. For ``full3d`` and Plücker-only models the
band is a measurement, not a constraint: does their attention find the epipolar line on its own?
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camvid.attention import AttentionContext, LayerAttention, Query
from camvid.attention.capture import keys_to_grid, query_position

__all__ = ["BAND_OPTIONS", "band_options", "QueryBand", "band_rows", "query_bands", "layer_band", "BandMass", "band_mass", "band_mass_rows"]

# the mask kind that defines "the band" of each attention variant
BAND_KIND = {"epipolar": "all", "full3d": "all", "epipolar_ref": "ref", "cross_video": "cross"}
# attention options (conf/attn/*.yaml) that shape a run's bands
BAND_OPTIONS = ("threshold", "tau", "grid", "seed")


def band_options(cfg) -> dict:
    """The options of a run's config (``cfg.attn``) that shape its bands: threshold, tau, grid, seed."""
    attn = cfg.get("attn") or {}
    return {k: attn[k] for k in BAND_OPTIONS if k in attn and attn[k] is not None}


def _context(K, c2w, image_hw, cond_index, num_views, options: dict) -> AttentionContext:
    B = K.shape[0]
    unknown = sorted(set(options) - set(BAND_OPTIONS))
    if unknown:
        raise ValueError(f"unknown band option(s) {unknown}; valid: {', '.join(BAND_OPTIONS)}")
    cond_index = torch.zeros(B, dtype=torch.long) if cond_index is None else torch.as_tensor(cond_index).long()
    # always the hard band: a soft (bias) band has no inside, and its width is the hard band's default
    return AttentionContext(K=K.double(), c2w=c2w.double(), image_hw=tuple(image_hw), cond_index=cond_index,
                            num_views=num_views, path="sparse", **options)


def band_rows(K: torch.Tensor, c2w: torch.Tensor, image_hw: tuple[int, int], feat_hw: tuple[int, int],
              variant: str, queries: list[Query], *, cond_index=None, num_views: int = 1,
              **options) -> torch.Tensor:
    """(query, frame, h, w) bool: the band of each query on the key axis of a ``variant`` layer.

    ``K`` (B, T, 3, 3) pixel intrinsics at ``image_hw`` and ``c2w`` (B, T, 4, 4) of the clips the
    queries' ``sample`` indexes (for ``cross_video``: groups of ``num_views`` videos). ``options``:
    :data:`BAND_OPTIONS` as the run was trained with (:func:`band_options`).
    """
    if variant not in BAND_KIND:
        raise ValueError(f"no epipolar band for attention variant {variant!r}; valid: {', '.join(BAND_KIND)}")
    kind = BAND_KIND[variant]
    ctx = _context(K, c2w, image_hw, cond_index, num_views, options)
    B, T = K.shape[:2]
    hw = feat_hw[0] * feat_hw[1]
    rows = []
    for qu in queries:
        if not 0 <= qu.sample < B:
            raise ValueError(f"query sample {qu.sample} is outside the {B} clips given")
        # runs and neighbour lists: the band of one query without the clip's dense mask
        row, token, _ = query_position(qu, variant, T, feat_hw, image_hw)
        if kind in ("all", "ref"):
            rows.append(ctx.runs(kind, feat_hw).rows(token, token + 1)[row, 0])
        else:
            index, valid = ctx.neighbors(kind, feat_hw)
            num_keys = (num_views - 1) * hw
            out = torch.zeros(num_keys + 1, dtype=torch.bool)
            out[torch.where(valid[row, token], index[row, token], num_keys)] = True
            rows.append(out[:num_keys])
    ref = None
    if variant == "epipolar_ref":
        ref = [int(ctx.reference_index(B, "cpu")[qu.sample]) for qu in queries]
    return keys_to_grid(torch.stack(rows)[:, None], variant, T, feat_hw, ref)[:, 0]


@dataclass
class QueryBand:
    """One query at one feature level: its cell, the cell centre's epipolar line in every key frame
    (``(a, b, c)`` with ``a x + b y + c = 0`` in pixels, a^2 + b^2 = 1) and the band (frame, h, w)."""

    feat_hw: tuple[int, int]
    cell: tuple[int, int]
    center: tuple[float, float]
    lines: torch.Tensor  # (frame, 3) float64
    band: torch.Tensor  # (frame, h, w) bool


def query_bands(K: torch.Tensor, c2w: torch.Tensor, image_hw: tuple[int, int], levels: list[tuple[int, int]],
                query: Query, *, variant: str = "epipolar", cond_index=None, num_views: int = 1,
                **options) -> dict[tuple[int, int], QueryBand]:
    """The epipolar line and band of ``query`` in every key frame (every partner video for
    ``cross_video``), at every feature level in ``levels``."""
    from camvid.geometry.epipolar import epipolar_lines, feature_cell_centers, pseudo_line_angles

    B, T = K.shape[:2]
    K, c2w = K.double(), c2w.double()
    seed, grid = int(options.get("seed", 0)), str(options.get("grid", "camvid"))
    out = {}
    for feat_hw in levels:
        feat_hw = tuple(int(v) for v in feat_hw)
        r, c = query.cell(image_hw, feat_hw)
        center = feature_cell_centers(image_hw, feat_hw, grid=grid)[r * feat_hw[1] + c]
        b, i = query.sample, query.frame
        if variant == "cross_video":
            group = b - b % num_views
            partners = [group + (b - group + s) % num_views for s in range(1, num_views)]
            angles = pseudo_line_angles((B, T), seed)[b, i].expand(len(partners))  # as the CVD band
            lines = epipolar_lines(K[b, i], c2w[b, i], K[partners, i], c2w[partners, i], center[None], angles)
        else:
            angles = pseudo_line_angles((B, T, T), seed, symmetric_last_two=True)[b, i]  # as the clip's mask
            lines = epipolar_lines(K[b, i], c2w[b, i], K[b], c2w[b], center[None], angles)
        band = band_rows(K, c2w, image_hw, feat_hw, variant, [query], cond_index=cond_index, num_views=num_views,
                         **options)[0]
        out[feat_hw] = QueryBand(feat_hw, (r, c), (float(center[0]), float(center[1])), lines[:, 0], band)
    return out


def layer_band(layer: LayerAttention, queries: list[Query], K: torch.Tensor, c2w: torch.Tensor, *,
               variant: str | None = None, **kw) -> torch.Tensor:
    """:func:`band_rows` on the key grid of a captured layer (its level, its queries); ``variant``
    picks which band (default the layer's own; ``full3d`` layers are measured against "epipolar")."""
    return band_rows(K, c2w, layer.image_hw, layer.feat_hw, variant or layer.variant, queries, **kw)


@dataclass
class BandMass:
    """Attention mass of each (timestep, head, query): inside / outside the band and on registers
    (the three sum to 1), and ``chance`` (query,): the band's share of all the layer's key cells,
    what attention spread evenly over every key would put inside. A masked layer's mass is inside
    by construction; for ``full3d`` (and masks opened by an ablation) inside vs chance is the test."""

    inside: torch.Tensor
    outside: torch.Tensor
    registers: torch.Tensor
    chance: torch.Tensor


def band_mass(layer: LayerAttention, band: torch.Tensor) -> BandMass:
    """Split a captured layer's attention by ``band`` (query, frame, h, w) bool."""
    if band.shape != layer.probs.shape[2:]:
        raise ValueError(f"band {tuple(band.shape)} does not match the layer's (query, frame, h, w) "
                         f"{tuple(layer.probs.shape[2:])}")
    dims = (-3, -2, -1)
    inside = (layer.probs * band).sum(dims)
    # epipolar_ref attends to the reference frame's cells only; the others, to every cell of the key axis
    num_keys = layer.feat_hw[0] * layer.feat_hw[1] * (1 if layer.variant == "epipolar_ref" else band.shape[1])
    chance = band.flatten(1).sum(1) / num_keys
    return BandMass(inside, layer.probs.sum(dims) - inside, layer.register_share, chance)


def band_mass_rows(name: str, maps, queries: list[Query], K, c2w, **kw) -> list[dict]:
    """One row per captured layer of ``maps``: mean inside / outside / register mass over timesteps,
    heads and queries, and the chance level; ``name`` labels the model."""
    rows = []
    for layer in maps:
        mass = band_mass(layer, layer_band(layer, queries, K, c2w, **kw))
        rows.append({"model": name, "layer": layer.name, "variant": layer.variant, "level": layer.feat_hw,
                     "inside": float(mass.inside.mean()), "outside": float(mass.outside.mean()),
                     "registers": float(mass.registers.mean()), "chance": float(mass.chance.mean())})
    return rows
