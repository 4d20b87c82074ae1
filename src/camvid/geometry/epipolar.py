"""Fundamental matrices, epipolar lines and the epipolar attention masks built from them.

Conventions (docs/geometry.md):
- Image coordinates: pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``; ``K`` maps camera
  rays to these coordinates. Poses are camera-to-world, OpenCV axes.
- ``F_ij = K_j^-T [t]x R K_i^-1`` with ``(R, t)`` the rigid motion from camera i to camera j, so
  ``l = F_ij x_i`` is the epipolar line of pixel ``x_i`` in frame j and ``x_j^T F_ij x_i = 0``.
- Feature cell ``(r, c)`` of an ``h x w`` map over an ``H x W`` image is centred at pixel
  ``((c + 0.5) W / w, (r + 0.5) H / h)``; a key cell is kept when its centre lies within
  ``threshold`` image pixels of the query cell's line (``<=``). The default threshold is half a
  cell's diagonal, which guarantees that the cell holding the true match is always kept.
- Coincident cameras (camera centres closer than ``eps``): F vanishes, so a pseudo-epipolar line
  of random direction is drawn through the point the match must be, ``K_j R K_i^-1 x_i`` (the
  pixel itself for identical cameras). One angle per (clip, query frame, key frame), shared by
  all cells and all UNet levels, symmetric in the frame pair and fixed by ``seed``.
- A query whose ray passes through the other camera centre has no line (``F x = 0``); its match
  is the epipole, and it gets a pseudo line through the epipole by the same rule.

Every mask is defined by one float64 predicate over every (query line, key cell) pair, but no
kernel evaluates it densely: along a feature row the kept cells form one run, whose ends are
found analytically, certified against the predicate's rounding, and written (dense) or listed
(sparse) chunk by chunk. No dense float ``(B, T, T, hw, hw)`` tensor is ever formed, and the dense
and sparse forms equal the predicate, hence each other, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from camvid.geometry.cameras import validate_cameras

__all__ = [
    "relative_pose",
    "fundamental_matrix",
    "fundamental_matrices",
    "fundamental_between",
    "pseudo_line_angles",
    "pseudo_lines_through",
    "epipolar_lines",
    "feature_cell_centers",
    "default_threshold",
    "epipolar_mask",
    "epipolar_neighbors",
    "epipolar_runs",
    "EpipolarRuns",
    "cross_view_band_mask",
    "cross_view_band_neighbors",
    "cross_view_band_runs",
    "neighbors_to_mask",
    "band_mask_from_lines",
    "band_neighbors_from_lines",
    "COINCIDENT_EPS",
    "GRIDS",
    "cross_view_soft_bias",
    "pencil_order",
]

# Feature-cell centre conventions (``grid=``), as offsets in image pixels added to our centres:
# "camvid": cell (r, c) centred at ((c + 0.5) W / w, (r + 0.5) H / h) (pixel u spans [u, u + 1]);
# "cami2v_release": the released CamI2V code's ``k * d + d / 2 - 0.5`` (pixel u centred at u), fed
# the same pixel intrinsics, i.e. half a pixel up and left of ours. Released CamI2V checkpoints
# were trained with those masks.
GRIDS = {"camvid": 0.0, "cami2v_release": -0.5}
# Camera centres closer than this (in pose units) count as coincident: F is then undefined.
COINCIDENT_EPS = 1e-6
# |(a, b)| below this fraction of |l| means x_i sits on the epipole: the line is undefined.
_DEGENERATE_LINE_RTOL = 1e-10
# (line, feature row) pairs per chunk of the band kernels: bounds their temporaries (~ 100 B each).
_CHUNK_ROWS = 1 << 15
# (line, feature row) pairs per chunk of the run builder (~ 150 B each): larger chunks mean fewer,
# longer ops, which is most of its cost.
_RUNS_CHUNK_ROWS = 1 << 16
# Largest run-pattern lookup table (bool elements); wider grids compare against the run ends instead.
_MAX_TABLE = 1 << 22


# --------------------------------------------------------------------------- validation


def _check_hw(hw, name: str) -> tuple[int, int]:
    try:
        h, w = hw
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {hw!r}") from None
    if int(h) != h or int(w) != w or int(h) <= 0 or int(w) <= 0:
        raise ValueError(f"{name} must be two positive integers (height, width), got {hw!r}")
    return int(h), int(w)


def _check_clip_cameras(K: torch.Tensor, c2w: torch.Tensor, what: str) -> None:
    if not isinstance(K, torch.Tensor) or not isinstance(c2w, torch.Tensor):
        raise ValueError(f"{what}: intrinsics and poses must be tensors")
    if K.dim() != 4:
        raise ValueError(f"{what}: intrinsics must have shape (B, T, 3, 3), got {tuple(K.shape)}")
    if c2w.dim() != 4:
        raise ValueError(f"{what}: poses must have shape (B, T, 4, 4), got {tuple(c2w.shape)}")
    validate_cameras(K, c2w, what=what)
    _check_rigid(c2w, what)


def _check_rigid(c2w: torch.Tensor, what: str) -> None:
    """Fundamental matrices assume rigid poses; a scaled or sheared 'rotation' gives wrong lines."""
    R = c2w[..., :3, :3].double()
    err = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=R.dtype, device=R.device)).abs().amax((-1, -2))
    bad = err > 1e-3
    if bad.any():
        first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
        raise ValueError(f"{what}: frame {first}: pose rotation is not orthonormal (|R^T R - I| = "
                         f"{float(err[first]):.3g})")


def _check_threshold(threshold: float, name: str) -> float:
    value = float(threshold)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number of image pixels, got {threshold!r}")
    return value


def _ref_indices(ref_index, batch: int, frames: int, device) -> torch.Tensor:
    if isinstance(ref_index, torch.Tensor):
        if ref_index.dim() == 0:
            ref = ref_index.reshape(1).expand(batch)
        elif ref_index.shape == (batch,):
            ref = ref_index
        else:
            raise ValueError(f"ref_index must be an int or a ({batch},) tensor, got shape {tuple(ref_index.shape)}")
        if ref.is_floating_point() or ref.dtype == torch.bool:
            raise ValueError(f"ref_index must hold integers, got dtype {ref.dtype}")
        ref = ref.to(device=device, dtype=torch.long)
    else:
        if int(ref_index) != ref_index:
            raise ValueError(f"ref_index must be an integer, got {ref_index!r}")
        ref = torch.full((batch,), int(ref_index), dtype=torch.long, device=device)
    bad = (ref < 0) | (ref >= frames)
    if bad.any():
        b = int(torch.nonzero(bad)[0])
        raise ValueError(f"ref_index {int(ref[b])} of clip {b} is out of range for {frames} frames")
    return ref


# --------------------------------------------------------------------------- two-view geometry


def relative_pose(c2w_src: torch.Tensor, c2w_dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid motion ``X_dst = R X_src + t`` between camera frames: ``R`` (..., 3, 3), ``t`` (..., 3).

    ``t = R_dst^T (c_src - c_dst)`` is formed from the camera centres, so identical cameras give
    an exactly zero translation even in float32.
    """
    R_src, R_dst = c2w_src[..., :3, :3], c2w_dst[..., :3, :3]
    R = R_dst.transpose(-1, -2) @ R_src
    t = (R_dst.transpose(-1, -2) @ (c2w_src[..., :3, 3] - c2w_dst[..., :3, 3]).unsqueeze(-1)).squeeze(-1)
    return R, t


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)], -2
    )


