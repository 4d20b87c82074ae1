"""Fundamental matrices, epipolar lines and masks against analytic truth; sparse == dense exactly."""

from __future__ import annotations

import math

import pytest
import torch

from camvid.geometry import (
    cross_view_band_mask,
    cross_view_band_neighbors,
    default_threshold,
    epipolar_lines,
    epipolar_mask,
    epipolar_neighbors,
    feature_cell_centers,
    fundamental_between,
    fundamental_matrices,
    neighbors_to_mask,
    pseudo_line_angles,
)
from conftest import random_intrinsics

F64 = torch.float64


def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=gen, dtype=F64)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], -1).view(n, 3, 3)


def random_cameras(B: int, T: int, image_hw=(64, 64), seed: int = 0, spread: float = 0.3):
    """Cameras near a common look direction (so lines cross the images) with random K."""
    gen = torch.Generator().manual_seed(seed)
    H, W = image_hw
    base = random_rotations(B, gen)
    wiggle = random_rotations(B * T, gen)
    # Shrink the random wiggle towards identity via a small-angle blend re-orthonormalised by QR.
    eye = torch.eye(3, dtype=F64)
    blend = eye + spread * (wiggle - eye)
    q, r = torch.linalg.qr(blend)
    wiggle = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    c2w = torch.eye(4, dtype=F64).repeat(B, T, 1, 1)
    c2w[..., :3, :3] = base.unsqueeze(1) @ wiggle.view(B, T, 3, 3)
    c2w[..., :3, 3] = torch.randn(B, T, 3, generator=gen, dtype=F64) * 0.5
    return random_intrinsics(B, T, (H, W), gen), c2w


def project(K, c2w, X):
    """World points X (..., N, 3) -> pixels (..., N, 2) and camera z."""
    Xc = (X - c2w[..., None, :3, 3]) @ c2w[..., :3, :3]
    uvw = Xc @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:], Xc[..., 2]


def test_fundamental_matrices_satisfy_epipolar_constraint():
    K, c2w = random_cameras(2, 4, seed=1, spread=1.0)
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(2, 1, 50, 3, generator=gen, dtype=F64) * 3
    x, _ = project(K, c2w, X)  # (2, T, 50, 2), points may be anywhere on the projective plane
    xh = torch.cat([x, torch.ones_like(x[..., :1])], -1)
    xh = xh / xh.norm(dim=-1, keepdim=True)
    F = fundamental_matrices(K, c2w)
    assert F.shape == (2, 4, 4, 3, 3)
    Fn = F / F.flatten(-2).norm(dim=-1).clamp_min(1e-300)[..., None, None]
    for i in range(4):
        for j in range(4):
            resid = torch.einsum("bnk,bkl,bnl->bn", xh[:, j], Fn[:, i, j], xh[:, i])
            assert resid.abs().max() < 1e-10, (i, j)
    # Same frame: the cameras coincide and F is exactly zero.
    assert torch.all(F[:, torch.arange(4), torch.arange(4)] == 0)


def test_fundamental_matches_cami2v_relative_pose_formula():
    """CamI2V forms inv(c2w_j) @ c2w_i, E = [t]x R, F = K^-T E K^-1: same matrix as ours."""
    K, c2w = random_cameras(1, 3, seed=2)
    F = fundamental_matrices(K, c2w)
    for i in range(3):
        for j in range(3):
            rel = torch.linalg.inv(c2w[0, j]) @ c2w[0, i]
            R, t = rel[:3, :3], rel[:3, 3]
            tx = torch.tensor([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]], dtype=F64)
            ref = torch.linalg.inv(K[0, j]).T @ tx @ R @ torch.linalg.inv(K[0, i])
            torch.testing.assert_close(F[0, i, j], ref, atol=1e-12, rtol=1e-9)


def test_fundamental_between_pairs_corresponding_frames():
    K, c2w = random_cameras(2, 6, seed=3)
    Fb = fundamental_between(K[:, :3], c2w[:, :3], K[:, 3:], c2w[:, 3:])
    Fall = fundamental_matrices(K, c2w)
    assert Fb.shape == (2, 3, 3, 3)
    for t in range(3):
        torch.testing.assert_close(Fb[:, t], Fall[:, t, t + 3])


