"""camvid.inspection.matches: true matches from exact depth, and the attention mass near them."""

import numpy as np
import pytest
import torch

from camvid.attention import LayerAttention
from camvid.inspection import conditioning_matches, match_mass, match_mass_rows

H = W = 32
FOCAL = 40.0


def _cameras(T: int, shift_x: float) -> tuple[np.ndarray, np.ndarray]:
    K = np.tile(np.array([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1.0]]), (T, 1, 1))
    c2w = np.tile(np.eye(4), (T, 1, 1))
    c2w[:, 0, 3] = shift_x * np.arange(T)  # camera slides right by shift_x per frame
    return K, c2w


def test_matches_follow_the_parallax_of_a_sideways_slide():
    depth = np.full((H, W), 4.0)
    K, c2w = _cameras(3, 0.1)
    queries, sources = conditioning_matches(depth, K, c2w, range(3), cond_index=0, step=8)
    assert len(queries) == len(sources) > 0
    assert {q.frame for q in queries} == {1, 2}  # the conditioning frame itself is never a query
    for q, (x, y) in zip(queries, sources):
        # a point at depth Z moves left by f * dx / Z when the camera moves right by dx
        assert q.x == pytest.approx(x - FOCAL * 0.1 * q.frame / 4.0)
        assert q.y == pytest.approx(y)


def test_points_leaving_the_image_are_dropped_and_bad_depth_is_refused():
    K, c2w = _cameras(2, 2.0)  # 2 m at 4 m depth: 20 px, most of the grid leaves the image
    queries, sources = conditioning_matches(np.full((H, W), 4.0), K, c2w, [1], step=4)
    assert all(0 <= q.x < W for q in queries) and len(queries) < (H // 4) * (W // 4)
    with pytest.raises(ValueError, match="finite and positive"):
        conditioning_matches(np.zeros((H, W)), K, c2w, [1])


def _layer(probs: torch.Tensor, cells: torch.Tensor, mask: torch.Tensor) -> LayerAttention:
    ts, heads, q = probs.shape[:3]
    return LayerAttention(name="blocks.0.epipolar", variant="epipolar", feat_hw=(8, 8), image_hw=(H, W),
                          key_axis="frame", heads=list(range(heads)), timesteps=list(range(ts)), cells=cells,
                          probs=probs, registers=torch.zeros(ts, heads, q, 1), mask=mask,
                          empty=torch.zeros(q, dtype=torch.bool))


def test_attention_on_the_match_scores_far_above_chance_and_spread_attention_at_chance():
    sources = np.array([[10.0, 18.0]])  # cell (4, 2) of the 8x8 grid over 32x32
    cells = torch.tensor([[4, 6]])  # the query's own cell: 4 cells to the right
    mask = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    mask[0, 0, 4, :] = True  # a horizontal band through the match on the conditioning frame
    peaked = torch.zeros(2, 1, 1, 2, 8, 8)
    peaked[:, :, 0, 0, 4, 2] = 1.0
    mass = match_mass(_layer(peaked, cells, mask), sources)
    assert torch.allclose(mass.match, torch.ones(2, 1, 1)) and mass.static.abs().max() == 0
    assert float(mass.chance[0]) == pytest.approx(3 / 8)  # 3 of the band's 8 cells are within 1 cell
    spread = torch.zeros(2, 1, 1, 2, 8, 8)
    spread[:, :, 0, 0] = mask[0, 0].float() / 8
    rows = match_mass_rows("m", [_layer(spread, cells, mask)], sources)
    assert rows[0]["match"] == pytest.approx(rows[0]["chance"]) == pytest.approx(3 / 8)
    assert rows[0]["match_by_timestep"] == pytest.approx([3 / 8, 3 / 8])
    with pytest.raises(ValueError, match="2 matches"):
        match_mass(_layer(peaked, cells, mask), np.zeros((2, 2)))
