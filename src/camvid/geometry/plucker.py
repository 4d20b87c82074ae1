"""Plücker ray embeddings of pixel centres.

Convention (docs/geometry.md): pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)`` in the
coordinates that ``K`` maps to; the ray direction is ``d = normalize(R K^-1 [u+0.5, v+0.5, 1])``
with ``R`` the camera-to-world rotation, its origin ``o`` the camera centre, and the 6-channel
embedding is ``[o x d, d]`` (moment first), as in CameraCtrl / CamI2V.
"""

from __future__ import annotations

import torch

from camvid.geometry.cameras import validate_cameras

__all__ = ["plucker_rays", "scale_intrinsics", "pixel_centers"]


def _check_hw(hw: tuple[int, int], name: str) -> tuple[int, int]:
    if len(hw) != 2 or any(int(s) != s or int(s) <= 0 for s in hw):
        raise ValueError(f"{name} must be two positive integers (height, width), got {hw!r}")
    return int(hw[0]), int(hw[1])


def scale_intrinsics(K: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel intrinsics for the same field of view sampled on a ``dst_hw`` grid instead of ``src_hw``.

    With pixel centres at +0.5 a pure resampling maps image coordinates by ``x -> x * dst/src``,
    so focal lengths and principal point scale by the same per-axis factor (no half-pixel shift).
    """
    src_h, src_w = _check_hw(src_hw, "src_hw")
    dst_h, dst_w = _check_hw(dst_hw, "dst_hw")
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"scale_intrinsics: K must have shape (..., 3, 3), got {tuple(K.shape)}")
    scale = torch.tensor([dst_w / src_w, dst_h / src_h, 1.0], dtype=K.dtype, device=K.device)
    return K * scale[:, None]


def pixel_centers(
    height: int, width: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """(height*width, 2) ``(x, y)`` centres of a ``height x width`` pixel grid, row-major."""
    ys = torch.arange(height, dtype=dtype, device=device) + 0.5
    xs = torch.arange(width, dtype=dtype, device=device) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def plucker_rays(K: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker embedding ``[o x d, d]`` of every pixel centre: (..., 6, height, width).

    ``K`` (..., 3, 3) are pixel intrinsics for a ``height x width`` image (use
    :func:`scale_intrinsics` first when the embedding is wanted at another resolution), ``c2w``
    (..., 4, 4) or (..., 3, 4) camera-to-world poses in OpenCV axes. Output dtype follows ``c2w``.
    """
    height, width = _check_hw((height, width), "plucker_rays size")
    validate_cameras(K, c2w, what="plucker_rays")
    dtype = c2w.dtype if c2w.is_floating_point() else torch.get_default_dtype()
    K = K.to(dtype)
    c2w = c2w.to(dtype)
    lead = K.shape[:-2]
    pix = pixel_centers(height, width, dtype=dtype, device=K.device)  # (HW, 2)
    ones = torch.ones_like(pix[:, :1])
    pix_h = torch.cat([pix, ones], dim=-1)  # (HW, 3)
    # A full inverse (not 1/fx, 1/fy) keeps skewed or otherwise general K exact.
    cam = pix_h @ torch.linalg.inv(K).transpose(-1, -2)  # (..., HW, 3)
    dirs = cam @ c2w[..., :3, :3].transpose(-1, -2)  # (..., HW, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origin = c2w[..., :3, 3].unsqueeze(-2).expand_as(dirs)
    moment = torch.linalg.cross(origin, dirs, dim=-1)
    emb = torch.cat([moment, dirs], dim=-1)  # (..., HW, 6)
    return emb.transpose(-1, -2).reshape(*lead, 6, height, width)
