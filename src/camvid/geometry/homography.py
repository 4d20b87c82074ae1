"""Homographies for CVD's WebVid pairs: random sampling, point/image warping, pseudo lines.

A homography ``H`` (..., 3, 3) maps pixel coordinates of a source image to a destination image,
``x_dst ~ H x_src``, with pixel centres at +0.5 (docs/geometry.md). CVD composes
``H = H_t H_r H_s H_sh H_p`` (translation, rotation, scale, shear, projective; paper eq. 24) and
interpolates the parameters from zero at the first frame to a sampled value at the last. We draw
the parameters in coordinates centred on the image and scaled by its half-size, so ``strength``
means the same at every resolution; the standard deviations at ``strength=1`` are our choice
(the paper gives none): translation 0.1, rotation 0.1 rad, scale 0.1, shear 0.05, projective 0.05.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from camvid.geometry.epipolar import (
    _check_hw,
    _check_threshold,
    band_mask_from_lines,
    band_neighbors_from_lines,
    feature_cell_centers,
    pseudo_line_angles,
    pseudo_lines_through,
)

__all__ = [
    "HOMOGRAPHY_STDS",
    "homography_from_params",
    "random_homography_params",
    "random_homography",
    "random_homography_sequence",
    "warp_points",
    "warp_images",
    "homography_pseudo_lines",
    "homography_band_mask",
    "homography_band_neighbors",
]

# Standard deviations at strength 1 of (t0, t1, theta, s0, s1, sh0, sh1, p0, p1), normalised coordinates.
HOMOGRAPHY_STDS = (0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05)


def _normaliser(image_hw, dtype, device) -> torch.Tensor:
    """Pixel -> centred coordinates in units of the half-size: ``x_n = (x - W/2) / (W/2)``."""
    H, W = image_hw
    return torch.tensor(
        [[2.0 / W, 0.0, -1.0], [0.0, 2.0 / H, -1.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device
    )


def homography_from_params(params: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel-space homographies (..., 3, 3) from CVD parameters (..., 9) = (t0, t1, theta, s0, s1,
    sh0, sh1, p0, p1) in normalised coordinates; all zeros gives the identity."""
    image_hw = _check_hw(image_hw, "image_hw")
    if params.shape[-1] != 9:
        raise ValueError(f"homography params must end in 9 values (t, theta, s, sh, p), got {tuple(params.shape)}")
    t0, t1, th, s0, s1, sh0, sh1, p0, p1 = params.unbind(-1)
    one, zero = torch.ones_like(t0), torch.zeros_like(t0)

    def mat(*rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    Ht = mat((one, zero, t0), (zero, one, t1), (zero, zero, one))
    Hr = mat((torch.cos(th), -torch.sin(th), zero), (torch.sin(th), torch.cos(th), zero), (zero, zero, one))
    Hs = mat((1 + s0, zero, zero), (zero, 1 + s1, zero), (zero, zero, one))
    Hsh = mat((one, sh0, zero), (sh1, one, zero), (zero, zero, one))
    Hp = mat((one, zero, zero), (zero, one, zero), (p0, p1, one))
    Hn = Ht @ Hr @ Hs @ Hsh @ Hp
    N = _normaliser(image_hw, params.dtype, params.device)
    return torch.linalg.inv(N) @ Hn @ N


def random_homography_params(
    generator: torch.Generator, strength: float, *, shape: tuple[int, ...] = (), dtype=torch.float64
) -> torch.Tensor:
    """Normal CVD parameters (*shape, 9) with standard deviations ``strength * HOMOGRAPHY_STDS``."""
    strength = float(strength)
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"homography strength must be a finite number >= 0, got {strength!r}")
    stds = torch.tensor(HOMOGRAPHY_STDS, dtype=dtype)
    noise = torch.randn(*shape, 9, generator=generator, dtype=dtype)
    # Keep scales above -1 (a flip or collapse is not an augmentation) by clamping at 3 sigma.
    return (noise.clamp(-3.0, 3.0) * stds * strength).to(dtype)


def random_homography(
    generator: torch.Generator, strength: float, image_hw: tuple[int, int], *, dtype=torch.float64
) -> torch.Tensor:
    """One random pixel-space homography (3, 3) for an ``image_hw`` image."""
    return homography_from_params(random_homography_params(generator, strength, dtype=dtype), image_hw)


def random_homography_sequence(
    generator: torch.Generator, strength: float, image_hw: tuple[int, int], num_frames: int, *, dtype=torch.float64
) -> torch.Tensor:
    """(T, 3, 3) homographies whose parameters grow linearly from 0 (identity at frame 0) to a
    random draw at the last frame, as CVD deforms the cloned WebVid video."""
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    last = random_homography_params(generator, strength, dtype=dtype)
    ramp = torch.linspace(0.0, 1.0, int(num_frames), dtype=dtype) if num_frames > 1 else torch.ones(1, dtype=dtype)
    return homography_from_params(ramp[:, None] * last, image_hw)


