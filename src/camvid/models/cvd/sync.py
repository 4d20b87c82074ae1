"""Hanging CVD's ``epi_modules`` on a diffusers ``UNetMotionModel`` and feeding them the pair cameras.

The module itself is ``camvid.attention.CrossVideoSyncModule`` (CVD's ``EpiModule`` layout:
``epi_transformer.{norm, proj_in, transformer_blocks.0.{attention_blocks.{0,1}, norms.{0,1}, ff,
ff_norm}, proj_out}``, both attention blocks cross-video, zero-initialised ``proj_out``); this file
only places it. diffusers' motion blocks run ``resnet -> attention -> motion_module`` per layer and
have no slot for an extra module, while CVD runs its epi module right after each motion module. So
every down/up block gets a sibling ``epi_modules`` ModuleList (state-dict keys
``down_blocks.{i}.epi_modules.{j}...``, CVD's own names) and a forward hook on ``motion_modules[j]``
adds ``epi_modules[j]``'s residual update to that module's output.

Pairs are interleaved along the batch, [a0, b0, a1, b1, ...] (``num_views = 2``). The hooks read the
cameras from one ``AttentionContext`` per UNet call (:meth:`CrossVideoSync.bind`), which memoises the
band mask per feature resolution, so all modules of a level share one mask.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers import UNetMotionModel
from torch import nn

from camvid.attention import AttentionContext, CrossVideoSyncModule, build_cross_frame_attention
from camvid.geometry.homography import homography_band_mask
from camvid.models.animatediff.unet import motion_module_sites
from camvid.models.base import CameraInputs

__all__ = ["CrossVideoSync", "install_cvd_modules", "open_cross_mask"]


def open_cross_mask(ctx: AttentionContext, kind: str, feat_hw: tuple[int, int]) -> torch.Tensor:
    """All-True cross-view mask: the "w/o Epi" ablation (every cell of the partner frame is a key)."""
    if kind != "cross":
        raise ValueError(f"the unmasked cross-video ablation only defines the 'cross' mask, not {kind!r}")
    B, T = ctx.K.shape[:2]
    hw = feat_hw[0] * feat_hw[1]
    return torch.ones(B * T, hw, (ctx.num_views - 1) * hw, dtype=torch.bool, device=ctx.K.device)


class _HomographyMask:
    """``mask_fn`` of an :class:`AttentionContext` for homography pairs: query cell x of sample s
    attends the partner's cells near a random-direction line through ``H_p H_s^-1 x``."""

    def __init__(self, homography: torch.Tensor):
        self.homography = homography.to(torch.float64)

    def __call__(self, ctx: AttentionContext, kind: str, feat_hw: tuple[int, int]) -> torch.Tensor:
        if kind != "cross":
            raise ValueError(f"homography pairs only define the 'cross' mask, not {kind!r}")
        if ctx.num_views != 2:
            raise ValueError(f"homography pairs need num_views=2, got {ctx.num_views}")
        H = self.homography.to(ctx.K.device)
        partner = torch.arange(H.shape[0], device=H.device) ^ 1
        to_partner = H[partner] @ torch.linalg.inv(H)  # sample s pixels -> partner pixels
        mask = homography_band_mask(to_partner, ctx.image_hw, feat_hw, tau=ctx.band_tau(feat_hw), seed=ctx.seed)
        return mask.reshape(-1, *mask.shape[-2:])