def _distance(lines, pts):
    return (lines[..., 0] * pts[..., 0] + lines[..., 1] * pts[..., 1] + lines[..., 2]).abs()


def test_lines_pass_through_true_matches_and_are_normalised():
    K, c2w = random_cameras(1, 2, seed=4)
    gen = torch.Generator().manual_seed(0)
    # Points in front of camera 0.
    cam0 = torch.cat([torch.rand(30, 2, generator=gen, dtype=F64) * 2 - 1, torch.ones(30, 1, dtype=F64)], -1)
    X = (cam0 * (1 + 4 * torch.rand(30, 1, generator=gen, dtype=F64))) @ c2w[0, 0, :3, :3].T + c2w[0, 0, :3, 3]
    x0, _ = project(K[0, 0], c2w[0, 0], X)
    x1, _ = project(K[0, 1], c2w[0, 1], X)
    lines = epipolar_lines(K[0, 0], c2w[0, 0], K[0, 1], c2w[0, 1], x0, torch.tensor(0.3, dtype=F64))
    torch.testing.assert_close(lines[:, :2].norm(dim=-1), torch.ones(30, dtype=F64))
    assert _distance(lines, x1).max() < 1e-8


def test_coincident_cameras_give_seeded_lines_through_the_pixel():
    K, c2w = random_cameras(2, 3, seed=5)
    c2w[:, 2] = c2w[:, 0]  # frame 2 repeats frame 0 exactly
    K[:, 2] = K[:, 0]
    centers = feature_cell_centers((64, 64), (8, 8))
    angles = pseudo_line_angles((2,), seed=3)
    lines = epipolar_lines(K[:, 0], c2w[:, 0], K[:, 2], c2w[:, 2], centers, angles)
    assert torch.isfinite(lines).all()
    assert _distance(lines, centers).max() < 1e-9  # through the pixel itself
    # Direction = the seeded angle, shared by all cells: normal (cos, sin).
    torch.testing.assert_close(lines[..., 0], torch.cos(angles)[:, None].expand(2, 64))
    # Deterministic for a seed, different across seeds.
    assert torch.equal(pseudo_line_angles((2, 3, 3), 7), pseudo_line_angles((2, 3, 3), 7))
    assert not torch.equal(pseudo_line_angles((2, 3, 3), 7), pseudo_line_angles((2, 3, 3), 8))
    sym = pseudo_line_angles((2, 3, 3), 7, symmetric_last_two=True)
    assert torch.equal(sym, sym.transpose(-1, -2))
    # Masks: the same-frame block keeps each query cell itself, and so do identical frames.
    m = epipolar_mask(K, c2w, (64, 64), (8, 8), seed=11)
    eye = torch.eye(64, dtype=torch.bool)
    for i in range(3):
        assert (m[:, i, :, i] & eye).sum() == 2 * 64
    assert (m[:, 0, :, 2] & eye).sum() == 2 * 64
    assert torch.equal(m, epipolar_mask(K, c2w, (64, 64), (8, 8), seed=11))
    assert not torch.equal(m, epipolar_mask(K, c2w, (64, 64), (8, 8), seed=12))


def test_pure_rotation_pseudo_line_passes_through_rotated_pixel():
    K, c2w = random_cameras(1, 2, seed=6)
    c2w[0, 1, :3, 3] = c2w[0, 0, :3, 3]
    centers = feature_cell_centers((64, 64), (4, 4))
    lines = epipolar_lines(K[0, 0], c2w[0, 0], K[0, 1], c2w[0, 1], centers, torch.tensor(1.0, dtype=F64))
    # Any depth along the ray lands on the same pixel of camera 1: the match is known exactly.
    ray = torch.cat([centers, torch.ones(16, 1, dtype=F64)], -1) @ torch.linalg.inv(K[0, 0]).T
    X = (ray * 2.0) @ c2w[0, 0, :3, :3].T + c2w[0, 0, :3, 3]
    x1, z1 = project(K[0, 1], c2w[0, 1], X)
    keep = z1 > 0
    assert _distance(lines[keep], x1[keep]).max() < 1e-8


