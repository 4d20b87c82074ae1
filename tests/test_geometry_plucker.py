"""Plücker rays against an independent per-pixel computation and against rendered depth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from camvid.geometry import plucker_rays, scale_intrinsics


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (math.cos, math.sin))
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def _random_cameras(rng: np.random.Generator, B: int, T: int, H: int, W: int):
    c2w = np.tile(np.eye(4), (B, T, 1, 1))
    K = np.zeros((B, T, 3, 3))
    for b in range(B):
        for t in range(T):
            c2w[b, t, :3, :3] = _rotation(*rng.uniform(-math.pi, math.pi, 3))
            c2w[b, t, :3, 3] = rng.normal(size=3)
            f = rng.uniform(0.6, 1.5) * W
            K[b, t] = [[f, rng.uniform(-2, 2), W / 2 + rng.uniform(-5, 5)],
                       [0, f * rng.uniform(0.9, 1.1), H / 2 + rng.uniform(-5, 5)], [0, 0, 1]]
    return torch.from_numpy(K), torch.from_numpy(c2w)


def _reference_ray(K: np.ndarray, c2w: np.ndarray, x: float, y: float) -> np.ndarray:
    d = c2w[:3, :3] @ np.linalg.solve(K, np.array([x, y, 1.0]))
    d = d / np.linalg.norm(d)
    o = c2w[:3, 3]
    return np.concatenate([np.cross(o, d), d])


def test_plucker_matches_per_pixel_reference():
    rng = np.random.default_rng(0)
    H, W = 12, 20
    K, c2w = _random_cameras(rng, 2, 3, H, W)
    rays = plucker_rays(K, c2w, H, W)
    assert rays.shape == (2, 3, 6, H, W) and rays.dtype == torch.float64
    for b, t, v, u in [(0, 0, 0, 0), (1, 2, H - 1, W - 1), (0, 1, 5, 7), (1, 0, 11, 3), (1, 1, 2, 19)]:
        ref = _reference_ray(K[b, t].numpy(), c2w[b, t].numpy(), u + 0.5, v + 0.5)
        np.testing.assert_allclose(rays[b, t, :, v, u].numpy(), ref, atol=1e-12)
    # Moment first, unit directions, and the moment is orthogonal to the direction.
    d, m = rays[:, :, 3:], rays[:, :, :3]
    torch.testing.assert_close(d.norm(dim=2), torch.ones(2, 3, H, W, dtype=torch.float64))
    assert (m * d).sum(2).abs().max() < 1e-12


def test_plucker_float32_and_unbatched():
    rng = np.random.default_rng(1)
    K, c2w = _random_cameras(rng, 1, 2, 8, 8)
    out32 = plucker_rays(K[0].float(), c2w[0].float(), 8, 8)
    out64 = plucker_rays(K[0], c2w[0], 8, 8)
    assert out32.dtype == torch.float32 and out32.shape == (2, 6, 8, 8)
    torch.testing.assert_close(out32.double(), out64, atol=1e-5, rtol=1e-5)


def test_scaled_intrinsics_give_rays_through_feature_cell_centres():
    rng = np.random.default_rng(2)
    H, W, h, w = 64, 96, 8, 12
    K, c2w = _random_cameras(rng, 1, 1, H, W)
    rays = plucker_rays(scale_intrinsics(K, (H, W), (h, w)), c2w, h, w)
    for r, c in [(0, 0), (7, 11), (3, 5)]:
        x, y = (c + 0.5) * W / w, (r + 0.5) * H / h
        ref = _reference_ray(K[0, 0].numpy(), c2w[0, 0].numpy(), x, y)
        np.testing.assert_allclose(rays[0, 0, :, r, c].numpy(), ref, atol=1e-12)


def test_plucker_rejects_bad_cameras():
    K = torch.eye(3, dtype=torch.float64).repeat(1, 3, 1, 1)
    c2w = torch.eye(4, dtype=torch.float64).repeat(1, 3, 1, 1)
    bad = K.clone()
    bad[0, 2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"frame \(0, 2\).*non-finite intrinsics"):
        plucker_rays(bad, c2w, 4, 4)
    bad = K.clone()
    bad[0, 1, 0, 0] = 0.0
    with pytest.raises(ValueError, match=r"frame \(0, 1\).*singular"):
        plucker_rays(bad, c2w, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        plucker_rays(K[..., :2], c2w, 4, 4)
    with pytest.raises(ValueError, match="positive"):
        plucker_rays(K, c2w, 0, 4)


def test_rays_hit_the_points_depth_says_they_hit():
    """Walk each pixel's ray to its rendered z-depth, project into another frame: the other
    frame's render must see that same surface point there (for pixels visible in both)."""
    synthetic = pytest.importorskip("camvid.data.synthetic")
    H = W = 64
    scene = synthetic.make_scene(3)
    c2w = synthetic.make_trajectory("mixed", 3, seed=3)
    K = synthetic.default_intrinsics(H, W)
    _, depth = synthetic.render_frames(scene, K, c2w, H, W)
    rays = plucker_rays(torch.from_numpy(K).expand(3, 3, 3), torch.from_numpy(c2w), H, W)
    for i, j in [(0, 2), (2, 0), (1, 2)]:
        d = rays[i, 3:].permute(1, 2, 0).reshape(-1, 3).numpy()
        m = rays[i, :3].permute(1, 2, 0).reshape(-1, 3).numpy()
        o = c2w[i, :3, 3]
        # The camera centre lies on every ray: o x d equals the moment.
        np.testing.assert_allclose(np.cross(o, d), m, atol=1e-12)
        z_axis = c2w[i, :3, 2]
        s = depth[i].reshape(-1).astype(np.float64) / (d @ z_axis)  # distance along the ray
        X = o + s[:, None] * d
        Xc = (X - c2w[j, :3, 3]) @ c2w[j, :3, :3]
        uvw = Xc @ K.T
        u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
        ok = (Xc[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        ui, vi = np.floor(u[ok]).astype(int), np.floor(v[ok]).astype(int)
        z_seen = depth[j][vi, ui]
        rel = np.abs(z_seen - Xc[ok, 2]) / Xc[ok, 2]
        assert ok.sum() > 0.3 * H * W
        # Nearest-pixel lookup: exact up to the depth change within one pixel, except at
        # occlusion boundaries, which are a small fraction of the image.
        assert np.mean(rel < 0.03) > 0.9, np.mean(rel < 0.03)