def warp_points(H: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``H`` (..., 3, 3) to pixel ``points`` (..., N, 2) -> (..., N, 2)."""
    if H.shape[-2:] != (3, 3):
        raise ValueError(f"warp_points: H must have shape (..., 3, 3), got {tuple(H.shape)}")
    if points.shape[-1] != 2:
        raise ValueError(f"warp_points: points must have shape (..., N, 2), got {tuple(points.shape)}")
    ph = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1) @ H.to(points.dtype).transpose(-1, -2)
    return ph[..., :2] / ph[..., 2:]


def warp_images(
    images: torch.Tensor, H: torch.Tensor, *, mode: str = "bilinear", padding_mode: str = "zeros"
) -> torch.Tensor:
    """Warp an image batch (..., C, h, w) by homographies (..., 3, 3): ``out(H x) = image(x)``.

    Each output pixel centre ``y`` samples the input at ``H^-1 y`` with ``grid_sample``
    (``align_corners=False`` matches the +0.5 pixel-centre convention). Leading dims must match.
    """
    if images.dim() < 3:
        raise ValueError(f"warp_images: images must be (..., C, h, w), got {tuple(images.shape)}")
    if H.shape[-2:] != (3, 3) or H.shape[:-2] != images.shape[:-3]:
        raise ValueError(f"warp_images: H {tuple(H.shape)} must be (..., 3, 3) with the leading dims of "
                         f"images {tuple(images.shape)}")
    lead, (C, h, w) = images.shape[:-3], images.shape[-3:]
    flat = images.reshape(-1, C, h, w)
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    H_inv = torch.linalg.inv(H.reshape(-1, 3, 3).to(torch.float64))
    ys = torch.arange(h, dtype=torch.float64, device=images.device) + 0.5
    xs = torch.arange(w, dtype=torch.float64, device=images.device) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    dst = torch.stack([gx, gy], -1).reshape(1, h * w, 2)
    src = warp_points(H_inv, dst.expand(flat.shape[0], -1, -1))
    grid = torch.stack([src[..., 0] * (2.0 / w) - 1.0, src[..., 1] * (2.0 / h) - 1.0], -1)
    grid = grid.view(-1, h, w, 2).to(work)
    out = F.grid_sample(flat.to(work), grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return out.to(images.dtype).reshape(*lead, C, h, w)


def homography_pseudo_lines(H: torch.Tensor, points: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """CVD's pseudo-epipolar lines for homography pairs: random-direction lines through ``H x``.

    ``H`` (P..., 3, 3), ``points`` (N, 2) or (P..., N, 2) source pixels, ``angles`` (P...) line
    directions -> normalised lines (P..., N, 3) in float64.
    """
    H = H.to(torch.float64)
    points = points.to(torch.float64)
    ph = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1) @ H.transpose(-1, -2)
    return pseudo_lines_through(ph, angles.to(torch.float64))


def _homography_lines(H, image_hw, feat_hw, seed, what):
    if H.dim() != 4 or H.shape[-2:] != (3, 3):
        raise ValueError(f"{what}: homographies must have shape (B, T, 3, 3), got {tuple(H.shape)}")
    finite = torch.isfinite(H).flatten(-2).all(-1)
    det = torch.linalg.det(H.to(torch.float64))
    bad = ~finite | (det.abs() < 1e-12)
    if bad.any():
        b, t = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{what}: frame ({b}, {t}): homography is non-finite or singular")
    B, T = H.shape[:2]
    centers = feature_cell_centers(image_hw, feat_hw, device=H.device)
    angles = pseudo_line_angles((B, T), seed).to(H.device)
    return homography_pseudo_lines(H, centers, angles)  # (B, T, hw, 3)


def homography_band_mask(
    H: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    tau: float = 3.0,
    seed: int = 0,
) -> torch.Tensor:
    """Cross-view mask (B, T, h*w, h*w) for a homography pair: frame t of clip a attends frame t of
    clip b along a random-direction line through the warped cell centre ``H[b, t] x``."""
    image_hw = _check_hw(image_hw, "image_hw")
    feat_hw = _check_hw(feat_hw, "feat_hw")
    tau = _check_threshold(tau, "tau")
    lines = _homography_lines(H, image_hw, feat_hw, seed, "homography_band_mask")
    return band_mask_from_lines(lines, image_hw, feat_hw, tau)


def homography_band_neighbors(
    H: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    *,
    tau: float = 3.0,
    seed: int = 0,
    max_keys: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse :func:`homography_band_mask`: (index, valid) (B, T*h*w, Kmax) into clip b's tokens."""
    image_hw = _check_hw(image_hw, "image_hw")
    feat_hw = _check_hw(feat_hw, "feat_hw")
    tau = _check_threshold(tau, "tau")
    lines = _homography_lines(H, image_hw, feat_hw, seed, "homography_band_neighbors")
    return band_neighbors_from_lines(lines, image_hw, feat_hw, tau, max_keys)
