"""The AnimateDiff text-to-video family as one :class:`VideoDiffusionModel`:

- ``AnimateDiffT2V(camera=None)``: plain AnimateDiff (trains the motion modules);
- ``camera="cameractrl"``: CameraCtrl, Plücker rays -> pose encoder -> ``qkv_merge`` in the first
  temporal attention of every motion module (trains pose encoder + ``qkv_merge``);
- ``camera="motionctrl"``: MotionCtrl's camera motion control, ``[R|t]`` concatenated after the
  first temporal attention of every motion-module block (``camvid.models.animatediff.motionctrl``;
  trains ``cc_projection`` + the blocks' ``attn2``);
- ``cvd=True``: CVD, CameraCtrl frozen plus cross-video epipolar ``epi_modules`` after every motion
  module, run on interleaved video pairs [a0, b0, a1, b1, ...] (trains ``epi_modules`` only).

Text-to-video: there is no conditioning frame (``image_to_video = False``); cameras are relative to
the batch's ``cond_index`` frame (frame 0 for CVD's folded pairs).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import UNetMotionModel
from torch import nn

from camvid.diffusion.schedule import make_alphas_cumprod
from camvid.geometry import invert_rigid
from camvid.geometry.plucker import plucker_rays
from camvid.models.animatediff.pose_adaptor import PoseAdaptor, install_pose_adaptor
from camvid.models.base import CameraInputs, Conditions, VideoDiffusionModel, batch_camera_free

__all__ = ["AnimateDiffT2V", "CAMERA_METHODS"]

CAMERA_METHODS = (None, "cameractrl", "motionctrl")


class AnimateDiffT2V(VideoDiffusionModel):
    """AnimateDiff (+ CameraCtrl) (+ CVD) text-to-video.

    Args:
        unet: a ``UNetMotionModel`` (see :func:`camvid.models.animatediff.unet.build_unet`); its
            in/out channels must equal ``first_stage.latent_channels``.
        first_stage: frozen pixels <-> latents (``encode``/``decode``, ``latent_channels``, ``downsample``).
        text_encoder: frozen ``captions -> (B, L, cross_attention_dim)``.
        camera: ``"cameractrl"`` or ``None``.
        pose_encoder: CameraCtrl's pose encoder, ``(B, T, 6, H, W) -> [per-level (B, C_l, T, h_l, w_l)]``;
            required with ``camera="cameractrl"``.
        cvd: add CVD's cross-video synchronisation modules (needs ``camera="cameractrl"``).
        attn_variant: ``"temporal"`` (single videos) or ``"cross_video"`` (CVD pairs).
        attn_kwargs: options of the cross-video attention (``tau``, ``masked``, ``path``).
        beta_schedule: training noise schedule over 1000 steps, betas 0.00085..0.012.
        module_device: where the modules no released file holds (MotionCtrl, cross-frame, CVD sync) are
            built with their initialisation; default beside the UNet weights. A UNet built on ``meta``
            to be materialised by a load passes the real device here.
        sync_from_file: CVD.ckpt will fill the sync modules: build their parameters on ``meta`` (buffers
            real), to be materialised by :func:`~camvid.models.animatediff.checkpoints.load_cvd`.
    """

    parameterization = "eps"
    image_to_video = False

    def __init__(
        self,
        unet: UNetMotionModel,
        first_stage: nn.Module,
        text_encoder: nn.Module,
        camera: str | None = "cameractrl",
        cvd: bool = False,
        attn_variant: str = "temporal",
        pose_encoder: nn.Module | None = None,
        attn_kwargs: dict | None = None,
        pose_scale: float = 1.0,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        image_hw: tuple[int, int] | None = None,
        module_device: torch.device | str | None = None,
        sync_from_file: bool = False,
    ):
        super().__init__()
        _check_combination(camera, cvd, attn_variant, pose_encoder)
        latent_channels = first_stage.latent_channels
        if unet.config.in_channels != latent_channels or unet.config.out_channels != latent_channels:
            raise ValueError(
                f"UNet in/out channels {unet.config.in_channels}/{unet.config.out_channels} do not match the "
                f"first stage's {latent_channels} latent channels"
            )
        if getattr(text_encoder, "dim", unet.config.cross_attention_dim) != unet.config.cross_attention_dim:
            raise ValueError(
                f"text encoder dim {text_encoder.dim} != UNet cross_attention_dim {unet.config.cross_attention_dim}"
            )
        self.unet = unet
        self.first_stage = first_stage
        self.text_encoder = text_encoder
        self.camera = camera
        self.cvd = cvd
        self.attn_variant = attn_variant
        self.pose_encoder = pose_encoder
        self.image_hw = None if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
        self.supports = {"text", "camera"} if camera is not None else {"text"}
        self.num_train_timesteps = num_train_timesteps
        self.register_buffer(
            "alphas_cumprod",
            make_alphas_cumprod(num_train_timesteps, beta_schedule, 0.00085, 0.012).float(),
            persistent=False,
        )
        self.pose_adaptor: PoseAdaptor | None = None
        if camera == "cameractrl":
            self.pose_adaptor = install_pose_adaptor(unet, scale=pose_scale)
        self.motionctrl = None
        if camera == "motionctrl":
            from camvid.models.animatediff.motionctrl import install_motionctrl

            self.motionctrl = install_motionctrl(unet, module_device=module_device)
        self.cross_frame = None
        if not cvd and attn_variant != "temporal":
            from camvid.models.animatediff.cross_frame import install_cross_frame_modules

            self.cross_frame = install_cross_frame_modules(unet, attn_variant, attn_kwargs,
                                                           module_device=module_device)
        self.sync = None
        if cvd:
            from camvid.models.cvd import install_cvd_modules

            with _meta_params() if sync_from_file else nullcontext():
                self.sync = install_cvd_modules(unet, **(attn_kwargs or {}), module_device=module_device)

    # ------------------------------------------------------------------ latents
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.first_stage.encode(video)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode(z)

    # --------------------------------------------------------------- conditions
    def conditions(self, batch: dict, latents: torch.Tensor | None = None) -> Conditions:
        num_views = int(batch.get("num_views", 1))
        # CVD: groups of M >= 2 views of one scene; denoise itself runs on pairs (M = 2), which
        # collaborative sampling gathers from larger groups
        if self.cvd and num_views < 2:
            raise ValueError(f"CVD runs on groups of views (num_views >= 2, [a0, b0, a1, b1, ...]); "
                             f"batch has num_views={num_views}")
        if not self.cvd and num_views != 1:
            raise ValueError(f"{self._name()} generates single videos; batch has num_views={num_views}")
        device = self.alphas_cumprod.device
        text = self.text_encoder(list(batch["caption"])).to(device)
        camera = None
        if self.camera is not None:
            camera = CameraInputs(
                K=batch["K"].to(device),
                c2w=batch["c2w"].to(device),
                image_hw=self._image_hw(batch),
                cond_index=None if batch.get("cond_index") is None else batch["cond_index"].to(device),
                num_views=num_views,
            )
        extras = {}
        if self.cvd and batch.get("homography") is not None:
            # WebVid homography pairs: the epi modules' band follows the homography, not the cameras
            extras["homography"] = batch["homography"].to(device)
        return Conditions(text=text, camera=camera, frame_stride=batch.get("frame_stride"), extras=extras,
                          camera_free=batch_camera_free(batch))

    def _image_hw(self, batch: dict) -> tuple[int, int]:
        """Pixel size the intrinsics refer to: the batch's video, else the size the model was built for
        (text-to-video sampling batches carry cameras and captions only)."""
        if batch.get("video") is not None:
            return int(batch["video"].shape[-2]), int(batch["video"].shape[-1])
        if self.image_hw is None:
            raise ValueError("batch has no 'video' and the model has no image_hw: cannot size the Plücker rays")
        return self.image_hw

    def null_text(self, batch_size: int) -> torch.Tensor:
        """Tokens of the empty caption: the null text of classifier-free guidance."""
        device = self.alphas_cumprod.device
        return self.text_encoder([""]).to(device).expand(batch_size, -1, -1)

    # ------------------------------------------------------------------ denoise
    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        if z_t.dim() != 5:
            raise ValueError(f"z_t must be (B, C, T, h, w), got {tuple(z_t.shape)}")
        b, _, num_frames = z_t.shape[:3]
        if num_frames > self.unet.config.motion_max_seq_length:
            raise ValueError(
                f"{num_frames} frames exceed the motion modules' {self.unet.config.motion_max_seq_length} positions"
            )
        if cond.text is None:
            raise ValueError(f"{self._name()} is text-to-video: conditions have no text tokens")
        text = cond.text.to(z_t.dtype)
        if cond.drop_text is not None and bool(cond.drop_text.any()):
            keep_text = ~cond.drop_text.to(text.device)[:, None, None]
            text = torch.where(keep_text, text, self.null_text(b).to(text.dtype))
        tokens = text.repeat_interleave(num_frames, dim=0)  # diffusers' motion UNet wants per-frame tokens
        t = torch.as_tensor(t, device=z_t.device)
        if t.dim() == 0:
            t = t.expand(b)

        features, keep_camera = None, None
        # a camera-free batch (CVD's WebVid phase) runs the plain backbone: no pose encoder, no merge
        if self.pose_adaptor is not None and not cond.camera_free:
            if cond.camera is None:
                raise ValueError(f"{self._name()} needs cameras: conditions have camera=None")
            features = self.pose_features(cond.camera, z_t.dtype)
            if cond.drop_camera is not None:
                keep_camera = ~cond.drop_camera.to(z_t.device)
        with self._sync_context(cond, b, num_frames), self._motionctrl_context(cond, z_t), \
                self._cross_frame_context(cond, num_frames):
            with self.pose_adaptor.feed(features, num_frames, keep_camera) if self.pose_adaptor else nullcontext():
                return self.unet(z_t, t, encoder_hidden_states=tokens).sample

    def _cross_frame_context(self, cond: Conditions, num_frames: int):
        if self.cross_frame is None:
            return nullcontext()
        return self.cross_frame.bind(cond.camera, num_frames, cond.drop_camera)

    def _motionctrl_context(self, cond: Conditions, z_t: torch.Tensor):
        """MotionCtrl's per-frame relative ``[R|t]`` (12 numbers); zero for a dropped camera."""
        if self.motionctrl is None:
            return nullcontext()
        if cond.camera is None:
            raise ValueError("motionctrl needs cameras: conditions have camera=None")
        b, frames = z_t.shape[0], z_t.shape[2]
        c2w = cond.camera.c2w
        if c2w.shape[0] != b:  # conditions stacked for guidance
            c2w = c2w.repeat(b // c2w.shape[0], 1, 1, 1)
        rt = invert_rigid(c2w.float())[..., :3, :4].reshape(b, frames, 12)
        if cond.drop_camera is not None:
            rt = rt * (~cond.drop_camera.to(rt.device)).view(b, 1, 1)
        return self.motionctrl.feed(rt.to(z_t.dtype))

    def pose_features(self, camera: CameraInputs, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per-level pose-encoder features of the batch's cameras (Plücker rays at image size)."""
        height, width = camera.image_hw
        rays = plucker_rays(camera.K, camera.c2w, height, width).to(dtype)  # (B, T, 6, H, W)
        return list(self.pose_encoder(rays))

    def _sync_context(self, cond: Conditions, batch: int, num_frames: int):
        if self.sync is None:
            return nullcontext()
        if cond.camera is None or cond.camera.num_views != 2:
            views = None if cond.camera is None else cond.camera.num_views
            raise ValueError(f"CVD denoises interleaved video pairs (num_views=2); conditions have num_views={views}")
        return self.sync.bind(cond.camera, batch, num_frames, cond.extras.get("homography"))

    # ----------------------------------------------------------------- training
    def freeze_base(self) -> None:
        """Freeze everything, then unfreeze what the method trains: AnimateDiff the motion modules,
        CameraCtrl the pose encoder + ``qkv_merge``, CVD only the ``epi_modules``."""
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.new_parameters():
            p.requires_grad_(True)

    def new_parameters(self) -> list[nn.Parameter]:
        if self.sync is not None:
            return list(self.sync.parameters())
        if self.motionctrl is not None:
            return list(self.motionctrl.parameters())
        if self.pose_adaptor is not None:
            extra = list(self.cross_frame.parameters()) if self.cross_frame is not None else []
            return list(self.pose_encoder.parameters()) + list(self.pose_adaptor.parameters()) + extra
        return [p for name, p in self.unet.named_parameters() if ".motion_modules." in name]

    def load_pretrained(self, path: str | Path) -> None:
        from camvid.models.animatediff.checkpoints import load_animatediff_weights

        load_animatediff_weights(self, Path(path))

    def load_method_checkpoint(self, path: str | Path) -> str:
        """CameraCtrl.ckpt, CVD.ckpt or CameraCtrl's RealEstate10K LoRA over a loaded base."""
        from camvid.models.animatediff.checkpoints import load_method_file

        return load_method_file(self, Path(path))

    def _name(self) -> str:
        if self.cvd:
            return "cvd"
        return "cami2v" if self.cross_frame is not None else (self.camera or "animatediff")


def _meta_params():
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def _check_combination(camera: str | None, cvd: bool, attn_variant: str, pose_encoder: nn.Module | None) -> None:
    if camera not in CAMERA_METHODS:
        raise ValueError(f"unknown camera method {camera!r}; expected one of {CAMERA_METHODS}")
    if camera == "motionctrl" and pose_encoder is not None:
        raise ValueError("camera='motionctrl' conditions on [R|t] directly and takes no pose_encoder")
    if camera == "cameractrl" and pose_encoder is None:
        raise ValueError("camera='cameractrl' needs a pose_encoder")
    if camera is None and pose_encoder is not None:
        raise ValueError("a pose_encoder was given but camera=None")
    if cvd and camera != "cameractrl":
        raise ValueError(f"cvd=True builds on CameraCtrl; got camera={camera!r} (use camera='cameractrl')")
    if cvd and attn_variant != "cross_video":
        raise ValueError(
            f"Invalid combination: model=cvd synchronises video pairs but attn={attn_variant} works within one "
            "video; with model=cvd use attn=cross_video"
        )
    if not cvd and attn_variant == "cross_video":
        raise ValueError(
            f"Invalid combination: attn=cross_video synchronises 2 videos but model={camera or 'animatediff'} "
            "generates single videos; use attn=temporal (or model=cvd)"
        )
    if not cvd and attn_variant in ("epipolar", "epipolar_ref", "full3d") and camera == "cameractrl":
        return  # CamI2V's cross-frame attention over CameraCtrl (model=cami2v on AnimateDiff)
    if not cvd and attn_variant != "temporal":
        raise ValueError(
            f"Invalid combination: model={camera or 'animatediff'} on AnimateDiff has no cross-frame camera "
            f"module for attn={attn_variant}; use attn=temporal"
        )
