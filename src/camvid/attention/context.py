"""Per-forward camera state shared by every cross-frame attention layer.

A backbone builds one ``AttentionContext`` per forward pass (per camera set) and hands it to each
cross-frame module. Masks depend only on the cameras and the feature resolution, so the context
memoises them per ``(kind, feat_hw)``: a mask is built once and shared by every layer and head at
that resolution. The same holds for the register-padded dense mask and the sparse tile plan.

Mask kinds (token layouts, all boolean, True = attend):
- ``"all"``   (B, T*hw, T*hw): CamI2V epipolar mask over all frames.
- ``"ref"``   (B, T*hw, hw): epipolar mask onto each clip's reference frame (``cond_index``).
- ``"cross"`` (B*T, hw, (V-1)*hw): CVD band mask; frame t of a video onto frame t of each of the
  other ``num_views - 1`` videos of its group. Batch layout of a group: ``[a0, b0, a1, b1, ...]``
  i.e. video v of group g is batch row ``g * num_views + v``; partners are concatenated in the
  order ``v+1, v+2, ...`` (mod ``num_views``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from camvid.attention.kernels import mask_to_neighbors, pad_mask_for_registers
from camvid.attention.sparse import TilePlan, build_tile_plan, build_tile_plan_from_runs

__all__ = ["AttentionContext", "MASK_KINDS", "PATHS", "BANDS", "GRIDS"]

MASK_KINDS = ("all", "ref", "cross")
# Kinds with a row-run form (camvid.geometry.EpipolarRuns): "cross" only for the hard band.
RUN_KINDS = ("all", "ref", "cross")
PATHS = ("dense", "sparse", "flex", "auto")
BANDS = ("hard", "soft")
GRIDS = ("camvid", "cami2v_release")
# On the CPU, "auto" takes the block-sparse kernel on levels of at least AUTO_SPARSE_CELLS cells per
# frame whose mask has at least AUTO_SPARSE_PAIRS (query, key) pairs, one dense SDPA call elsewhere.
# Measured for every kind, forward and forward+backward (docs/performance.md, "Latest runs"): from
# 10x16 cells on (512x320's third level, 256x256's 16x16) the sparse path is faster; at 8x8 and 5x8
# it ties or loses to the dense call, whose single SDPA beats the bookkeeping of a few tiles.
AUTO_SPARSE_CELLS = 128
AUTO_SPARSE_PAIRS = 1 << 18


@dataclass
class AttentionContext:
    """Cameras of one forward pass plus the masks built from them.

    K (B, T, 3, 3) pixel intrinsics at ``image_hw``; c2w (B, T, 4, 4); cond_index (B,) reference
    frame per clip (default 0); num_views videos per group for ``cross_video`` (B % num_views == 0).
    ``path``: "dense" (SDPA with a broadcast bool mask), "sparse" (CPU/GPU block-sparse kernel),
    "flex" (FlexAttention with a block mask built from the row runs; CUDA, or CPU through
    torch.compile), or "auto" (CUDA: flex; CPU: sparse for large masks, dense otherwise).
    ``tau``: hard cross-video band half-width in image pixels; None (default) = half a feature cell's
    diagonal at each level, as the epipolar masks (a fixed 3 px band leaves most query rows of the
    coarse levels empty). For ``band="soft"`` it is CVD's ``pixel_band`` (None = 3).
    ``band``: "hard" (bool band mask) or "soft" (CVD's additive bias, dense path only).
    ``grid``: feature-cell centres, "camvid" or "cami2v_release" (the released CamI2V masks).
    ``tile_hw`` / ``tile_frames``: fix the query tile of the sparse path (cells x frames); by default
    each plan picks the tiling with the fewest computed pairs among rectangles and tiles of queries
    sorted by their epipolar line (``camvid.attention.sparse.build_tile_plan_from_runs``); speed only.
    ``mask_fn`` / ``neighbors_fn`` replace the geometry builders (tests, inspection); they take
    ``(ctx, kind, feat_hw)`` and return the token-layout mask / (index, valid) of that kind.
    """

    K: torch.Tensor | None = None
    c2w: torch.Tensor | None = None
    image_hw: tuple[int, int] | None = None
    cond_index: torch.Tensor | None = None
    num_views: int = 1
    path: str = "auto"
    tau: float | None = None
    threshold: float | None = None
    seed: int = 0
    tile_hw: tuple[int, int] | None = None
    tile_frames: int | None = None
    band: str = "hard"
    grid: str = "camvid"
    mask_fn: Callable | None = None
    neighbors_fn: Callable | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"unknown attention path {self.path!r}; valid: {', '.join(PATHS)}")
        if self.band not in BANDS:
            raise ValueError(f"unknown cross-video band {self.band!r} (attn.band); valid: {', '.join(BANDS)}")
        if self.grid not in GRIDS:
            raise ValueError(f"unknown feature grid {self.grid!r} (attn.grid); valid: {', '.join(GRIDS)}")
        if self.band == "soft" and self.path in ("sparse", "flex"):
            raise ValueError(f"band='soft' is a dense additive bias over every key; path={self.path!r} needs a "
                             "sparse mask: use path=dense or auto")
        if self.tau is not None and not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a positive number of image pixels or None, got {self.tau!r}")
        if (self.K is None) != (self.c2w is None):
            raise ValueError("AttentionContext needs both K and c2w, or neither")
        if self.K is not None:
            if self.K.dim() != 4 or self.K.shape[-2:] != (3, 3):
                raise ValueError(f"K must be (B, T, 3, 3), got {tuple(self.K.shape)}")
            if self.c2w.shape != (*self.K.shape[:2], 4, 4):
                raise ValueError(f"c2w must be (B, T, 4, 4) matching K {tuple(self.K.shape)}, got {tuple(self.c2w.shape)}")
            if self.image_hw is None:
                raise ValueError("AttentionContext with cameras needs image_hw (the pixel size K refers to)")
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")
        if self.cond_index is not None and self.K is not None and self.cond_index.shape != self.K.shape[:1]:
            raise ValueError(f"cond_index must be (B,) = ({self.K.shape[0]},), got {tuple(self.cond_index.shape)}")

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_camera_inputs(cls, cameras, **kw) -> AttentionContext:
        """Build from ``camvid.models.base.CameraInputs``."""
        return cls(K=cameras.K, c2w=cameras.c2w, image_hw=tuple(cameras.image_hw),
                   cond_index=cameras.cond_index, num_views=cameras.num_views, **kw)

    @property
    def batch_size(self) -> int | None:
        return None if self.K is None else self.K.shape[0]

    def reference_index(self, batch: int, device) -> torch.Tensor:
        if self.cond_index is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        return self.cond_index.to(device=device, dtype=torch.long)

    def infer_feat_hw(self, cells: int) -> tuple[int, int]:
        """(h, w) of a feature map with ``cells`` cells and the aspect ratio of ``image_hw``."""
        if self.image_hw is None:
            raise ValueError("cannot infer the feature size without image_hw")
        H, W = self.image_hw
        h = round(math.sqrt(cells * H / W))
        if h < 1 or cells % h:
            raise ValueError(f"{cells} feature cells do not form a map with the aspect ratio of {self.image_hw}")
        return h, cells // h

    def put_mask(self, kind: str, feat_hw: tuple[int, int], mask: torch.Tensor) -> None:
        """Seed the cache with a precomputed token-layout mask (for tests and inspection)."""
        self._check_kind(kind)
        self._cache[("mask", kind, tuple(feat_hw))] = mask

    # ------------------------------------------------------------------ memoised masks
    def mask(self, kind: str, feat_hw: tuple[int, int]) -> torch.Tensor:
        """Token-layout bool mask of ``kind`` at ``feat_hw`` (see module docstring for shapes)."""
        self._check_kind(kind)
        key = ("mask", kind, tuple(feat_hw))
        if key not in self._cache:
            if self.mask_fn is not None:
                self._cache[key] = self.mask_fn(self, kind, tuple(feat_hw))
            else:
                self._cache[key] = self._build_mask(kind, tuple(feat_hw))
        return self._cache[key]

    def neighbors(self, kind: str, feat_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse form of :meth:`mask`: (index, valid), (rows, Lq, Kmax), exactly its True entries."""
        self._check_kind(kind)
        key = ("neighbors", kind, tuple(feat_hw))
        if key not in self._cache:
            if self._mask_is_source(kind, feat_hw):
                self._cache[key] = mask_to_neighbors(self.mask(kind, feat_hw))
            elif self.neighbors_fn is not None:
                self._cache[key] = self.neighbors_fn(self, kind, tuple(feat_hw))
            else:
                self._cache[key] = self._build_neighbors(kind, tuple(feat_hw))
        return self._cache[key]

    def dense_mask(self, kind: str, feat_hw: tuple[int, int], num_registers: int):
        """(mask with register columns and no empty row, row_valid or None) for ``dense_masked_attention``."""
        key = ("dense", kind, tuple(feat_hw), num_registers)
        if key not in self._cache:
            self._cache[key] = pad_mask_for_registers(self.mask(kind, feat_hw), num_registers)
        return self._cache[key]

    def runs(self, kind: str, feat_hw: tuple[int, int]):
        """Row runs (``camvid.geometry.EpipolarRuns``) of kind "all" or "ref", memoised.

        The compact exact form of :meth:`mask` for the geometric kinds: ``runs.rows(q0, q1)`` are
        rows ``q0:q1`` of ``mask(kind, feat_hw)``; about ``2 / w`` of its size.
        """
        from camvid.geometry import epipolar as geo

        if kind not in RUN_KINDS:
            raise ValueError(f"mask kind {kind!r} has no row runs; valid: {', '.join(RUN_KINDS)}")
        key = ("runs", kind, tuple(feat_hw))
        if key not in self._cache:
            self._require_cameras(kind)
            if kind == "cross":
                self._cache[key] = self._cross_runs(tuple(feat_hw))
            else:
                ref = self.reference_index(self.K.shape[0], self.K.device)
                self._cache[key] = geo.epipolar_runs(self.K, self.c2w, self.image_hw, tuple(feat_hw), mode=kind,
                                                     ref_index=ref, threshold=self.threshold, seed=self.seed,
                                                     grid=self.grid)
        return self._cache[key]

    def _cross_runs(self, feat_hw):
        """Hard-band runs in the "cross" token layout: (B*T, hw, V-1, h), segment s = s-th partner."""
        from camvid.geometry import epipolar as geo

        B, T = self.K.shape[:2]
        hw = feat_hw[0] * feat_hw[1]
        starts, ends = [], []
        for p in self._partners():
            r = geo.cross_view_band_runs(self.K, self.c2w, self.K[p], self.c2w[p], self.image_hw, feat_hw,
                                         tau=self.band_tau(feat_hw), seed=self.seed, grid=self.grid)
            starts.append(r.start.reshape(B * T, hw, 1, feat_hw[0]))
            ends.append(r.end.reshape(B * T, hw, 1, feat_hw[0]))
        S = len(starts)
        frames = torch.arange(S, device=self.K.device).expand(B * T, 1, S)
        return geo.EpipolarRuns(torch.cat(starts, 2), torch.cat(ends, 2), frames, tuple(feat_hw), S)

    def band_tau(self, feat_hw: tuple[int, int]) -> float:
        """Cross-video band width at ``feat_hw`` in image pixels (see ``tau``)."""
        from camvid.geometry.epipolar import default_threshold

        if self.tau is not None:
            return float(self.tau)
        if self.band == "soft":
            return 3.0
        return default_threshold(self.image_hw, feat_hw)

    def bias(self, kind: str, feat_hw: tuple[int, int]) -> torch.Tensor:
        """Soft cross-video band: additive float bias (B*T, hw, (V-1)*hw), memoised per level."""
        from camvid.geometry import epipolar as geo

        if kind != "cross" or self.band != "soft":
            raise ValueError(f"an additive bias exists only for kind 'cross' with band='soft', not {kind!r}/{self.band!r}")
        key = ("bias", kind, tuple(feat_hw))
        if key not in self._cache:
            self._require_cameras(kind)
            B, T = self.K.shape[:2]
            hw = feat_hw[0] * feat_hw[1]
            parts = [geo.cross_view_soft_bias(self.K, self.c2w, self.K[p], self.c2w[p], self.image_hw, tuple(feat_hw),
                                              tau=self.band_tau(feat_hw), seed=self.seed, grid=self.grid)
                     for p in self._partners()]
            self._cache[key] = torch.cat(parts, dim=-1).reshape(B * T, hw, len(parts) * hw)
        return self._cache[key]

    def uses_bias(self, kind: str, feat_hw: tuple[int, int]) -> bool:
        """True when ``kind`` is computed with the soft additive bias (cameras given, no custom mask)."""
        return (kind == "cross" and self.band == "soft" and self.mask_fn is None
                and ("mask", kind, tuple(feat_hw)) not in self._cache)

    def uses_runs(self, kind: str, feat_hw: tuple[int, int]) -> bool:
        """True when the dense path expands mask rows chunk by chunk from :meth:`runs`.

        That is the case for the geometric kinds unless the dense mask is the source (seeded with
        :meth:`put_mask`, already built, or replaced by ``mask_fn``); the rows are equal either way.
        """
        return (kind in RUN_KINDS and self.K is not None and self.mask_fn is None
                and (kind != "cross" or self.band == "hard")
                and ("mask", kind, tuple(feat_hw)) not in self._cache)

    def tile_plan(self, kind: str, feat_hw: tuple[int, int]) -> TilePlan:
        key = ("plan", kind, tuple(feat_hw))
        if key not in self._cache:
            if self.uses_runs(kind, feat_hw):
                runs = self.runs(kind, feat_hw)
                order = None if (self.tile_hw or self.tile_frames) else self._pencil_order(kind, tuple(feat_hw))
                plan = build_tile_plan_from_runs(runs.start, runs.end, tuple(feat_hw), order=order,
                                                 tile_hw=self.tile_hw, tile_frames=self.tile_frames)
            elif self._mask_is_source(kind, feat_hw):
                plan = build_tile_plan(feat_hw, mask=self.mask(kind, feat_hw), tile_hw=self.tile_hw,
                                       tile_frames=self.tile_frames)
            else:
                index, valid = self.neighbors(kind, feat_hw)
                plan = build_tile_plan(feat_hw, neighbors=(index, valid), num_keys=self._num_keys(kind, feat_hw),
                                       tile_hw=self.tile_hw, tile_frames=self.tile_frames)
            self._cache[key] = plan
        return self._cache[key]

    def _pencil_order(self, kind: str, feat_hw: tuple[int, int]) -> torch.Tensor:
        """Sort keys (runs layout (N, Lq)) that put queries with nearly the same epipolar line side by
        side (``camvid.geometry.pencil_order``); the tile plan may cut its tiles along this order.

        One key view per query frame: "ref" the reference frame, "cross" the first partner, "all"
        the next frame (the last frame: the previous one). On a smooth camera path every key frame's
        epipole sits near that one's, so the order suits the other key frames too.
        """
        from camvid.geometry import epipolar as geo

        B, T = self.K.shape[:2]
        rows = torch.arange(B, device=self.K.device)
        if kind == "cross":
            p = self._partners()[0]
            angles = geo.pseudo_line_angles((B, T), self.seed).to(self.K.device)  # as the cross band's lines
            key = geo.pencil_order(self.K, self.c2w, self.K[p], self.c2w[p], self.image_hw, feat_hw, angles,
                                   grid=self.grid)
            return key.reshape(B * T, -1)
        if kind == "ref":
            dst = self.reference_index(B, self.K.device).view(B, 1).expand(B, T)
        else:
            t = torch.arange(T, device=self.K.device)
            dst = torch.where(t + 1 < T, t + 1, (t - 1).clamp(min=0)).expand(B, T)
        angles = geo.pseudo_line_angles((B, T, T), self.seed, symmetric_last_two=True).to(self.K.device)
        angles = angles[rows[:, None], torch.arange(T, device=self.K.device), dst]
        key = geo.pencil_order(self.K, self.c2w, self.K[rows[:, None], dst], self.c2w[rows[:, None], dst],
                               self.image_hw, feat_hw, angles, grid=self.grid)
        return key.reshape(B, -1)

    def flex_block_mask(self, kind: str, feat_hw: tuple[int, int], num_registers: int):
        """FlexAttention block mask of ``kind`` (``camvid.attention.flex``), built from :meth:`runs`, memoised."""
        from camvid.attention.flex import build_flex_block_mask

        key = ("flex", kind, tuple(feat_hw), num_registers)
        if key not in self._cache:
            runs = self.runs(kind, feat_hw)
            query_order, key_order = self._flex_orders(kind, tuple(feat_hw))
            self._cache[key] = build_flex_block_mask(runs.start, runs.end, tuple(feat_hw), num_registers,
                                                     query_order=query_order, key_order=key_order)
        return self._cache[key]

    def _flex_orders(self, kind: str, feat_hw: tuple[int, int]):
        """Query and key orders for the FlexAttention block mask: cells of one band side by side, so a
        block of 128 queries and a block of 128 keys share a kept pair less often than rows of cells do.

        "all": each frame's cells in pencil order (:meth:`_pencil_order`: sorted by their epipolar line
        in the next frame), for queries and keys alike: cells with one key lie on one epipolar line of
        their own frame too, and a band in a key frame is such a line. "ref": queries of all frames
        sorted by their band in the reference frame (``camvid.attention.sparse.band_query_order``), the
        reference frame's cells in pencil order towards its neighbour frame. "cross": token order (its
        blocks already hold one frame pair each).
        """
        from camvid.attention.sparse import band_query_order
        from camvid.geometry import epipolar as geo

        if kind == "cross":
            return None, None
        B, T = self.K.shape[:2]
        hw = feat_hw[0] * feat_hw[1]
        device = self.K.device
        if kind == "all":
            per_frame = self._pencil_order(kind, feat_hw).view(B, T, hw).argsort(dim=-1, stable=True)
            order = (per_frame + torch.arange(T, device=device).view(1, T, 1) * hw).reshape(B, T * hw)
            return order, order
        runs = self.runs(kind, feat_hw)
        query_order = band_query_order(runs.start, runs.end, feat_hw[1])
        rows = torch.arange(B, device=device)
        ref = self.reference_index(B, device)
        partner = torch.where(ref + 1 < T, ref + 1, (ref - 1).clamp(min=0))
        angles = geo.pseudo_line_angles((B, T, T), self.seed, symmetric_last_two=True).to(device)[rows, ref, partner]
        key = geo.pencil_order(self.K[rows, ref], self.c2w[rows, ref], self.K[rows, partner], self.c2w[rows, partner],
                               self.image_hw, feat_hw, angles, grid=self.grid)
        return query_order, key.reshape(B, hw).argsort(dim=1, stable=True)

    def _mask_is_source(self, kind: str, feat_hw) -> bool:
        """True when the dense mask is (or will be) the primary form: seeded, or from a custom mask_fn."""
        return ("mask", kind, tuple(feat_hw)) in self._cache or (self.mask_fn is not None and self.neighbors_fn is None)

    def choose_path(self, kind: str, feat_hw: tuple[int, int], rows: int, num_queries: int, num_keys: int,
                    device: torch.device) -> str:
        """The kernel for one masked call: "dense", "sparse", "flex" or "bias" (soft band, dense SDPA)."""
        if self.uses_bias(kind, feat_hw):
            return "bias"
        if self.path == "flex" and not self.uses_runs(kind, feat_hw):
            raise ValueError(f"path='flex' builds its block mask from row runs; mask kind {kind!r} here comes from a "
                             "custom or stored mask: use path=dense, sparse or auto")
        if self.path != "auto":
            return self.path
        if ("mask", kind, tuple(feat_hw)) in self._cache:
            return "dense"
        if torch.device(device).type == "cuda" and self.uses_runs(kind, feat_hw):
            from camvid.attention.flex import flex_available

            if flex_available():
                return "flex"
        large = feat_hw[0] * feat_hw[1] >= AUTO_SPARSE_CELLS and rows * num_queries * num_keys >= AUTO_SPARSE_PAIRS
        return "sparse" if large else "dense"

    # ------------------------------------------------------------------ builders (camvid.geometry)
    def _check_kind(self, kind: str) -> None:
        if kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {kind!r}; valid: {', '.join(MASK_KINDS)}")

    def _require_cameras(self, kind: str) -> None:
        if self.K is None:
            raise ValueError(f"mask kind {kind!r} needs cameras: build AttentionContext with K, c2w and image_hw")

    def _num_keys(self, kind: str, feat_hw) -> int:
        hw = feat_hw[0] * feat_hw[1]
        return {"all": self.K.shape[1] * hw if self.K is not None else 0, "ref": hw,
                "cross": (self.num_views - 1) * hw}[kind]

    def _partners(self) -> list[torch.Tensor]:
        """For each shift s = 1..V-1, the batch row of every video's s-th partner in its group."""
        B, V = self.K.shape[0], self.num_views
        if V < 2 or B % V:
            raise ValueError(f"cross-video attention needs num_views >= 2 dividing the batch; got num_views={V}, batch={B}")
        rows = torch.arange(B, device=self.K.device).view(B // V, V)
        return [rows.roll(-s, dims=1).flatten() for s in range(1, V)]

    def _build_mask(self, kind: str, feat_hw) -> torch.Tensor:
        from camvid.geometry import epipolar as geo

        self._require_cameras(kind)
        B, T = self.K.shape[:2]
        hw = feat_hw[0] * feat_hw[1]
        if kind == "all":
            m = geo.epipolar_mask(self.K, self.c2w, self.image_hw, feat_hw, mode="all",
                                  threshold=self.threshold, seed=self.seed, grid=self.grid)
            return m.view(B, T * hw, T * hw)
        if kind == "ref":
            ref = self.reference_index(B, self.K.device)
            m = geo.epipolar_mask(self.K, self.c2w, self.image_hw, feat_hw, mode="ref", ref_index=ref,
                                  threshold=self.threshold, seed=self.seed, grid=self.grid)
            return m[torch.arange(B, device=m.device), :, :, ref].reshape(B, T * hw, hw)
        parts = []
        for p in self._partners():
            m = geo.cross_view_band_mask(self.K, self.c2w, self.K[p], self.c2w[p], self.image_hw, feat_hw,
                                         tau=self.band_tau(feat_hw), seed=self.seed, grid=self.grid)  # (B, T, hw, hw)
            parts.append(m)
        return torch.cat(parts, dim=-1).reshape(B * T, hw, len(parts) * hw)

    def _build_neighbors(self, kind: str, feat_hw) -> tuple[torch.Tensor, torch.Tensor]:
        from camvid.geometry import epipolar as geo

        self._require_cameras(kind)
        B, T = self.K.shape[:2]
        hw = feat_hw[0] * feat_hw[1]
        if kind == "all":  # the runs are shared with the chunked dense path
            return self.runs("all", feat_hw).to_neighbors()
        if kind == "ref":
            ref = self.reference_index(B, self.K.device)
            index, valid = self.runs("ref", feat_hw).to_neighbors()
            local = index - (ref * hw).view(B, 1, 1)  # key tokens of the reference frame -> its cells
            return torch.where(valid, local, torch.zeros_like(local)), valid
        indices, valids = [], []
        for s, p in enumerate(self._partners()):
            index, valid = geo.cross_view_band_neighbors(self.K, self.c2w, self.K[p], self.c2w[p], self.image_hw,
                                                         feat_hw, tau=self.band_tau(feat_hw), seed=self.seed,
                                                         grid=self.grid)
            # Geometry indexes clip b's T*hw tokens (t*hw + k); here keys are frame t's cells of partner s.
            frame_start = (torch.arange(T, device=index.device) * hw).view(1, T, 1, 1)
            local = index.view(B, T, hw, -1) - frame_start + s * hw
            valid = valid.view(B, T, hw, -1)
            index = torch.where(valid, local, torch.zeros_like(local)).reshape(B * T, hw, -1)
            indices.append(index)
            valids.append(valid.reshape(B * T, hw, -1))
        return torch.cat(indices, dim=-1), torch.cat(valids, dim=-1)
