"""CVD appendix A.5: videos generated along identical camera trajectories should be identical.

"Our model can generate identical videos if the input camera trajectories are identical, while
none of the prior works communicates cross-videos ... our model reaches an MSE of 0.01,
significantly outperforming CameraCtrl at 0.07 and CameraCtrl+SparseCtrl at 0.06."

What is measured here (family ``identical_mse``, metric ``IdenticalMSE``): for every multi-view
group (``meta.group``) whose videos share one trajectory (equal intrinsics and poses, as sampled
with ``protocol.identical_trajectories=true``), the mean squared difference of the corresponding
frames of every two videos, pixel values in [0, 1]; the mean over video pairs, then over groups.
The paper states neither the value range nor the prompts: [0, 1] is assumed (an MSE of 0.07
between two independent videos of one prompt is plausible in [0, 1]; in [-1, 1] it would be 4x
larger), and the preset samples WebVid prompts like the paper's other comparisons with
CameraCtrl+SparseCtrl on generic scenes (docs/evaluation.md).
"""

from __future__ import annotations

import itertools

import numpy as np

from camvid.evaluation.layout import SampleRecord
from camvid.evaluation.tables import ResultRow

__all__ = ["same_trajectory", "video_mse", "identical_trajectory_rows"]


def same_trajectory(members: list[SampleRecord], atol: float = 1e-6) -> bool:
    """Whether every video of a group has the first one's intrinsics and poses."""
    first = members[0]
    return all(m.K.shape == first.K.shape and np.allclose(m.K, first.K, atol=atol * max(1.0, float(first.K.max())))
               and m.c2w.shape == first.c2w.shape and np.allclose(m.c2w, first.c2w, atol=atol)
               for m in members[1:])


def video_mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two uint8 videos (T, H, W, 3), in [0, 1] units."""
    if a.shape != b.shape:
        raise ValueError(f"identical-trajectory MSE: videos of shapes {a.shape} and {b.shape} cannot be compared")
    diff = a.astype(np.float64) / 255.0 - b.astype(np.float64) / 255.0
    return float(np.mean(diff * diff))


def identical_trajectory_rows(groups: dict[str, list[SampleRecord]]) -> tuple[list[ResultRow], dict]:
    """The ``IdenticalMSE`` row over the groups sampled along one trajectory (and why not, if none)."""
    same = {g: members for g, members in groups.items() if same_trajectory(members)}
    if not same:
        why = ("no multi-view groups (meta.json 'group' with >= 2 views)" if not groups else
               f"none of the {len(groups)} groups has identical trajectories (sample with "
               "protocol.identical_trajectories=true)")
        return [ResultRow("IdenticalMSE", None, note=f"not computed: {why}", better="lower")], {}
    per_group = {}
    for g, members in same.items():
        videos = [m.load_video() for m in members]
        per_group[g] = float(np.mean([video_mse(a, b) for a, b in itertools.combinations(videos, 2)]))
    value = float(np.mean(list(per_group.values())))
    note = f"{len(same)} groups along one trajectory; pixel values in [0, 1]"
    if len(same) < len(groups):
        note += f" ({len(groups) - len(same)} groups with different trajectories left out)"
    return [ResultRow("IdenticalMSE", value, better="lower", note=note)], {"identical_mse_per_group": per_group}
