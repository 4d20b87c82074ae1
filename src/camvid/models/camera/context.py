"""Bridge from a batch's cameras to the ``AttentionContext`` of ``camvid.attention``.

The context is built once per denoiser call and handed to every CamI2V cross-frame attention
module, which memoises its masks per feature resolution.

Null camera (classifier-free guidance, ``drop_camera``): the Plücker maps are zero and the
cross-frame attention of those samples gets no epipolar constraint, i.e. it attends to every frame
(full 3-D attention, registers included). A camera-free model has no geometry to restrict the
attention with, and "everything visible" is the only mask that carries no camera information;
random pseudo-epipolar lines or the identity cameras would both smuggle in a fake geometry.
"""

from __future__ import annotations

import torch

from camvid.models.base import CameraInputs


def build_attention_context(variant: str, camera: CameraInputs, drop: torch.Tensor | None):
    try:
        from camvid.attention import AttentionContext
    except ImportError as err:
        raise ImportError(f"attention variant {variant!r} needs camvid.attention.AttentionContext, which could "
                          f"not be imported: {err}") from err
    return AttentionContext.from_cameras(camera, variant=variant, unconstrained=drop)
