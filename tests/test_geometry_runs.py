"""``epipolar_runs``: the compact run form equals the dense mask and the neighbour lists bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from camvid.geometry import (
    EpipolarRuns,
    cross_view_band_mask,
    cross_view_band_neighbors,
    cross_view_band_runs,
    epipolar_mask,
    epipolar_neighbors,
    epipolar_runs,
)
from conftest import random_intrinsics

F64 = torch.float64


def random_cameras(B: int, T: int, image_hw, seed: int, coincident: bool = False):
    """Cameras looking roughly the same way with random K; ``coincident`` repeats frame 0's centre."""
    gen = torch.Generator().manual_seed(seed)
    H, W = image_hw
    c2w = torch.eye(4, dtype=F64).repeat(B, T, 1, 1)
    angles = (torch.rand(B, T, 3, generator=gen, dtype=F64) - 0.5) * 0.6
    for b in range(B):
        for t in range(T):
            rx, ry, rz = angles[b, t].tolist()
            Rx = torch.tensor([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]], dtype=F64)
            Ry = torch.tensor([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]], dtype=F64)
            Rz = torch.tensor([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]], dtype=F64)
            c2w[b, t, :3, :3] = Rz @ Ry @ Rx
    c2w[..., :3, 3] = torch.randn(B, T, 3, generator=gen, dtype=F64) * 0.5
    if coincident:  # frame 1 shares frame 0's centre (pure rotation), the last frame repeats frame 0
        c2w[:, 1, :3, 3] = c2w[:, 0, :3, 3]
        c2w[:, -1] = c2w[:, 0]
    return random_intrinsics(B, T, (H, W), gen), c2w


CASES = [
    # (image_hw, feat_hw, T, coincident, seed)
    ((64, 64), (8, 8), 3, False, 0),
    ((48, 80), (6, 10), 4, False, 1),  # non-square grid
    ((64, 64), (8, 8), 4, True, 2),  # pure rotation and identical cameras
    ((40, 72), (5, 9), 3, True, 3),
]


@pytest.mark.parametrize("mode", ["all", "ref"])
@pytest.mark.parametrize("image_hw, feat_hw, T, coincident, seed", CASES)
def test_runs_equal_dense_mask_and_neighbors(mode, image_hw, feat_hw, T, coincident, seed):
    B = 2
    K, c2w = random_cameras(B, T, image_hw, seed, coincident)
    ref = torch.tensor([1, T - 1])
    kw = dict(mode=mode, ref_index=ref, seed=seed)
    runs = epipolar_runs(K, c2w, image_hw, feat_hw, **kw)
    dense = epipolar_mask(K, c2w, image_hw, feat_hw, **kw)
    h, w = feat_hw
    hw = h * w
    S = T if mode == "all" else 1
    assert isinstance(runs, EpipolarRuns)
    assert runs.start.shape == runs.end.shape == (B, T * hw, S, h)
    assert runs.start.element_size() <= 2 and runs.end.dtype == runs.start.dtype
    assert bool((runs.end >= runs.start).all()) and int(runs.end.max()) <= w
    assert torch.equal(runs.to_dense(), dense)
    assert dense.any() and not dense.all()  # the comparison is not vacuous

    index, valid = epipolar_neighbors(K, c2w, image_hw, feat_hw, **kw)
    r_index, r_valid = runs.to_neighbors()
    assert torch.equal(r_index, index) and torch.equal(r_valid, valid)
    padded = runs.to_neighbors(max_keys=index.shape[-1] + 3)
    assert torch.equal(padded[0][..., : index.shape[-1]], index) and not padded[1][..., index.shape[-1]:].any()

    # rows: the token-layout mask over the runs' own key frames, for any chunk of queries
    if mode == "all":
        tokens = dense.view(B, T * hw, T * hw)
    else:
        tokens = dense[torch.arange(B), :, :, ref].reshape(B, T * hw, hw)
    for q0, q1 in [(0, T * hw), (0, 1), (hw - 3, 2 * hw + 5), (T * hw - 7, T * hw), (5, 5)]:
        assert torch.equal(runs.rows(q0, q1), tokens[:, q0:q1])


def test_runs_reject_bad_ranges_and_max_keys():
    K, c2w = random_cameras(1, 2, (32, 32), 4)
    runs = epipolar_runs(K, c2w, (32, 32), (4, 4))
    with pytest.raises(ValueError, match="query range"):
        runs.rows(3, 40)
    with pytest.raises(ValueError, match="max_keys"):
        runs.to_neighbors(max_keys=0)
    with pytest.raises(ValueError, match="mode"):
        epipolar_runs(K, c2w, (32, 32), (4, 4), mode="some")


def test_runs_are_much_smaller_than_the_dense_mask():
    K, c2w = random_cameras(1, 4, (128, 128), 5)
    runs = epipolar_runs(K, c2w, (128, 128), (16, 16))
    dense_bytes = (4 * 256) ** 2
    run_bytes = runs.start.numel() * runs.start.element_size() * 2
    assert run_bytes * 8 == dense_bytes  # 2 bytes per (query, key frame, row) instead of w = 16


@pytest.mark.parametrize("image_hw, feat_hw, tau", [((64, 64), (8, 8), 3.0), ((48, 80), (6, 10), 5.0)])
def test_cross_view_band_runs_equal_band_mask_and_neighbors(image_hw, feat_hw, tau):
    B, T = 2, 3
    K_a, c2w_a = random_cameras(B, T, image_hw, 6)
    K_b, c2w_b = random_cameras(B, T, image_hw, 7)
    c2w_b[:, 0] = c2w_a[:, 0]  # the shared first frame of a folded pair: pseudo lines
    K_b[:, 0] = K_a[:, 0]
    hw = feat_hw[0] * feat_hw[1]
    runs = cross_view_band_runs(K_a, c2w_a, K_b, c2w_b, image_hw, feat_hw, tau=tau, seed=3)
    band = cross_view_band_mask(K_a, c2w_a, K_b, c2w_b, image_hw, feat_hw, tau=tau, seed=3)
    assert band.any() and not band.all()
    assert torch.equal(runs.rows(0, T * hw), band.view(B, T * hw, hw))
    assert torch.equal(runs.rows(hw - 2, hw + 9), band.view(B, T * hw, hw)[:, hw - 2 : hw + 9])
    dense = runs.to_dense()
    for t in range(T):
        assert torch.equal(dense[:, t, :, t], band[:, t])
        others = [s for s in range(T) if s != t]
        assert not dense[:, t][:, :, others].any()
    index, valid = cross_view_band_neighbors(K_a, c2w_a, K_b, c2w_b, image_hw, feat_hw, tau=tau, seed=3)
    r_index, r_valid = runs.to_neighbors()
    assert torch.equal(r_index, index) and torch.equal(r_valid, valid)


def test_rows_of_wide_grids_compare_run_ends_without_the_pattern_table(monkeypatch):
    from camvid.geometry import epipolar

    K, c2w = random_cameras(1, 3, (48, 80), 8)
    runs = epipolar_runs(K, c2w, (48, 80), (6, 10))
    dense = epipolar_mask(K, c2w, (48, 80), (6, 10)).view(1, 180, 180)
    monkeypatch.setattr(epipolar, "_MAX_TABLE", 0)  # as for grids wider than 160 cells
    assert torch.equal(runs.rows(7, 101), dense[:, 7:101])
    assert torch.equal(runs.to_dense().view(1, 180, 180), dense)