def test_query_on_the_epipole_gets_a_line_through_the_epipole():
    K = torch.tensor([[50.0, 0, 24], [0, 50, 24], [0, 0, 1]], dtype=F64).expand(1, 2, 3, 3).clone()
    c2w = torch.eye(4, dtype=F64).repeat(1, 2, 1, 1)
    c2w[0, 1, 2, 3] = 1.0  # dolly forward: both epipoles at the principal point (24, 24)
    pts = torch.tensor([[24.0, 24.0], [40.0, 24.0]], dtype=F64)
    lines = epipolar_lines(K[0, 0], c2w[0, 0], K[0, 1], c2w[0, 1], pts, torch.tensor(0.7, dtype=F64))
    assert torch.isfinite(lines).all()
    assert _distance(lines, torch.tensor([[24.0, 24.0]], dtype=F64)).max() < 1e-9
    # The centre cell of a 3x3 grid sits on the epipole: its match is the epipole itself.
    mask = epipolar_mask(K, c2w, (48, 48), (3, 3))
    assert mask[0, 0, 4, 1, 4] and mask[0, 1, 4, 0, 4]


@pytest.mark.parametrize("feat_hw", [(8, 8), (4, 4), (6, 10), (16, 16)])
@pytest.mark.parametrize("mode", ["all", "ref"])
def test_sparse_neighbors_equal_dense_mask(feat_hw, mode):
    B, T = 2, 4
    K, c2w = random_cameras(B, T, image_hw=(48, 80), seed=hash(feat_hw) % 1000, spread=0.8)
    c2w[1, 3] = c2w[1, 1]  # a coincident pair
    ref = torch.tensor([0, 3])
    for threshold in (None, 2.5):
        kw = dict(mode=mode, ref_index=ref, threshold=threshold, seed=4)
        dense = epipolar_mask(K, c2w, (48, 80), feat_hw, **kw)
        index, valid = epipolar_neighbors(K, c2w, (48, 80), feat_hw, **kw)
        hw = feat_hw[0] * feat_hw[1]
        assert dense.shape == (B, T, hw, T, hw)
        assert index.shape == valid.shape and index.shape[:2] == (B, T * hw)
        assert index.dtype == torch.long and valid.dtype == torch.bool
        assert valid.sum(-1).max() == index.shape[-1]  # Kmax is tight
        rebuilt = neighbors_to_mask(index, valid, T * hw).view(B, T, hw, T, hw)
        assert torch.equal(rebuilt, dense)
        if mode == "ref":
            for b in range(B):
                others = [j for j in range(T) if j != int(ref[b])]
                assert not dense[b][:, :, others].any()


def test_cross_view_band_sparse_equals_dense_and_shares_first_frame():
    B, T = 2, 3
    Ka, ca = random_cameras(B, T, seed=8)
    Kb, cb = random_cameras(B, T, seed=9)
    Kb[:, 0], cb[:, 0] = Ka[:, 0], ca[:, 0]  # folded pair: shared first frame
    for feat_hw, tau in [((8, 8), 3.0), ((16, 16), 3.0), ((8, 12), 6.0)]:
        dense = cross_view_band_mask(Ka, ca, Kb, cb, (64, 64), feat_hw, tau=tau, seed=1)
        hw = feat_hw[0] * feat_hw[1]
        assert dense.shape == (B, T, hw, hw)
        index, valid = cross_view_band_neighbors(Ka, ca, Kb, cb, (64, 64), feat_hw, tau=tau, seed=1)
        rebuilt = neighbors_to_mask(index, valid, T * hw).view(B, T, hw, T, hw)
        assert torch.equal(torch.stack([rebuilt[:, t, :, t] for t in range(T)], 1), dense)
        assert rebuilt.sum() == dense.sum()  # nothing outside the same-frame blocks
    # Coincident first frame: a band through each cell centre, which always keeps the cell itself.
    dense = cross_view_band_mask(Ka, ca, Kb, cb, (64, 64), (8, 8), tau=3.0)
    assert dense[:, 0].diagonal(dim1=-2, dim2=-1).all()


