"""The ``AttentionContext`` (``camvid.attention``) of one denoiser call of a CamI2V model.

Built once per call from the batch's cameras; every cross-frame attention module of the UNet
reads its masks from it, and it memoises them per feature resolution.

Null camera (classifier-free guidance, ``drop_camera``): the Plücker maps are zero and the
cross-frame attention of those samples gets no epipolar constraint, i.e. every query row may attend
to every key (full 3-D attention over all frames, registers included). A camera-free model has no
geometry to restrict the attention with, and "everything visible" is the only mask that carries no
camera information; identity or random cameras would both impose a fake geometry.
"""

from __future__ import annotations

import torch

from camvid.models.base import CameraInputs

# attn config keys that configure the context; the module keys are in camera.injection.MODULE_KWARGS
CONTEXT_KWARGS = ("threshold", "path", "tau", "seed", "tile_hw", "tile_frames", "band", "grid")
KIND = {"epipolar": "all", "epipolar_ref": "ref"}


def context_kwargs(attn_kwargs: dict | None) -> dict:
    from camvid.models.camera.injection import MODULE_KWARGS

    out = {}
    for key, value in (attn_kwargs or {}).items():
        if key in CONTEXT_KWARGS:
            out[key] = value
        elif key not in MODULE_KWARGS:
            raise ValueError(f"unknown attention option {key!r}; valid: "
                             f"{', '.join(sorted((*CONTEXT_KWARGS, *MODULE_KWARGS)))}")
    return out


def build_attention_context(variant: str, camera: CameraInputs, drop: torch.Tensor | None,
                            attn_kwargs: dict | None = None):
    try:
        from camvid.attention import AttentionContext
    except ImportError as err:
        raise ImportError(f"attention variant {variant!r} needs camvid.attention.AttentionContext, which could "
                          f"not be imported: {err}") from err
    kwargs = context_kwargs(attn_kwargs)
    ctx = AttentionContext.from_camera_inputs(camera, **kwargs)
    if drop is None or variant not in KIND:
        return ctx
    geometric = AttentionContext.from_camera_inputs(camera, **kwargs)

    def mask_without_dropped_cameras(_, kind: str, feat_hw: tuple[int, int]) -> torch.Tensor:
        mask = geometric.mask(kind, feat_hw)
        return mask | drop.to(mask.device).view(-1, 1, 1)

    ctx.mask_fn = mask_without_dropped_cameras
    return ctx
