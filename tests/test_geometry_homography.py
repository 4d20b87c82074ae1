"""Homography sampling, point and image warping, and pseudo-epipolar bands for homography pairs."""

from __future__ import annotations

import pytest
import torch

from camvid.geometry import (
    default_threshold,
    feature_cell_centers,
    homography_band_mask,
    homography_band_neighbors,
    homography_from_params,
    homography_pseudo_lines,
    neighbors_to_mask,
    random_homography,
    random_homography_sequence,
    warp_images,
    warp_points,
)

F64 = torch.float64


def test_params_compose_cvd_matrices_about_the_image_centre():
    assert torch.allclose(homography_from_params(torch.zeros(9, dtype=F64), (32, 48)), torch.eye(3, dtype=F64))
    # A pure rotation by 90 degrees about the image centre keeps the centre fixed.
    params = torch.zeros(9, dtype=F64)
    params[2] = torch.pi / 2
    H = homography_from_params(params, (40, 40))
    centre = torch.tensor([[20.0, 20.0]], dtype=F64)
    torch.testing.assert_close(warp_points(H, centre), centre)
    torch.testing.assert_close(warp_points(H, torch.tensor([[30.0, 20.0]], dtype=F64)),
                               torch.tensor([[20.0, 30.0]], dtype=F64))


def test_random_homographies_are_seeded_and_scaled_by_strength():
    H1 = random_homography(torch.Generator().manual_seed(0), 1.0, (64, 64))
    H2 = random_homography(torch.Generator().manual_seed(0), 1.0, (64, 64))
    H3 = random_homography(torch.Generator().manual_seed(1), 1.0, (64, 64))
    assert torch.equal(H1, H2) and not torch.equal(H1, H3)
    assert torch.allclose(random_homography(torch.Generator().manual_seed(0), 0.0, (64, 64)), torch.eye(3, dtype=F64))
    seq = random_homography_sequence(torch.Generator().manual_seed(2), 1.0, (64, 64), 16)
    assert seq.shape == (16, 3, 3)
    torch.testing.assert_close(seq[0], torch.eye(3, dtype=F64))
    # Deformation grows along the clip.
    corners = torch.tensor([[0.0, 0.0], [64.0, 0.0], [0.0, 64.0], [64.0, 64.0]], dtype=F64)
    moved = (warp_points(seq, corners.expand(16, 4, 2)) - corners).norm(dim=-1).mean(-1)
    assert moved[1] < moved[8] < moved[15] and moved[15] > 0.5
    with pytest.raises(ValueError, match="strength"):
        random_homography(torch.Generator(), -1.0, (64, 64))
    with pytest.raises(ValueError, match="num_frames"):
        random_homography_sequence(torch.Generator(), 1.0, (64, 64), 0)


def test_warp_images_moves_content_to_warped_points():
    h, w = 24, 32
    ys, xs = torch.meshgrid(torch.arange(h, dtype=F64) + 0.5, torch.arange(w, dtype=F64) + 0.5, indexing="ij")
    # A linear image is reproduced exactly by bilinear sampling wherever the source lies inside.
    image = torch.stack([2.0 * xs + 0.5 * ys, xs - 3.0 * ys])[None]  # (1, 2, h, w)
    H = random_homography(torch.Generator().manual_seed(3), 0.5, (h, w))
    out = warp_images(image, H[None])
    dst = torch.stack([xs, ys], -1).reshape(-1, 2)
    src = warp_points(torch.linalg.inv(H), dst)
    expected = torch.stack([2.0 * src[:, 0] + 0.5 * src[:, 1], src[:, 0] - 3.0 * src[:, 1]])
    inside = (src[:, 0] > 0.5) & (src[:, 0] < w - 0.5) & (src[:, 1] > 0.5) & (src[:, 1] < h - 0.5)
    assert inside.sum() > 0.5 * h * w
    torch.testing.assert_close(out[0].reshape(2, -1)[:, inside], expected[:, inside], atol=1e-9, rtol=0)
    # Integer translation shifts pixels exactly; batched leading dims and float32 work.
    shift = torch.tensor([[1.0, 0, 3], [0, 1, 2], [0, 0, 1]], dtype=F64)
    img32 = torch.rand(2, 3, 1, h, w)
    moved = warp_images(img32, shift.expand(2, 3, 3, 3))
    assert moved.dtype == torch.float32 and moved.shape == img32.shape
    torch.testing.assert_close(moved[..., 2:, 3:], img32[..., :-2, :-3])
    assert moved[..., :2, :].abs().max() < 1e-5  # sampled from outside: zero padding
    with pytest.raises(ValueError, match="leading dims"):
        warp_images(img32, shift)


def test_pseudo_lines_pass_through_warped_points_and_bands_are_exact():
    B, T, hw_img = 2, 3, (64, 64)
    gen = torch.Generator().manual_seed(4)
    H = torch.stack([random_homography_sequence(gen, 1.0, hw_img, T) for _ in range(B)])
    centers = feature_cell_centers(hw_img, (8, 8))
    angles = torch.rand(B, T, generator=gen, dtype=F64) * torch.pi
    lines = homography_pseudo_lines(H, centers, angles)
    warped = warp_points(H, centers.expand(B, T, 64, 2))
    dist = (lines[..., 0] * warped[..., 0] + lines[..., 1] * warped[..., 1] + lines[..., 2]).abs()
    assert dist.max() < 1e-9
    for feat_hw, tau in [((8, 8), 3.0), ((16, 16), 3.0), ((8, 8), default_threshold(hw_img, (8, 8)))]:
        dense = homography_band_mask(H, hw_img, feat_hw, tau=tau, seed=2)
        index, valid = homography_band_neighbors(H, hw_img, feat_hw, tau=tau, seed=2)
        hw = feat_hw[0] * feat_hw[1]
        rebuilt = neighbors_to_mask(index, valid, T * hw).view(B, T, hw, T, hw)
        assert torch.equal(torch.stack([rebuilt[:, t, :, t] for t in range(T)], 1), dense)
    # With a half-diagonal band, the cell that holds the warped centre is always kept.
    tau = default_threshold(hw_img, (8, 8))
    dense = homography_band_mask(H, hw_img, (8, 8), tau=tau)
    w_pts = warp_points(H, feature_cell_centers(hw_img, (8, 8)).expand(B, T, 64, 2))
    inside = (w_pts >= 0).all(-1) & (w_pts[..., 0] < 64) & (w_pts[..., 1] < 64)
    key = (w_pts[..., 1] // 8).clamp(0, 7).long() * 8 + (w_pts[..., 0] // 8).clamp(0, 7).long()
    kept = dense.gather(-1, key.unsqueeze(-1)).squeeze(-1)
    assert kept[inside].all() and inside.sum() > 0.5 * inside.numel()


def test_bad_homographies_raise():
    H = torch.eye(3, dtype=F64).repeat(2, 3, 1, 1)
    bad = H.clone()
    bad[1, 2] = 0
    with pytest.raises(ValueError, match=r"frame \(1, 2\): homography is non-finite or singular"):
        homography_band_mask(bad, (32, 32), (4, 4))
    with pytest.raises(ValueError, match=r"\(B, T, 3, 3\)"):
        homography_band_neighbors(H[0], (32, 32), (4, 4))
    with pytest.raises(ValueError, match="tau"):
        homography_band_mask(H, (32, 32), (4, 4), tau=0.0)