def test_max_keys_pads_or_refuses():
    K, c2w = random_cameras(1, 3, seed=10)
    index, valid = epipolar_neighbors(K, c2w, (64, 64), (8, 8))
    kmax = index.shape[-1]
    padded, pvalid = epipolar_neighbors(K, c2w, (64, 64), (8, 8), max_keys=kmax + 5)
    assert padded.shape[-1] == kmax + 5
    assert torch.equal(padded[..., :kmax], index) and not pvalid[..., kmax:].any()
    with pytest.raises(ValueError, match="max_keys"):
        epipolar_neighbors(K, c2w, (64, 64), (8, 8), max_keys=kmax - 1)


def test_masks_are_finite_for_awkward_valid_cameras():
    """Cameras facing away from each other, huge and tiny baselines, float32 input."""
    K, c2w = random_cameras(2, 5, seed=12, spread=1.0)
    c2w[0, 1, :3, 3] = c2w[0, 0, :3, 3] + 1e-9  # below eps: coincident
    c2w[0, 2, :3, 3] = c2w[0, 0, :3, 3] + 1e-4  # tiny but real baseline
    c2w[1, 3, :3, 3] *= 1e4
    centers = feature_cell_centers((64, 64), (8, 8))
    angles = pseudo_line_angles((2, 5, 5), 0)
    lines = epipolar_lines(K[:, :, None], c2w[:, :, None], K[:, None], c2w[:, None], centers, angles)
    assert torch.isfinite(lines).all()
    m32 = epipolar_mask(K.float(), c2w.float(), (64, 64), (8, 8))
    m64 = epipolar_mask(K, c2w, (64, 64), (8, 8))
    # float32 rounding moves a few borderline cells only.
    assert (m32 ^ m64).float().mean() < 0.01


def test_default_threshold_is_half_cell_diagonal():
    assert default_threshold((256, 256), (32, 32)) == pytest.approx(4 * math.sqrt(2))
    assert default_threshold((320, 512), (40, 64)) == pytest.approx(0.5 * math.hypot(8, 8))
    c = feature_cell_centers((256, 128), (4, 2))
    assert c[0].tolist() == [32.0, 32.0] and c[-1].tolist() == [96.0, 224.0]


def test_bad_input_raises_naming_frame_and_problem():
    K, c2w = random_cameras(2, 3, seed=13)
    bad = K.clone()
    bad[1, 2, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"epipolar_mask: frame \(1, 2\): non-finite intrinsics"):
        epipolar_mask(bad, c2w, (64, 64), (8, 8))
    bad = c2w.clone()
    bad[0, 1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"frame \(0, 1\): non-finite pose"):
        epipolar_neighbors(K, bad, (64, 64), (8, 8))
    bad = K.clone()
    bad[1, 0, 0, 0] = 0
    with pytest.raises(ValueError, match=r"frame \(1, 0\): singular"):
        epipolar_mask(bad, c2w, (64, 64), (8, 8))
    bad = c2w.clone()
    bad[0, 2, :3, :3] *= 2
    with pytest.raises(ValueError, match=r"frame \(0, 2\): pose rotation is not orthonormal"):
        epipolar_mask(K, bad, (64, 64), (8, 8))
    with pytest.raises(ValueError, match=r"\(B, T, 3, 3\)"):
        epipolar_mask(K[0], c2w[0], (64, 64), (8, 8))
    with pytest.raises(ValueError, match="disagree"):
        epipolar_mask(K[:, :2], c2w, (64, 64), (8, 8))
    with pytest.raises(ValueError, match="mode"):
        epipolar_mask(K, c2w, (64, 64), (8, 8), mode="diagonal")
    with pytest.raises(ValueError, match="ref_index 3 of clip 1"):
        epipolar_mask(K, c2w, (64, 64), (8, 8), mode="ref", ref_index=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="threshold"):
        epipolar_mask(K, c2w, (64, 64), (8, 8), threshold=-1.0)
    with pytest.raises(ValueError, match="feat_hw"):
        epipolar_mask(K, c2w, (64, 64), (0, 8))
    with pytest.raises(ValueError, match="clip b"):
        cross_view_band_mask(K, c2w, K, bad, (64, 64), (8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        cross_view_band_neighbors(K, c2w, K[:, :2], c2w[:, :2], (64, 64), (8, 8))