def fundamental_matrix(
    K_src: torch.Tensor, c2w_src: torch.Tensor, K_dst: torch.Tensor, c2w_dst: torch.Tensor
) -> torch.Tensor:
    """``F = K_dst^-T [t]x R K_src^-1`` (broadcasting): maps pixels of ``src`` to lines in ``dst``.

    F is exactly zero for coincident cameras; the mask builders replace those lines by
    pseudo-epipolar lines.
    """
    R, t = relative_pose(c2w_src, c2w_dst)
    E = _skew(t) @ R
    return torch.linalg.inv(K_dst).transpose(-1, -2) @ E @ torch.linalg.inv(K_src)


def fundamental_matrices(K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """All frame pairs of a clip: (..., T, T, 3, 3), ``F[..., i, j]`` maps frame i pixels to lines in j."""
    validate_cameras(K, c2w, what="fundamental_matrices")
    if K.dim() < 3:
        raise ValueError(f"fundamental_matrices: expected (..., T, 3, 3) intrinsics, got {tuple(K.shape)}")
    return fundamental_matrix(K.unsqueeze(-3), c2w.unsqueeze(-3), K.unsqueeze(-4), c2w.unsqueeze(-4))


def fundamental_between(
    K_a: torch.Tensor, c2w_a: torch.Tensor, K_b: torch.Tensor, c2w_b: torch.Tensor
) -> torch.Tensor:
    """Corresponding frames of two clips: (..., T, 3, 3), ``F[..., t]`` maps clip a frame t to clip b frame t."""
    validate_cameras(K_a, c2w_a, what="fundamental_between (clip a)")
    validate_cameras(K_b, c2w_b, what="fundamental_between (clip b)")
    if K_a.shape != K_b.shape:
        raise ValueError(f"fundamental_between: clip a cameras {tuple(K_a.shape)} and clip b cameras "
                         f"{tuple(K_b.shape)} differ in shape")
    return fundamental_matrix(K_a, c2w_a, K_b, c2w_b)


# --------------------------------------------------------------------------- lines


def pseudo_line_angles(shape: tuple[int, ...], seed: int, *, symmetric_last_two: bool = False) -> torch.Tensor:
    """Random line directions in ``[0, pi)`` (float64, CPU), a pure function of ``shape`` and ``seed``.

    With ``symmetric_last_two`` the last two dims (query frame, key frame) form a symmetric matrix,
    so that frames i and j see each other through lines of one direction: the geometry of a camera
    translating parallel to the image plane (epipoles at infinity), as in CVD's pseudo lines.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    angles = torch.rand(tuple(shape), generator=gen, dtype=torch.float64) * math.pi
    if symmetric_last_two:
        upper = torch.triu(angles)
        angles = upper + torch.triu(angles, diagonal=1).transpose(-1, -2)
    return angles


def pseudo_lines_through(points: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Lines of direction angle ``angles`` (...,) through ``points`` (..., N, 2|3): (..., N, 3).

    Homogeneous points (last dim 3) may lie at infinity in the limit; the line is then pushed far
    outside the image (its rows get no keys) instead of producing inf/NaN.
    """
    if points.shape[-1] == 2:
        px, py, pz = points[..., 0], points[..., 1], torch.ones_like(points[..., 0])
    elif points.shape[-1] == 3:
        px, py, pz = points.unbind(-1)
        tiny = torch.finfo(points.dtype).eps
        pz = torch.where(pz.abs() < tiny, torch.where(pz < 0, -tiny, tiny), pz)
    else:
        raise ValueError(f"pseudo_lines_through: points must end in 2 or 3 coordinates, got {tuple(points.shape)}")
    return _lines_through(px, py, pz, torch.cos(angles), torch.sin(angles))


def _lines_through(px, py, pz, cos_a, sin_a) -> torch.Tensor:
    """Body of :func:`pseudo_lines_through` from the directions' cosines and sines (elementwise only)."""
    a = cos_a.to(px.dtype).unsqueeze(-1).expand_as(px)
    b = sin_a.to(px.dtype).unsqueeze(-1).expand_as(px)
    c = -(a * px + b * py) / pz
    return torch.stack([a, b, c], dim=-1)


def epipolar_lines(
    K_src: torch.Tensor,
    c2w_src: torch.Tensor,
    K_dst: torch.Tensor,
    c2w_dst: torch.Tensor,
    points: torch.Tensor,
    angles: torch.Tensor,
    *,
    eps: float = COINCIDENT_EPS,
) -> torch.Tensor:
    """Normalised lines ``(a, b, c)``, ``a^2 + b^2 = 1``, in ``dst`` for ``points`` of ``src``.

    Cameras broadcast to a pair shape ``P`` ((..., 3, 3) / (..., 4, 4)), ``points`` is (N, 2) or
    (P..., N, 2) image pixels of ``src``, ``angles`` (P...) the pseudo-line directions used where
    the cameras coincide or the point sits on the epipole. Computed in float64; returns (P..., N, 3).
    ``|a x + b y + c|`` is then the distance in pixels of ``(x, y)`` from the line.
    """
    f64 = torch.float64
    K_src, K_dst, c2w_src, c2w_dst = (m.to(f64) for m in (K_src, K_dst, c2w_src, c2w_dst))
    points = points.to(f64)
    R, t = relative_pose(c2w_src, c2w_dst)
    K_src_inv = torch.linalg.inv(K_src)
    K_dst_inv = torch.linalg.inv(K_dst)
    F = K_dst_inv.transpose(-1, -2) @ _skew(t) @ R @ K_src_inv
    # Where the match must be when the baseline vanishes: the infinite homography K_dst R K_src^-1.
    H_inf = K_dst @ R @ K_src_inv
    pts_h = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # (..., N, 3)
    lines = pts_h @ F.transpose(-1, -2)  # (P..., N, 3)
    # Pseudo lines are formed only where they are used (few pairs / queries), elementwise from the
    # cosines and sines of all angles, so each equals what a full-size evaluation would give.
    cos_a, sin_a = torch.cos(angles), torch.sin(angles)

    ab = lines[..., :2].norm(dim=-1)
    degenerate = ab <= _DEGENERATE_LINE_RTOL * lines.norm(dim=-1)
    safe_ab = torch.where(degenerate, torch.ones_like(ab), ab)
    lines = lines / safe_ab.unsqueeze(-1)
    if bool(degenerate.any()):
        epipole = (K_dst @ t.unsqueeze(-1)).squeeze(-1).unsqueeze(-2)  # (P..., 1, 3)
        through_epipole = _pseudo_lines_homogeneous(epipole, cos_a, sin_a).expand_as(lines)
        lines = torch.where(degenerate.unsqueeze(-1), through_epipole, lines)
    coincident = (c2w_src[..., :3, 3] - c2w_dst[..., :3, 3]).norm(dim=-1) <= eps  # (P...)
    if bool(coincident.any()):
        mapped = pts_h @ H_inf.transpose(-1, -2)  # (P..., N, 3)
        pairs = lines.shape[:-2]
        sel = torch.broadcast_to(coincident, pairs)
        lines[sel] = _pseudo_lines_homogeneous(
            torch.broadcast_to(mapped, lines.shape)[sel],
            torch.broadcast_to(cos_a, pairs)[sel],
            torch.broadcast_to(sin_a, pairs)[sel],
        )
    return lines


def pencil_order(
    K_src: torch.Tensor,
    c2w_src: torch.Tensor,
    K_dst: torch.Tensor,
    c2w_dst: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    angles: torch.Tensor,
    *,
    grid: str = "camvid",
) -> torch.Tensor:
    """Where each feature cell's epipolar line sits in its pencil: (P..., h*w) float64 in [0, pi].

    The lines of all points of one view in another pass through one point, the epipole (a pencil;
    parallel lines when the epipole is at infinity, or pseudo lines of one direction ``angles``
    where the cameras coincide). Every such line lies in the 2D subspace orthogonal to the epipole,
    so its angle there is one number that orders the whole pencil, finite epipole or not. Cells
    with nearly equal numbers have nearly the same line, i.e. nearly the same band of keys: the
    block-sparse attention sorts queries by this to form tiles whose bands overlap
    (``camvid.attention.sparse``). Cameras broadcast to the pair shape ``P`` as in :func:`epipolar_lines`.
    """
    centers = feature_cell_centers(image_hw, feat_hw, device=K_src.device, grid=grid)
    lines = epipolar_lines(K_src, c2w_src, K_dst, c2w_dst, centers, angles)  # (P..., hw, 3)
    # the lines' span: the two leading eigenvectors of their 3x3 scatter matrix (eigh: ascending)
    basis = torch.linalg.eigh(lines.transpose(-1, -2) @ lines).eigenvectors[..., 1:]  # (P..., 3, 2)
    coords = lines @ basis  # (P..., hw, 2)
    return torch.atan2(coords[..., 1], coords[..., 0]).remainder(math.pi)  # a line and its negative agree


def _pseudo_lines_homogeneous(points: torch.Tensor, cos_a: torch.Tensor, sin_a: torch.Tensor) -> torch.Tensor:
    """:func:`pseudo_lines_through` for homogeneous ``points`` (..., N, 3) from precomputed cos / sin."""
    px, py, pz = points.unbind(-1)
    tiny = torch.finfo(points.dtype).eps
    pz = torch.where(pz.abs() < tiny, torch.where(pz < 0, -tiny, tiny), pz)
    return _lines_through(px, py, pz, cos_a, sin_a)


# --------------------------------------------------------------------------- feature grids


def _grid_offset(grid: str) -> float:
    if grid not in GRIDS:
        raise ValueError(f"unknown feature grid {grid!r}; valid: {', '.join(GRIDS)}")
    return GRIDS[grid]


def feature_cell_centers(
    image_hw: tuple[int, int], feat_hw: tuple[int, int], *, device: torch.device | str | None = None,
    grid: str = "camvid",
) -> torch.Tensor:
    """(h*w, 2) float64 image-pixel ``(x, y)`` centres of the cells of an ``h x w`` feature map, row-major.

    ``grid``: "camvid" (ours) or "cami2v_release" (half a pixel up-left, see ``GRIDS``).
    """
    H, W = _check_hw(image_hw, "image_hw")
    h, w = _check_hw(feat_hw, "feat_hw")
    off = _grid_offset(grid)
    xs = (torch.arange(w, dtype=torch.float64, device=device) + 0.5) * (W / w) + off
    ys = (torch.arange(h, dtype=torch.float64, device=device) + 0.5) * (H / h) + off
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def default_threshold(image_hw: tuple[int, int], feat_hw: tuple[int, int]) -> float:
    """Half the diagonal of one feature cell, in image pixels (CamI2V's choice)."""
    H, W = _check_hw(image_hw, "image_hw")
    h, w = _check_hw(feat_hw, "feat_hw")
    return 0.5 * math.hypot(H / h, W / w)


def _within_band(a, b, c, x, y, threshold: float) -> torch.Tensor:
    """The predicate that defines every mask: ``|a x + b y + c| <= threshold``, in this op order.

    The band kernels reproduce it exactly and call it themselves where their certificate fails.
    """
    d = a * x
    d += b * y
    d += c
    return d.abs_() <= threshold


# --------------------------------------------------------------------------- band kernels
#
# Along one feature row the float predicate's signed distance ``D(col) = fl(fl(fl(a x_col) +
# fl(b y)) + c)`` is monotone in the column (each IEEE operation is monotone in each argument and
# the cell centres x_col increase), so the kept cells of a row form one contiguous run of columns.
# The kernels find each run's ends analytically from the line, certify them against the rounding
# of the predicate (see _row_runs), and evaluate the whole row with the predicate itself only where
# that certificate fails. Runs therefore equal the all-cells predicate bit for bit, for any line,
# at O(rows) work per line instead of O(cells).


def _row_runs(lines: torch.Tensor, image_hw, feat_hw, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last kept column ``(lo, hi)`` of every feature row, float64 (..., h) holding integers.

    ``lines`` (..., 3), taken to float64 (as the predicate with float64 cell centres would promote
    them). An empty row has ``lo == hi + 1``; ``0 <= lo <= w``, ``-1 <= hi < w``.
    """
    H, W = image_hw
    h, w = feat_hw
    step = W / w
    lines = lines.to(torch.float64)
    a, b, c = (lines[..., k : k + 1] for k in range(3))
    y = (torch.arange(h, dtype=torch.float64, device=lines.device) + 0.5) * (H / h)
    # In exact arithmetic s D = |a| x + s (b y + c) rises along the row (s = sign of a). It meets
    # -threshold and +threshold at cell coordinates u_lo <= u_hi (cell k is centred at u = k),
    # and the run is [ceil u_lo, floor u_hi]; u = y beta + gamma with per-line beta and gamma.
    s = torch.where(a < 0, -1.0, 1.0).to(torch.float64)
    k1 = -s / (a.abs() * step)
    beta = b * k1
    gamma = c * k1
    gamma -= 0.5
    thr_k1 = threshold * k1.abs()
    u_mid = y * beta
    u_mid += gamma
    u_lo = (u_mid - thr_k1).clamp_(-0.5, w - 0.5)
    u_hi = (u_mid + thr_k1).clamp_(-0.5, w - 0.5)
    lo = torch.ceil(u_lo)
    hi = torch.floor(u_hi)
    # Certificate: the in-grid cells on both sides of each end lie more than ``tol`` pixels from
    # the band edge in exact arithmetic. ``tol`` is ~500x a bound on the float64 rounding of the
    # predicate and of u for in-grid cells (~16 ulp of |a| W + |b| H + |c| + threshold), so the
    # float predicate keeps exactly the cells [lo, hi]. An end beyond the grid is clamped to half
    # a cell outside it, i.e. at least half a cell from every in-grid cell, which passes exactly
    # when tol is under half a cell (otherwise, a nearly flat line, no row passes). NaN fails.
    tol = 1e-12 * (a.abs() * W + b.abs() * H + c.abs() + threshold)
    half_gap = 0.5 - tol * k1.abs()  # |frac - 1/2| must stay below this
    ok = (lo - u_lo).sub_(0.5).abs_() < half_gap
    ok &= (u_hi - hi).sub_(0.5).abs_() < half_gap
    # A line parallel to the rows (a = 0, e.g. a pure sideways camera motion) has a constant
    # D = fl(fl(b y) + c) along each row (adding fl(0 x) = +-0 changes nothing): all in or all out.
    flat = a == 0
    if bool(flat.any()):
        flat = flat.expand_as(u_mid)
        d = b * y
        d += c
        inside = d.abs_() <= threshold
        lo = torch.where(flat, torch.where(inside, 0.0, float(w)), lo)
        hi = torch.where(flat, torch.where(inside, float(w - 1), -1.0), hi)
        ok |= flat
    if not bool(ok.all()):
        bad = torch.nonzero(~ok, as_tuple=True)
        xs = (torch.arange(w, dtype=torch.float64, device=lines.device) + 0.5) * step
        keep = _within_band(a[bad[:-1]], b[bad[:-1]], c[bad[:-1]], xs, y[bad[-1]].unsqueeze(-1), threshold)
        cols = xs.new_tensor(range(w))
        lo[bad] = torch.where(keep, cols, float(w)).amin(-1)
        hi[bad] = torch.where(keep, cols, -1.0).amax(-1)
    return lo, hi


def _row_patterns(w: int, device) -> torch.Tensor:
    """Bool table ((w + 1)^2, w): row ``lo * (w + 1) + hi + 1`` is the run [lo, hi] of one feature row."""
    cols = torch.arange(w, device=device)
    lo = torch.arange(w + 1, device=device).view(-1, 1, 1)
    hi = torch.arange(-1, w, device=device).view(1, -1, 1)
    return ((cols >= lo) & (cols <= hi)).view(-1, w)


def _chunk_queries(n_lines_per_query: int, h: int) -> int:
    """Queries per chunk so that per-row temporaries stay near ``_CHUNK_ROWS`` rows."""
    return max(1, _CHUNK_ROWS // max(1, n_lines_per_query * h))


@contextlib.contextmanager
def one_thread():
    """Run the chunk loops on one intra-op thread, then restore the caller's setting.

    The loops issue thousands of small, memory-bound ops; splitting each across threads gains
    little and adds a synchronisation per op, which on a busy machine waits for a scheduler slice
    (measured: 2 threads made the 32x32 mask 10-25x slower than 1 on a loaded 2-core host).
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _fill_dense(out: torch.Tensor, lines: torch.Tensor, image_hw, feat_hw, threshold: float) -> None:
    """``out`` (Q, hw, S, hw) bool view <- band of ``lines`` (Q, S, hw, 3), row runs chunk by chunk."""
    with one_thread():
        _fill_dense_chunks(out, lines, image_hw, feat_hw, threshold)


def _fill_dense_chunks(out: torch.Tensor, lines: torch.Tensor, image_hw, feat_hw, threshold: float) -> None:
    Q, S, hw, _ = lines.shape
    h, w = feat_hw
    table = _row_patterns(w, lines.device) if (w + 1) ** 2 * w <= _MAX_TABLE else None
    cols = torch.arange(w, device=lines.device)
    chunk = _chunk_queries(S, h)
    for i in range(Q):
        for q0 in range(0, hw, chunk):
            lo, hi = _row_runs(lines[i, :, q0 : q0 + chunk].transpose(0, 1), image_hw, feat_hw, threshold)
            dst = out[i, q0 : q0 + chunk]  # (n, S, hw)
            if table is None:  # wide grids: compare every cell with its row's run ends
                runs = (cols >= lo.long().unsqueeze(-1)) & (cols <= hi.long().unsqueeze(-1))
                dst.copy_(runs.view(dst.shape))
                continue
            pattern = lo.mul_(w + 1).add_(hi).add_(1).long().reshape(-1)
            if dst.is_contiguous():  # every key frame: gather the row patterns straight into out
                torch.index_select(table, 0, pattern, out=dst.view(-1, w))
            else:
                dst.copy_(table[pattern].view(dst.shape))


def _run_dtype(w: int) -> torch.dtype:
    """Smallest integer dtype holding a run end (a column in [0, w])."""
    return torch.uint8 if w <= 255 else torch.int16 if w <= 32767 else torch.int32


def _lines_to_runs(
    lines: torch.Tensor, image_hw, feat_hw, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lines`` (B, Q, S, hw, 3) -> run ends ``(start, end)`` (B, Q*hw, S, h), kept columns [start, end).

    The lines are walked in memory order, ``_RUNS_CHUNK_ROWS`` (line, row) pairs at a time, and the
    runs stored as small integers, so the build holds the lines, 2 small integers per (line, row)
    (twice, for the final reordering to query-major) and one chunk of float64 temporaries.
    """
    with one_thread():
        B, Q, S, hw, _ = lines.shape
        h, w = feat_hw
        small = _run_dtype(w)
        flat = lines.reshape(-1, 3)
        lo_all = torch.empty(flat.shape[0], h, dtype=small, device=lines.device)
        end_all = torch.empty_like(lo_all)
        chunk = max(1, _RUNS_CHUNK_ROWS // h)
        for l0 in range(0, flat.shape[0], chunk):
            lo, hi = _row_runs(flat[l0 : l0 + chunk], image_hw, feat_hw, threshold)
            lo_all[l0 : l0 + chunk] = lo
            end_all[l0 : l0 + chunk] = torch.maximum(hi.add_(1), lo)  # an empty row may come as (w, 0)

        def query_major(runs: torch.Tensor) -> torch.Tensor:
            return runs.view(B, Q, S, hw, h).transpose(2, 3).reshape(B, Q * hw, S, h)

        return query_major(lo_all), query_major(end_all)


def _neighbors_from_runs(
    start: torch.Tensor, end: torch.Tensor, key_frames: torch.Tensor, feat_hw, max_keys: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs (B, L, S, h) with ``key_frames`` (B, L // hw, S) -> neighbour lists (index, valid) (B, L, Kmax).

    A query's keys are its runs in (key frame, row) order, each run ascending; ``key_frames`` must
    ascend along S, so the lists come out sorted.
    """
    with one_thread():
        return _neighbors_from_runs_chunks(start, end, key_frames, feat_hw, max_keys)


def _neighbors_from_runs_chunks(start, end, key_frames, feat_hw, max_keys):
    B, L, S, h = start.shape
    w = feat_hw[1]
    hw = h * w
    device = start.device
    counts = (end - start).sum((-1, -2), dtype=torch.long)  # end >= start: no wrap-around
    kmax = int(counts.max()) if counts.numel() else 0
    if max_keys is not None:
        if int(max_keys) < kmax:
            raise ValueError(f"max_keys={max_keys} is smaller than the {kmax} keys some query needs; "
                             "raise max_keys or leave it None")
        kmax = int(max_keys)
    index = torch.empty(B, L, kmax, dtype=torch.long, device=device)  # every row is written
    valid = torch.empty(B, L, kmax, dtype=torch.bool, device=device)
    if kmax == 0:
        return index, valid
    slots = torch.arange(kmax, device=device)
    row_starts = torch.arange(h, device=device) * w
    chunk = max(1, min(hw, _CHUNK_ROWS // max(1, S * h)))
    for bi in range(B):
        for r0 in range(0, L, chunk):
            n = min(chunk, L - r0)
            # a chunk never crosses a query frame when it divides hw; otherwise gather frames per row
            frames = key_frames[bi, torch.arange(r0, r0 + n, device=device) // hw]  # (n, S)
            lo = start[bi, r0 : r0 + n].long()
            length = (end[bi, r0 : r0 + n].long() - lo).flatten(1)  # (n, S*h)
            first_key = lo.add_(row_starts).add_(frames.unsqueeze(-1) * hw).flatten(1)
            # Slot p of a query holds p + g(run of p), g = first key - first slot of the run. Adding the
            # jumps of g at each run's first slot and taking a cumulative sum spreads g over its run;
            # empty runs telescope away, runs starting at the end fall into the dump column kmax.
            first = length.cumsum(-1).sub_(length)
            g = first_key.sub_(first)
            jumps = torch.diff(g, dim=-1, prepend=torch.zeros_like(g[:, :1]))
            acc = torch.zeros(n, kmax + 1, dtype=torch.long, device=device)
            acc.scatter_add_(1, first, jumps)
            keys, used = index[bi, r0 : r0 + n], valid[bi, r0 : r0 + n]
            torch.cumsum(acc[:, :kmax], -1, out=keys)
            torch.lt(slots, counts[bi, r0 : r0 + n].unsqueeze(-1), out=used)
            keys.add_(slots).masked_fill_(~used, 0)
    return index, valid


def _sparse_from_lines(
    lines: torch.Tensor, key_frames: torch.Tensor, image_hw, feat_hw, threshold: float, max_keys: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lines`` (B, Q, S, hw, 3), ``key_frames`` (B, Q, S) ascending in S -> (index, valid) (B, Q*hw, Kmax)."""
    start, end = _lines_to_runs(lines, image_hw, feat_hw, threshold)
    return _neighbors_from_runs(start, end, key_frames, feat_hw, max_keys)


@dataclass(frozen=True, eq=False)  # tensors: compare with to_dense() / torch.equal instead
class EpipolarRuns:
    """Compact exact form of a band mask: per (query token, key frame, key row) one run of key columns.

    ``start`` / ``end`` (B, Q*hw, S, h), small integers (uint8 for grids up to 255 wide, else int16):
    query token ``i*hw + q`` keeps the key cells ``r*w + c`` of key frame ``key_frames[b, i, s]``
    with ``start <= c < end`` in row ``r`` (empty when ``start == end``). ``key_frames`` (B, Q, S)
    long, ascending along S; ``num_frames`` key frames exist in all (the dense layouts' key axis).
    2 bytes (uint8 start and end) per (query, key frame, row) instead of ``w`` for the dense rows.
    """

    start: torch.Tensor
    end: torch.Tensor
    key_frames: torch.Tensor
    feat_hw: tuple[int, int]
    num_frames: int

    @property
    def num_queries(self) -> int:
        return self.start.shape[1]

    def rows(self, q0: int, q1: int) -> torch.Tensor:
        """Dense bool rows of query tokens ``q0:q1`` over the runs' own key frames: (B, q1 - q0, S*h*w).

        Key token ``s*hw + k`` is cell k of key frame ``key_frames[b, i, s]`` (for ``mode="all"``
        this is the (B, T*hw, T*hw) token-layout mask; for ``mode="ref"`` the (B, T*hw, hw) one).
        """
        if not 0 <= q0 <= q1 <= self.num_queries:
            raise ValueError(f"query range [{q0}, {q1}) is outside [0, {self.num_queries}]")
        B, _, S, h = self.start.shape
        w = self.feat_hw[1]
        lo, hi = self.start[:, q0:q1], self.end[:, q0:q1]
        if (w + 1) ** 2 * w <= _MAX_TABLE:  # gather each row's pattern from a small table
            pattern = lo.long().mul_(w + 1).add_(hi.long()).reshape(-1)
            rows = _row_patterns(w, lo.device)[pattern]
        else:
            cols = torch.arange(w, device=lo.device)
            rows = (cols >= lo.unsqueeze(-1).long()) & (cols < hi.unsqueeze(-1).long())
        return rows.view(B, q1 - q0, S * h * w)

    def to_dense(self) -> torch.Tensor:
        """The full mask (B, Q, hw, num_frames, hw) (``epipolar_mask`` layout), written chunk by chunk."""
        B, L, S, h = self.start.shape
        hw = h * self.feat_hw[1]
        Q = L // hw
        every = self.key_frames.new_tensor(range(self.num_frames))
        contiguous = S == self.num_frames and bool((self.key_frames == every).all())
        alloc = torch.empty if contiguous else torch.zeros  # "all": every element is written
        out = alloc(B, Q, hw, self.num_frames, hw, dtype=torch.bool, device=self.start.device)
        chunk = max(1, min(hw, _CHUNK_ROWS // max(1, S * h)))
        for i in range(Q):
            for q0 in range(0, hw, chunk):
                n = min(chunk, hw - q0)
                rows = self.rows(i * hw + q0, i * hw + q0 + n).view(B, n, S, hw)
                if contiguous:
                    out[:, i, q0 : q0 + n] = rows
                    continue
                for bi in range(B):
                    out[bi, i, q0 : q0 + n, self.key_frames[bi, i]] = rows[bi]
        return out

    def to_neighbors(self, max_keys: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour lists (index, valid) (B, Q*hw, Kmax) into the ``num_frames * hw`` key tokens."""
        return _neighbors_from_runs(self.start, self.end, self.key_frames, self.feat_hw, max_keys)


# --------------------------------------------------------------------------- epipolar attention


def _shift_key_grid(lines: torch.Tensor, grid: str) -> torch.Tensor:
    """Lines measured against key cells shifted by the grid offset ``o``: a (x + o) + b (y + o) + c.

    The band kernels place key cells on our grid, so another grid is folded into the lines' ``c``
    (exactly the same predicate up to one rounding of c); query centres are shifted directly.
    """
    off = _grid_offset(grid)
    if off == 0.0:
        return lines
    lines = lines.clone()
    lines[..., 2] += off * (lines[..., 0] + lines[..., 1])
    return lines


def _clip_lines(K, c2w, image_hw, feat_hw, seed: int, eps: float, grid: str = "camvid") -> torch.Tensor:
    """(B, T, T, hw, 3) lines of every query cell of frame i (dim 1) in every key frame j (dim 2)."""
    B, T = K.shape[:2]
    centers = feature_cell_centers(image_hw, feat_hw, device=K.device, grid=grid)
    angles = pseudo_line_angles((B, T, T), seed, symmetric_last_two=True).to(K.device)
    lines = epipolar_lines(
        K[:, :, None], c2w[:, :, None], K[:, None, :], c2w[:, None, :], centers, angles, eps=eps
    )
    return _shift_key_grid(lines, grid)


def _prepare(K, c2w, image_hw, feat_hw, threshold, what):
    _check_clip_cameras(K, c2w, what)
    image_hw = _check_hw(image_hw, "image_hw")
    feat_hw = _check_hw(feat_hw, "feat_hw")
    if threshold is None:
        threshold = default_threshold(image_hw, feat_hw)
    return image_hw, feat_hw, _check_threshold(threshold, "threshold")


def _check_mode(mode: str) -> None:
    if mode not in ("all", "ref"):
        raise ValueError(f"mode must be 'all' (every key frame) or 'ref' (one reference frame), got {mode!r}")


def epipolar_mask(
    K: torch.Tensor,
    c2w: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    mode: str = "all",
    ref_index: int | torch.Tensor = 0,
    threshold: float | None = None,
    seed: int = 0,
    eps: float = COINCIDENT_EPS,
    grid: str = "camvid",
) -> torch.Tensor:
    """Epipolar attention mask (B, T, h*w, T, h*w): [query frame, query cell, key frame, key cell].

    ``K`` (B, T, 3, 3) pixel intrinsics of the ``image_hw`` frames, ``c2w`` (B, T, 4, 4).
    ``mode="all"``: every frame pair (CamI2V); a frame attends to itself along a pseudo line
    through each cell. ``mode="ref"``: only key frame ``ref_index`` (int or (B,) long) is kept
    (CamCo-like); other key frames are all False. ``threshold`` in image pixels, default half a
    cell diagonal. Rows may be empty (line outside the image): attention adds register tokens.
    ``grid``: feature-cell centres, "camvid" or "cami2v_release" (``GRIDS``).
    """
    _check_mode(mode)
    image_hw, feat_hw, threshold = _prepare(K, c2w, image_hw, feat_hw, threshold, "epipolar_mask")
    B, T = K.shape[:2]
    hw = feat_hw[0] * feat_hw[1]
    lines = _clip_lines(K, c2w, image_hw, feat_hw, seed, eps, grid)
    if mode == "all":  # every element is written
        out = torch.empty(B, T, hw, T, hw, dtype=torch.bool, device=K.device)
        for bi in range(B):
            _fill_dense(out[bi], lines[bi], image_hw, feat_hw, threshold)
    else:
        ref = _ref_indices(ref_index, B, T, K.device)
        out = torch.zeros(B, T, hw, T, hw, dtype=torch.bool, device=K.device)
        for bi in range(B):
            r = int(ref[bi])
            _fill_dense(out[bi, :, :, r : r + 1], lines[bi, :, r : r + 1], image_hw, feat_hw, threshold)
    return out


def epipolar_neighbors(
    K: torch.Tensor,
    c2w: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    mode: str = "all",
    ref_index: int | torch.Tensor = 0,
    threshold: float | None = None,
    seed: int = 0,
    max_keys: int | None = None,
    eps: float = COINCIDENT_EPS,
    grid: str = "camvid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse form of :func:`epipolar_mask`: ``(index, valid)``, both (B, T*h*w, Kmax).

    ``index`` holds, per query token ``i*h*w + q``, the key tokens ``j*h*w + k`` of the mask's True
    entries in ascending order; padding has ``valid=False`` and index 0. ``Kmax`` is the largest
    row count, or ``max_keys`` when given (ValueError if a row needs more). Built along each
    line's band, so it never forms the dense mask.
    """
    _check_mode(mode)
    runs = epipolar_runs(K, c2w, image_hw, feat_hw, mode=mode, ref_index=ref_index, threshold=threshold,
                         seed=seed, eps=eps, grid=grid)
    return runs.to_neighbors(max_keys)


def epipolar_runs(
    K: torch.Tensor,
    c2w: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    mode: str = "all",
    ref_index: int | torch.Tensor = 0,
    threshold: float | None = None,
    seed: int = 0,
    eps: float = COINCIDENT_EPS,
    grid: str = "camvid",
) -> EpipolarRuns:
    """Compact form of :func:`epipolar_mask` (same arguments): the row runs, never the dense mask.

    ``mode="all"``: runs over every key frame, ``start``/``end`` (B, T*h*w, T, h); ``mode="ref"``:
    over key frame ``ref_index`` only, (B, T*h*w, 1, h). ``.to_dense()`` equals ``epipolar_mask``,
    ``.to_neighbors(max_keys)`` equals ``epipolar_neighbors`` and ``.rows(q0, q1)`` expands a chunk of
    query tokens, all bit for bit (one set of runs underlies every form).
    """
    _check_mode(mode)
    image_hw, feat_hw, threshold = _prepare(K, c2w, image_hw, feat_hw, threshold, "epipolar_runs")
    B, T = K.shape[:2]
    with one_thread():  # small ops: one thread is faster on a busy host (see one_thread)
        lines = _clip_lines(K, c2w, image_hw, feat_hw, seed, eps, grid)
    if mode == "all":
        key_frames = torch.arange(T, device=K.device).expand(B, T, T)
    else:
        ref = _ref_indices(ref_index, B, T, K.device)
        lines = lines[torch.arange(B, device=K.device), :, ref].unsqueeze(2)
        key_frames = ref.view(B, 1, 1).expand(B, T, 1)
    start, end = _lines_to_runs(lines, image_hw, feat_hw, threshold)
    return EpipolarRuns(start, end, key_frames, feat_hw, T)


# --------------------------------------------------------------------------- cross-video (CVD)


def _cross_lines(K_a, c2w_a, K_b, c2w_b, image_hw, feat_hw, seed, eps, what, grid="camvid"):
    _check_clip_cameras(K_a, c2w_a, f"{what} (clip a)")
    _check_clip_cameras(K_b, c2w_b, f"{what} (clip b)")
    if K_a.shape != K_b.shape:
        raise ValueError(f"{what}: clip a cameras {tuple(K_a.shape)} and clip b cameras {tuple(K_b.shape)} "
                         "differ in shape")
    B, T = K_a.shape[:2]
    centers = feature_cell_centers(image_hw, feat_hw, device=K_a.device, grid=grid)
    angles = pseudo_line_angles((B, T), seed).to(K_a.device)
    lines = epipolar_lines(K_a, c2w_a, K_b, c2w_b, centers, angles, eps=eps).unsqueeze(2)  # (B, T, 1, hw, 3)
    return _shift_key_grid(lines, grid)


def band_mask_from_lines(
    lines: torch.Tensor, image_hw: tuple[int, int], feat_hw: tuple[int, int], threshold: float
) -> torch.Tensor:
    """Same-frame band mask (B, T, hw, hw) from per-frame lines (B, T, hw, 3) of query cells."""
    B, T, hw, _ = lines.shape
    out = torch.empty(B, T, hw, hw, dtype=torch.bool, device=lines.device)  # every element is written
    for bi in range(B):
        _fill_dense(out[bi].unsqueeze(2), lines[bi].unsqueeze(1), image_hw, feat_hw, threshold)
    return out


def band_neighbors_from_lines(
    lines: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    threshold: float,
    max_keys: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse form of :func:`band_mask_from_lines`: (B, T*hw, Kmax) indices into the T*hw key tokens."""
    B, T = lines.shape[:2]
    key_frames = torch.arange(T, device=lines.device).view(1, T, 1).expand(B, T, 1)
    return _sparse_from_lines(lines.unsqueeze(2), key_frames, image_hw, feat_hw, threshold, max_keys)


def cross_view_band_mask(
    K_a: torch.Tensor,
    c2w_a: torch.Tensor,
    K_b: torch.Tensor,
    c2w_b: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    tau: float = 3.0,
    seed: int = 0,
    eps: float = COINCIDENT_EPS,
    grid: str = "camvid",
) -> torch.Tensor:
    """CVD cross-view mask (B, T, h*w, h*w): frame t of clip a attends frame t of clip b.

    Keeps key cells whose centre lies within ``tau`` image pixels of the line (CVD measures
    distances in image pixels too, on its 256-pixel F grid). Coincident cameras (the shared first
    frame of a folded pair) get pseudo lines of random direction, one per (clip, frame).
    """
    image_hw = _check_hw(image_hw, "image_hw")
    feat_hw = _check_hw(feat_hw, "feat_hw")
    tau = _check_threshold(tau, "tau")
    lines = _cross_lines(K_a, c2w_a, K_b, c2w_b, image_hw, feat_hw, seed, eps, "cross_view_band_mask", grid)
    return band_mask_from_lines(lines.squeeze(2), image_hw, feat_hw, tau)


def cross_view_band_neighbors(
    K_a: torch.Tensor,
    c2w_a: torch.Tensor,
    K_b: torch.Tensor,
    c2w_b: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    tau: float = 3.0,
    seed: int = 0,
    max_keys: int | None = None,
    eps: float = COINCIDENT_EPS,
    grid: str = "camvid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse :func:`cross_view_band_mask`: (index, valid) of shape (B, T*h*w, Kmax).

    ``index`` points into clip b's ``T*h*w`` tokens (``t*h*w + k``), the layout of
    :func:`epipolar_neighbors`, so one sparse attention kernel serves both.
    """
    image_hw = _check_hw(image_hw, "image_hw")
    feat_hw = _check_hw(feat_hw, "feat_hw")
    tau = _check_threshold(tau, "tau")
    lines = _cross_lines(K_a, c2w_a, K_b, c2w_b, image_hw, feat_hw, seed, eps, "cross_view_band_neighbors", grid)
    return band_neighbors_from_lines(lines.squeeze(2), image_hw, feat_hw, tau, max_keys)


def cross_view_band_runs(
    K_a: torch.Tensor,
    c2w_a: torch.Tensor,
    K_b: torch.Tensor,
    c2w_b: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    tau: float = 3.0,
    seed: int = 0,
    eps: float = COINCIDENT_EPS,
    grid: str = "camvid",
) -> EpipolarRuns:
    """Row runs of :func:`cross_view_band_mask`: ``start``/``end`` (B, T*h*w, 1, h), key frame t for frame t.

    ``.rows(q0, q1)`` are rows of the band mask in token layout (B, T*h*w, h*w) (``mask.view``),
    ``.to_neighbors()`` equals :func:`cross_view_band_neighbors`, and ``.to_dense()`` places each
    frame's band in the diagonal block of a (B, T, h*w, T, h*w) mask.
    """
    image_hw = _check_hw(image_hw, "image_hw")
    feat_hw = _check_hw(feat_hw, "feat_hw")
    tau = _check_threshold(tau, "tau")
    with one_thread():
        lines = _cross_lines(K_a, c2w_a, K_b, c2w_b, image_hw, feat_hw, seed, eps, "cross_view_band_runs", grid)
    B, T = lines.shape[:2]
    start, end = _lines_to_runs(lines, image_hw, feat_hw, tau)
    key_frames = torch.arange(T, device=lines.device).view(1, T, 1).expand(B, T, 1)
    return EpipolarRuns(start, end, key_frames, feat_hw, T)


def cross_view_soft_bias(
    K_a: torch.Tensor,
    c2w_a: torch.Tensor,
    K_b: torch.Tensor,
    c2w_b: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    tau: float = 3.0,
    decay: float = 3.0,
    seed: int = 0,
    eps: float = COINCIDENT_EPS,
    grid: str = "camvid",
) -> torch.Tensor:
    """CVD's soft band: additive attention bias (B, T, h*w, h*w) float32, frame t of a onto frame t of b.

    With ``d`` the distance of a key cell centre from the query cell's line and ``d_max`` its
    largest value over the frame pair (all queries and keys), the band half-width is
    ``band = tau / (W // 2) * d_max`` and the bias is ``-max(d - band, 0) * decay / (band + 1e-6)``:
    zero inside the band, falling linearly outside (``-decay`` at one band width past its edge).
    This is the released CVD ``get_attn_map`` (``pixel_band=3``, ``decay_alpha=3``, distances on a
    grid of ``W`` pixels); the ratio ``d / band`` does not depend on the image scale.
    """
    image_hw = _check_hw(image_hw, "image_hw")
    feat_hw = _check_hw(feat_hw, "feat_hw")
    tau = _check_threshold(tau, "tau")
    decay = _check_threshold(decay, "decay")
    lines = _cross_lines(K_a, c2w_a, K_b, c2w_b, image_hw, feat_hw, seed, eps, "cross_view_soft_bias", grid)
    keys = feature_cell_centers(image_hw, feat_hw, device=lines.device)  # key grid folded into the lines
    a, b, c = lines.squeeze(2).unbind(-1)  # (B, T, hw)
    d = (a.unsqueeze(-1) * keys[:, 0] + b.unsqueeze(-1) * keys[:, 1] + c.unsqueeze(-1)).abs()  # (B, T, hw, hw)
    band = tau / (image_hw[1] // 2) * d.flatten(-2).amax(-1)[..., None, None]
    return (-(d - band).clamp(min=0) * (decay / (band + 1e-6))).float()


def neighbors_to_mask(index: torch.Tensor, valid: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Dense (B, Q, num_keys) bool mask from ``(index, valid)`` neighbour lists (a reference helper)."""
    if index.shape != valid.shape:
        raise ValueError(f"index {tuple(index.shape)} and valid {tuple(valid.shape)} differ in shape")
    out = torch.zeros(*index.shape[:-1], num_keys + 1, dtype=torch.bool, device=index.device)
    out.scatter_(-1, torch.where(valid, index, torch.full_like(index, num_keys)), True)
    return out[..., :num_keys]
