"""The fast band kernels against the all-cells predicate, on lines chosen to break them.

The kernels find each feature row's run of kept cells analytically and certify it against float
rounding; these tests compare them bit for bit with a brute-force evaluation of the predicate
``|a x + b y + c| <= threshold`` (same operation order) over every cell, on exact ties,
axis-parallel and nearly axis-parallel lines, unnormalised and far-away lines.
"""

from __future__ import annotations

import math

import pytest
import torch

from camvid.geometry import (
    band_mask_from_lines,
    band_neighbors_from_lines,
    epipolar_lines,
    epipolar_mask,
    epipolar_neighbors,
    feature_cell_centers,
    neighbors_to_mask,
    pseudo_line_angles,
)

F64 = torch.float64


def brute_force(lines: torch.Tensor, image_hw, feat_hw, threshold: float) -> torch.Tensor:
    """(..., hw) lines -> (..., hw_query, hw_key): every cell centre tested against every line."""
    centers = feature_cell_centers(image_hw, feat_hw)
    a, b, c = (lines[..., k : k + 1] for k in range(3))
    d = a * centers[:, 0]
    d += b * centers[:, 1]
    d += c
    return d.abs() <= threshold


def adversarial_lines(image_hw, feat_hw, threshold: float, seed: int) -> torch.Tensor:
    """(1, 1, N, 3) lines: ties on cell centres, axis-parallel, tiny slopes, unnormalised, far, NaN."""
    H, W = image_hw
    h, w = feat_hw
    gen = torch.Generator().manual_seed(seed)
    centers = feature_cell_centers(image_hw, feat_hw)
    pick = centers[torch.randint(len(centers), (6,), generator=gen)]
    rows = []
    for x, y in pick.tolist():
        for angle in (0.0, math.pi / 2, math.pi / 4, math.atan2(H / h, W / w), 1.0):
            a, b = math.cos(angle), math.sin(angle)
            for shift in (0.0, threshold, -threshold):  # |distance| == threshold exactly: a tie
                rows.append([a, b, -(a * x + b * y) + shift])
    rows += [[0.0, 1.0, -H / 2], [-0.0, -1.0, H / 2 + threshold], [1.0, 0.0, -W / 3], [-1.0, 0.0, W / 3]]
    rows += [[1e-13, 1.0, -H / 2], [1e-17, 1.0, -H / 3], [1.0, -1e-15, -W / 2], [1e-300, 1.0, -H / 2]]
    rows += [[0.6, 0.8, 1e7], [0.6, -0.8, -1e9], [float("nan"), 1.0, 0.0]]
    rand = torch.randn(40, 3, generator=gen, dtype=F64)
    rand[:, 2] = -(rand[:, :2] * centers[torch.randint(len(centers), (40,), generator=gen)]).sum(-1)
    rand *= torch.logspace(-3, 3, 40, dtype=F64).unsqueeze(-1)  # unnormalised: scale the whole line
    lines = torch.cat([torch.tensor(rows, dtype=F64), rand])
    return lines.view(1, 1, -1, 3)


@pytest.mark.parametrize(
    "image_hw, feat_hw",
    [((64, 64), (8, 8)), ((48, 80), (6, 10)), ((50, 70), (7, 3)), ((32, 32), (1, 9)), ((40, 24), (5, 1)),
     ((20, 340), (2, 170))],  # the last is wider than the row-pattern table
)
@pytest.mark.parametrize("threshold_cells", [0.5, 0.71, 2.0])
def test_band_kernels_equal_all_cells_predicate(image_hw, feat_hw, threshold_cells):
    H, W = image_hw
    h, w = feat_hw
    threshold = threshold_cells * math.hypot(H / h, W / w)
    lines = adversarial_lines(image_hw, feat_hw, threshold, seed=h * 100 + w)
    n = lines.shape[2]
    # band_* treat dim 2 as query cells of one frame: repeat the line list to fill whole frames.
    hw = h * w
    frames = -(-n // hw)
    padded = lines.view(-1, 3).repeat(frames * hw // n + 1, 1)[: frames * hw].view(1, frames, hw, 3)
    expected = brute_force(padded, image_hw, feat_hw, threshold)
    assert expected.any() and not expected.all()
    dense = band_mask_from_lines(padded, image_hw, feat_hw, threshold)
    assert torch.equal(dense, expected)
    index, valid = band_neighbors_from_lines(padded, image_hw, feat_hw, threshold)
    rebuilt = neighbors_to_mask(index, valid, frames * hw).view(1, frames, hw, frames, hw)
    assert torch.equal(torch.stack([rebuilt[:, t, :, t] for t in range(frames)], 1), expected)
    assert rebuilt.sum() == expected.sum()
    # Each row of index is ascending over its valid entries.
    step = index[..., 1:] - index[..., :-1]
    assert bool((step > 0)[valid[..., 1:]].all())
    # float32 lines: the predicate promotes them against the float64 cell centres; so must the kernels.
    lines32 = padded.float()
    assert torch.equal(band_mask_from_lines(lines32, image_hw, feat_hw, threshold),
                       brute_force(lines32, image_hw, feat_hw, threshold))


def axis_motion_cameras(kind: str, T: int, image_hw):
    """Sideways (x), vertical (y), forward (z) and static cameras: lines exactly parallel to an axis,
    lines through the epipole, coincident frames."""
    H, W = image_hw
    K = torch.tensor([[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1]], dtype=F64).repeat(1, T, 1, 1)
    c2w = torch.eye(4, dtype=F64).repeat(1, T, 1, 1)
    axis = {"x": 0, "y": 1, "z": 2}.get(kind)
    if axis is not None:
        c2w[0, :, axis, 3] = torch.arange(T, dtype=F64) * 0.25
    return K, c2w


@pytest.mark.parametrize("kind", ["x", "y", "z", "static"])
@pytest.mark.parametrize("image_hw, feat_hw", [((64, 64), (8, 8)), ((48, 80), (6, 10))])
def test_epipolar_masks_equal_all_cells_predicate_for_axis_motions(kind, image_hw, feat_hw):
    T = 3
    K, c2w = axis_motion_cameras(kind, T, image_hw)
    H, W = image_hw
    h, w = feat_hw
    threshold = 0.5 * math.hypot(H / h, W / w)
    centers = feature_cell_centers(image_hw, feat_hw)
    angles = pseudo_line_angles((1, T, T), 2, symmetric_last_two=True)
    lines = epipolar_lines(K[:, :, None], c2w[:, :, None], K[:, None], c2w[:, None], centers, angles)
    expected = brute_force(lines, image_hw, feat_hw, threshold).permute(0, 1, 3, 2, 4)  # (B, i, q, j, k)
    mask = epipolar_mask(K, c2w, image_hw, feat_hw, seed=2)
    assert torch.equal(mask, expected)
    index, valid = epipolar_neighbors(K, c2w, image_hw, feat_hw, seed=2)
    rebuilt = neighbors_to_mask(index, valid, T * h * w).view_as(expected)
    assert torch.equal(rebuilt, expected)


def test_builders_restore_the_callers_thread_count():
    K, c2w = axis_motion_cameras("z", 2, (32, 32))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        epipolar_mask(K, c2w, (32, 32), (4, 4))
        epipolar_neighbors(K, c2w, (32, 32), (4, 4))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