class CrossVideoSync:
    """Handle on the installed ``epi_modules`` (plain object; the modules live inside the UNet)."""

    def __init__(self, tau: float | None = None, masked: bool = True, path: str = "auto", seed: int = 0,
                 band: str = "hard"):
        if tau is not None and tau <= 0:
            raise ValueError(f"cross-video band tau must be > 0 pixels (or None: half a cell diagonal), got {tau}")
        self.modules: list[CrossVideoSyncModule] = []
        self.tau = tau
        self.masked = masked
        self.path = path
        self.seed = seed
        self.band = band
        self.context: AttentionContext | None = None
        self.num_frames = 0

    def parameters(self):
        for module in self.modules:
            yield from module.parameters()

    @contextmanager
    def bind(self, camera: CameraInputs, batch: int, num_frames: int, homography: torch.Tensor | None = None):
        """Make the pair cameras visible to the epi modules for one UNet call.

        ``homography`` (B, T, 3, 3), for CVD's WebVid pairs: maps view a's pixels to each sample's
        pixels (identity on view a). The band then runs along a random-direction line through the
        warped cell centre (CVD's pseudo-epipolar lines) instead of the epipolar line.
        """
        if camera.num_views != 2 or batch % 2:
            raise ValueError(
                f"cross-video synchronisation needs interleaved pairs (num_views=2, even batch); "
                f"got num_views={camera.num_views}, batch={batch}"
            )
        if tuple(camera.K.shape[:2]) != (batch, num_frames):
            raise ValueError(
                f"pair cameras {tuple(camera.K.shape[:2])} do not match the latents (batch={batch}, frames={num_frames})"
            )
        mask_fn = None if self.masked else open_cross_mask
        if homography is not None:
            if tuple(homography.shape) != (batch, num_frames, 3, 3):
                raise ValueError(
                    f"homography must be (B, T, 3, 3) = ({batch}, {num_frames}, 3, 3), got {tuple(homography.shape)}"
                )
            if self.masked:
                mask_fn = _HomographyMask(homography)
        self.context = AttentionContext.from_camera_inputs(
            camera, path=self.path, tau=self.tau, seed=self.seed, mask_fn=mask_fn, band=self.band,
        )
        self.num_frames = num_frames
        try:
            yield self.context
        finally:
            self.context = None

    def run(self, module: CrossVideoSyncModule, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` (B*T, C, h, w), a motion module's output -> the same plus the epi update."""
        if self.context is None:
            raise ValueError("the UNet has CVD epi_modules: call it inside CrossVideoSync.bind(camera, ...)")
        T = self.num_frames
        BT, C, h, w = hidden.shape
        if BT != self.context.batch_size * T:
            raise ValueError(
                f"motion-module output has {BT} frames, expected batch*frames = {self.context.batch_size}*{T}"
            )
        tokens = hidden.reshape(BT // T, T, C, h * w).transpose(2, 3)  # (B, T, hw, C)
        update = module(tokens, self.context, (h, w))
        # contiguous: a channels-last-strided sum would steer the next convolutions onto other kernels,
        # and a zero-initialised module would no longer be an exact identity
        return hidden + update.transpose(2, 3).reshape(BT, C, h, w).contiguous()


def install_cvd_modules(
    unet: UNetMotionModel,
    tau: float | None = None,
    masked: bool = True,
    path: str = "auto",
    heads: int | None = None,
    seed: int = 0,
    max_feat_size: int = 64,
    band: str = "hard",
    num_attention_blocks: int = 2,
    module_device: torch.device | str | None = None,
) -> CrossVideoSync:
    """Add ``epi_modules`` beside the motion modules of every down/up block and hook them in.

    ``heads`` defaults to the motion modules' head count (8 at full size, as CVD's config).
    ``num_attention_blocks``: cross-view attention layers per epi module (CVD: 2; its Table 3
    "1 Layer" ablation: 1). ``module_device``: where the new modules are built (default: beside the
    motion modules; a UNet built on ``meta`` for a load passes the real device, as no file may fill them).
    """
    if int(num_attention_blocks) < 1:
        raise ValueError(f"attn.num_attention_blocks={num_attention_blocks}: must be >= 1")
    heads = heads or unet.config.motion_num_attention_heads
    sync = CrossVideoSync(tau, masked, path, seed, band)
    AttentionContext(path=path, band=band)  # rejects an unknown path / band now, not at the first forward
    for part, i, _ in motion_module_sites(unet):
        block = getattr(unet, part)[i]
        if hasattr(block, "epi_modules"):
            raise ValueError(f"{part}.{i} already has epi_modules")
        ref = block.motion_modules[0].proj_in.weight
        # build in place: on "meta" nothing is allocated
        with torch.device(module_device if module_device is not None else ref.device):
            block.epi_modules = nn.ModuleList(
                build_cross_frame_attention(
                    "cross_video", mm.proj_in.in_features, heads,
                    norm_num_groups=unet.config.norm_num_groups, max_feat_size=max_feat_size,
                    num_attention_blocks=int(num_attention_blocks),
                )
                for mm in block.motion_modules
            ).to(ref.dtype)
        for motion_module, epi in zip(block.motion_modules, block.epi_modules):
            motion_module.register_forward_hook(_AfterMotionModule(sync, epi))
            sync.modules.append(epi)
    return sync


class _AfterMotionModule:
    """Forward hook running one epi module on a motion module's output. An object, not a closure, so
    ``copy.deepcopy`` of the model re-points it at the copied sync handle and epi module."""

    def __init__(self, sync: CrossVideoSync, epi: CrossVideoSyncModule):
        self.sync = sync
        self.epi = epi

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return self.sync.run(self.epi, output)
