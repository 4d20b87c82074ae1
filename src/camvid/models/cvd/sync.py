"""Hanging CVD's ``epi_modules`` on a diffusers ``UNetMotionModel`` and feeding them the pair cameras.

diffusers' motion blocks run ``resnet -> attention -> motion_module`` per layer and have no slot for
an extra module, while CVD runs its ``EpiModule`` right after each motion module. So every block gets
a sibling ``epi_modules`` ModuleList (state-dict keys ``down_blocks.{i}.epi_modules.{j}...``, CVD's
own names) and a forward hook on ``motion_modules[j]`` passes that module's output through
``epi_modules[j]``.

Pairs are interleaved along the batch, [a0, b0, a1, b1, ...] (``num_views = 2``): the partner of
sample ``s`` is ``s ^ 1``. The hooks read the pair geometry from :meth:`CrossVideoSync.bind`, which
memoises one mask per feature resolution for the duration of a UNet call.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers import UNetMotionModel
from torch import nn

from camvid.attention.kernels import dense_masked_attention, pad_mask_for_registers
from camvid.geometry.epipolar import cross_view_band_mask
from camvid.models.animatediff.unet import motion_module_sites
from camvid.models.base import CameraInputs
from camvid.models.cvd.modules import EpiModule

__all__ = ["CrossVideoSync", "PairGeometry", "install_cvd_modules", "ATTENTION_PATHS"]

# The cross-video mask couples one frame with one frame (h*w x h*w per frame pair, 2.4 M booleans at
# 256x384 level 0), so the dense kernel is exact and small enough at every size: "auto" means dense.
ATTENTION_PATHS = ("auto", "dense")


@dataclass
class PairGeometry:
    """Cameras of one interleaved pair batch, with the band masks memoised per feature resolution."""

    camera: CameraInputs
    batch: int
    num_frames: int
    tau: float
    masked: bool
    seed: int
    masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def partner_rows(self, device: torch.device) -> torch.Tensor:
        """(B*T,) row of the same frame in the partner video, rows ordered (sample, frame)."""
        samples = torch.arange(self.batch, device=device) ^ 1
        frames = torch.arange(self.num_frames, device=device)
        return (samples[:, None] * self.num_frames + frames[None, :]).reshape(-1)

    def mask(self, feat_hw: tuple[int, int]) -> torch.Tensor:
        """(B*T, h*w, h*w) bool: query cell of video a, frame t -> key cells of video b, frame t."""
        if feat_hw not in self.masks:
            K, c2w = self.camera.K, self.camera.c2w
            partner = torch.arange(self.batch, device=K.device) ^ 1
            mask = cross_view_band_mask(
                K, c2w, K[partner], c2w[partner], self.camera.image_hw, feat_hw, tau=self.tau, seed=self.seed
            )
            self.masks[feat_hw] = mask.reshape(self.batch * self.num_frames, *mask.shape[-2:])
        return self.masks[feat_hw]


class CrossVideoSync:
    """Handle on the installed ``epi_modules`` (plain object; the modules live inside the UNet)."""

    def __init__(self, modules: list[EpiModule], tau: float, masked: bool, path: str, seed: int):
        self.modules = modules
        self.tau = tau
        self.masked = masked
        self.path = path
        self.seed = seed
        self.geometry: PairGeometry | None = None

    def parameters(self):
        for module in self.modules:
            yield from module.parameters()

    @contextmanager
    def bind(self, camera: CameraInputs, batch: int, num_frames: int):
        """Make the pair cameras visible to the epi modules for one UNet call."""
        if camera.num_views != 2 or batch % 2:
            raise ValueError(
                f"cross-video synchronisation needs interleaved pairs (num_views=2, even batch); "
                f"got num_views={camera.num_views}, batch={batch}"
            )
        if camera.K.shape[:2] != (batch, num_frames):
            raise ValueError(
                f"pair cameras {tuple(camera.K.shape[:2])} do not match the latents (batch={batch}, frames={num_frames})"
            )
        self.geometry = PairGeometry(camera, batch, num_frames, self.tau, self.masked, self.seed)
        try:
            yield self.geometry
        finally:
            self.geometry = None

    def run(self, module: EpiModule, hidden: torch.Tensor) -> torch.Tensor:
        geometry = self.geometry
        if geometry is None:
            raise ValueError("the UNet has CVD epi_modules: call it inside CrossVideoSync.bind(camera, ...)")
        if hidden.shape[0] != geometry.batch * geometry.num_frames:
            raise ValueError(
                f"motion-module output has {hidden.shape[0]} frames, expected batch*frames = "
                f"{geometry.batch}*{geometry.num_frames}"
            )
        rows = geometry.partner_rows(hidden.device)
        return module(hidden, rows, lambda q, k, v, feat_hw: self.attend(q, k, v, feat_hw))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, feat_hw: tuple[int, int]) -> torch.Tensor:
        """(B*T, heads, h*w, d) -> same; plain attention when ``masked=False`` (the "w/o Epi" ablation)."""
        if not self.masked:
            return dense_masked_attention(q, k, v)
        mask, row_valid = pad_mask_for_registers(self.geometry.mask(feat_hw).to(q.device), 0)
        return dense_masked_attention(q, k, v, mask, row_valid)


def install_cvd_modules(
    unet: UNetMotionModel,
    tau: float = 3.0,
    masked: bool = True,
    path: str = "auto",
    heads: int | None = None,
    seed: int = 0,
    max_feat_size: int = 64,
) -> CrossVideoSync:
    """Add ``epi_modules`` beside the motion modules of every down/up block and hook them in.

    ``heads`` defaults to the motion modules' head count (8 at full size, as CVD's config).
    """
    if path not in ATTENTION_PATHS:
        raise ValueError(f"unknown cross-video attention path {path!r}; expected one of {ATTENTION_PATHS}")
    if tau <= 0:
        raise ValueError(f"cross-video band tau must be > 0 pixels, got {tau}")
    heads = heads or unet.config.motion_num_attention_heads
    sync = CrossVideoSync([], tau, masked, path, seed)
    for part, i, _ in motion_module_sites(unet):
        block = getattr(unet, part)[i]
        if hasattr(block, "epi_modules"):
            raise ValueError(f"{part}.{i} already has epi_modules")
        ref = block.motion_modules[0].proj_in.weight
        with torch.device(ref.device):  # build in place: on "meta" nothing is allocated
            block.epi_modules = nn.ModuleList(
                EpiModule(mm.proj_in.in_features, heads, unet.config.norm_num_groups, max_feat_size)
                for mm in block.motion_modules
            ).to(ref.dtype)
        for motion_module, epi in zip(block.motion_modules, block.epi_modules):
            motion_module.register_forward_hook(_AfterMotionModule(sync, epi))
            sync.modules.append(epi)
    return sync


class _AfterMotionModule:
    """Forward hook running one epi module on a motion module's output. An object, not a closure, so
    ``copy.deepcopy`` of the model re-points it at the copied sync handle and epi module."""

    def __init__(self, sync: CrossVideoSync, epi: EpiModule):
        self.sync = sync
        self.epi = epi

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return self.sync.run(self.epi, output)
