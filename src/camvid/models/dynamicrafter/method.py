"""``DynamiCrafterI2V``: DynamiCrafter image-to-video and its camera-controlled variants
(MotionCtrl, CameraCtrl, CamI2V) behind the ``VideoDiffusionModel`` contract.

Sub-module names follow the official LatentVisualDiffusion / CamI2V checkpoints, so a released
state dict maps onto ``state_dict()`` key for key: ``model.diffusion_model`` (UNet),
``first_stage_model``, ``cond_stage_model`` (text), ``embedder`` (image), ``image_proj_model``,
``pose_encoder``. Schedule buffers are derived from the configuration and kept out of the state
dict (non-persistent).

Conditioning (DynamiCrafter): text tokens; image tokens = ``image_proj_model(embedder(frame))`` of
the conditioning frame; that frame's latent concatenated to every frame of the noisy latent;
frame stride (256) or fps (512) embedding. Null values for classifier-free guidance, per sample:
text -> tokens of the empty caption; image -> the embedder applied to an all-zero frame (the
concatenated latent is kept, as in DynamiCrafter); camera -> zero Plücker maps / zero ``[R|t]`` and,
for the cross-frame attention, masks built as if every frame had no camera (see
``camvid.models.camera.context``).
"""

from __future__ import annotations

import torch
from torch import nn

from camvid.diffusion.i2v import (
    add_conditioning_residual,
    check_first_frame_mode,
    exact_conditioning_output,
    replace_conditioning_frame,
)
from camvid.diffusion.schedule import check_parameterization, dynamic_rescale_scales, make_alphas_cumprod
from camvid.geometry import invert_rigid, plucker_rays
from camvid.models.base import CameraInputs, Conditions, VideoDiffusionModel, batch_camera_free
from camvid.models.camera.context import build_attention_context, context_kwargs
from camvid.models.camera.injection import (
    CAMERA_METHODS,
    add_cameractrl,
    add_cami2v,
    add_motionctrl,
    camera_trainable_modules,
)
from camvid.models.camera.pose_encoder import CameraPoseEncoder
from camvid.models.dynamicrafter.unet import DynamiCrafterUNet, UNetCamera


class _DiffusionWrapper(nn.Module):
    """Only here so the UNet's keys read ``model.diffusion_model.*`` like the checkpoints."""

    def __init__(self, unet: DynamiCrafterUNet):
        super().__init__()
        self.diffusion_model = unet


def _tile(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Match a per-sample tensor kept in ``Conditions.extras`` to a batch stacked by
    ``Conditions.repeat`` (which concatenates whole copies)."""
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise ValueError(f"condition batch {x.shape[0]} does not divide the latent batch {batch}")
    return x.repeat(batch // x.shape[0], *([1] * (x.ndim - 1)))


def _flags(flags: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
    if flags is None:
        return None
    flags = flags.to(device=device, dtype=torch.bool)
    if flags.shape != (batch,):
        raise ValueError(f"drop flags must have shape ({batch},), got {tuple(flags.shape)}")
    return flags if bool(flags.any()) else None


def _replace_rows(x: torch.Tensor, null: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    if drop is None:
        return x
    return torch.where(drop.view(-1, *([1] * (x.ndim - 1))), null.to(x.dtype).expand_as(x), x)


class DynamiCrafterI2V(VideoDiffusionModel):
    image_to_video = True

    def __init__(
        self,
        unet: DynamiCrafterUNet,
        first_stage: nn.Module,
        text_encoder: nn.Module,
        image_encoder: nn.Module,
        image_proj: nn.Module,
        camera: str | None = None,
        pose_encoder: CameraPoseEncoder | None = None,
        attn_variant: str = "epipolar",
        parameterization: str = "eps",
        num_train_timesteps: int = 1000,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        zero_terminal_snr: bool = False,
        dynamic_rescale: bool = False,
        base_scale: float = 0.7,
        turning_step: int = 400,
        fs_condition_type: str = "frame_stride",
        attn_kwargs: dict | None = None,
        cami2v_add_type: str = "add_to_main_branch",
        first_frame: str = "concat",
        cvd: bool = False,
    ):
        super().__init__()
        if camera is not None and camera not in CAMERA_METHODS:
            raise ValueError(f"camera={camera!r}: choose None or one of {', '.join(CAMERA_METHODS)}")
        check_parameterization(parameterization)
        check_first_frame_mode(first_frame)
        if first_frame != "concat" and dynamic_rescale:
            raise ValueError("first_frame='replace' does not support dynamic_rescale (the clean latent's scale "
                             "would depend on t); use one or the other")
        if first_frame == "replace_residual" and parameterization != "x0":
            raise ValueError(f"first_frame='replace_residual' reads the output as a change of x0: it needs "
                             f"parameterization='x0', got {parameterization!r}")
        if fs_condition_type not in ("frame_stride", "fps"):
            raise ValueError(f"fs_condition_type must be 'frame_stride' or 'fps', got {fs_condition_type!r}")
        needs_pose = camera in ("cameractrl", "cami2v")
        if needs_pose != (pose_encoder is not None):
            raise ValueError(f"camera={camera!r} {'needs' if needs_pose else 'takes no'} pose_encoder")
        self._check_dims(unet, first_stage, text_encoder, image_encoder, image_proj, pose_encoder)

        self.model = _DiffusionWrapper(unet)
        self.first_stage_model = first_stage
        self.cond_stage_model = text_encoder
        self.embedder = image_encoder
        self.image_proj_model = image_proj
        if pose_encoder is not None:
            self.pose_encoder = pose_encoder
        self.camera = camera
        self.attn_variant = attn_variant if camera == "cami2v" else "temporal"
        if cvd and camera != "cameractrl":
            raise ValueError(f"cvd=True synchronises videos over CameraCtrl; got camera={camera!r}")
        self.cvd = cvd
        # CVD's options (tau, masked, path) configure its sync modules, not a CamI2V context
        self.attn_kwargs = {} if cvd else dict(attn_kwargs or {})
        context_kwargs(self.attn_kwargs)  # unknown options fail here, not in the first forward
        self.parameterization = parameterization
        self.first_frame = first_frame  # see camvid.diffusion.i2v
        self.num_train_timesteps = num_train_timesteps
        self.fs_condition_type = fs_condition_type
        self.supports = {"text", "image"} | ({"camera"} if camera else set())
        if camera == "motionctrl":
            add_motionctrl(unet)
        elif camera == "cameractrl":
            add_cameractrl(unet)
        elif camera == "cami2v":
            add_cami2v(unet, attn_variant, attn_kwargs, cami2v_add_type)
        self.sync = None
        if cvd:
            from camvid.models.cvd.dynamicrafter import install_cvd_on_dynamicrafter

            self.sync = install_cvd_on_dynamicrafter(unet, **(attn_kwargs or {}))

        # lvdm's "linear" schedule is linear in sqrt(beta): diffusers' "scaled_linear"
        self.register_buffer("alphas_cumprod", make_alphas_cumprod(num_train_timesteps, "scaled_linear", linear_start,
                                                                   linear_end, zero_terminal_snr), persistent=False)
        self.use_dynamic_rescale = dynamic_rescale
        if dynamic_rescale:
            self.register_buffer("scale_arr", dynamic_rescale_scales(num_train_timesteps, base_scale, turning_step),
                                 persistent=False)
        self.freeze_base()

    @staticmethod
    def _check_dims(unet, first_stage, text_encoder, image_encoder, image_proj, pose_encoder) -> None:
        context_dim = unet.context_dim
        if unet.in_channels != 2 * first_stage.latent_channels or unet.out_channels != first_stage.latent_channels:
            raise ValueError(f"UNet in/out channels {unet.in_channels}/{unet.out_channels} do not fit a first stage "
                             f"with {first_stage.latent_channels} latent channels (need 2x / 1x)")
        if text_encoder.dim != context_dim:
            raise ValueError(f"text encoder dim {text_encoder.dim} != UNet context_dim {context_dim}")
        proj_in = getattr(image_proj, "proj_in", None)
        if proj_in is not None and proj_in.in_features != image_encoder.dim:
            raise ValueError(f"image encoder dim {image_encoder.dim} != image_proj embedding_dim {proj_in.in_features}")
        proj_out = getattr(image_proj, "proj_out", None)
        if proj_out is not None and proj_out.out_features != context_dim:
            raise ValueError(f"image_proj output_dim {proj_out.out_features} != UNet context_dim {context_dim}")
        if pose_encoder is not None:
            if list(pose_encoder.channels) != unet.level_channels():
                raise ValueError(f"pose encoder channels {list(pose_encoder.channels)} != UNet level widths "
                                 f"{unet.level_channels()}")
            if pose_encoder.downscale_factor != first_stage.downsample:
                raise ValueError(f"pose encoder downscale_factor {pose_encoder.downscale_factor} != first stage "
                                 f"downsampling {first_stage.downsample}: level 0 must land on the latent grid")

    @property
    def unet(self) -> DynamiCrafterUNet:
        return self.model.diffusion_model

    def load_pretrained(self, path) -> dict[str, int]:
        """Official weights (see ``camvid.models.dynamicrafter.checkpoint``); returns what was loaded."""
        from camvid.models.dynamicrafter.checkpoint import load_dynamicrafter_weights

        return load_dynamicrafter_weights(self, path)

    def load_weights(self, path, kind: str = "auto") -> dict[str, int]:
        """``kind="base"`` (a DynamiCrafter ``model.ckpt``: every base parameter required) or
        ``"method"`` (a released camera-method checkpoint over a loaded base); see
        ``camvid.models.dynamicrafter.checkpoint``."""
        from camvid.models.dynamicrafter.checkpoint import load_dynamicrafter_weights

        return load_dynamicrafter_weights(self, path, kind=kind)

    # ------------------------------------------------------------------ training setup

    def trainable_modules(self) -> list[nn.Module]:
        """Full DynamiCrafter fine-tuning trains UNet + image projector (official); a camera method
        trains only its new modules (and, for MotionCtrl, the temporal ``attn2``)."""
        if self.camera is None:
            return [self.unet, self.image_proj_model]
        if self.cvd:  # CVD: CameraCtrl frozen, only the sync modules train
            return [self.unet.epi_modules]
        modules = camera_trainable_modules(self.unet, self.camera)
        if hasattr(self, "pose_encoder"):
            modules.append(self.pose_encoder)
        return modules

    def freeze_base(self) -> None:
        self.requires_grad_(False)
        for module in self.trainable_modules():
            module.requires_grad_(True)

    # ------------------------------------------------------------------ pixels <-> latents

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model.encode(video)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model.decode(z)

    # ------------------------------------------------------------------ conditions

    @torch.no_grad()
    def conditions(self, batch: dict, latents: torch.Tensor | None = None) -> Conditions:
        video = batch["video"]
        b, t = video.shape[:2]
        if latents is None:
            latents = self.encode_video(video)
        rows = torch.arange(b, device=video.device)
        cond_index = batch.get("cond_index")
        cond_index = torch.zeros(b, dtype=torch.long, device=video.device) if cond_index is None else cond_index.long()
        if bool((cond_index < 0).any() | (cond_index >= t).any()):
            raise ValueError(f"cond_index {cond_index.tolist()} out of range for {t} frames")
        frame = video[rows, cond_index]

        captions = batch.get("caption")
        if captions is None or len(captions) != b:
            raise ValueError(f"batch['caption'] must be a list of {b} strings")
        if self.fs_condition_type == "fps":
            if "fps" not in batch:
                raise ValueError("this DynamiCrafter model is conditioned on fps (fs_condition_type='fps'); "
                                 "the batch has no 'fps' entry")
            fs = batch["fps"]
        else:
            fs = batch.get("frame_stride")
        camera = None
        if self.camera is not None:
            if "K" not in batch or "c2w" not in batch:
                raise ValueError(f"camera method {self.camera!r} needs batch['K'] and batch['c2w']")
            camera = CameraInputs(K=batch["K"], c2w=batch["c2w"], image_hw=tuple(video.shape[-2:]),
                                  cond_index=cond_index, num_views=int(batch.get("num_views", 1)))
        extras = {}
        if self.cvd:
            if int(batch.get("num_views", 1)) != 2:
                raise ValueError(f"CVD on DynamiCrafter denoises interleaved video pairs (num_views=2, "
                                 f"[a0, b0, a1, b1, ...]); batch has num_views={batch.get('num_views', 1)}")
            if batch.get("homography") is not None:
                extras["homography"] = batch["homography"]
        return Conditions(
            camera_free=batch_camera_free(batch),
            text=self.cond_stage_model(list(captions)),
            image=self.embedder(frame),
            camera=camera,
            frame_stride=None if fs is None else torch.as_tensor(fs, device=video.device).long(),
            extras={
                "cond_latent": latents[rows, :, cond_index],
                "cond_index": cond_index,
                "null_text": self.cond_stage_model([""]),
                "null_image": self.embedder(torch.zeros_like(frame[:1])),
                **extras,
            },
        )

    # ------------------------------------------------------------------ denoiser

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        b, _, frames = z_t.shape[:3]
        device = z_t.device
        text = _replace_rows(_tile(cond.text, b), cond.extras["null_text"], _flags(cond.drop_text, b, device))
        image_emb = _replace_rows(_tile(cond.image, b), cond.extras["null_image"], _flags(cond.drop_image, b, device))
        image = self.image_proj_model(image_emb.to(z_t.dtype))
        if image.ndim == 4 and image.shape[1] != frames:
            raise ValueError(f"the image projector makes tokens for {image.shape[1]} frames, the latent has {frames}")
        concat = _tile(cond.extras["cond_latent"], b).to(z_t.dtype)
        z_in = z_t
        if self.first_frame != "concat":
            cond_index = _tile(cond.extras["cond_index"], b)
            z_in = replace_conditioning_frame(z_t, concat, cond_index)
        x = torch.cat([z_in, concat.unsqueeze(2).expand(-1, -1, frames, -1, -1)], dim=1)
        fs = None if cond.frame_stride is None else _tile(cond.frame_stride, b)
        camera = None
        if self.camera is not None and not cond.camera_free:  # camera-free: CVD's WebVid phase
            camera = self._unet_camera(cond.camera, _flags(cond.drop_camera, b, device), z_t)
        if self.sync is None:
            out = self.unet(x, t, text.to(z_t.dtype), image, fs, camera)
        else:
            pairs = cond.camera if cond.camera.K.shape[0] == b else camera_repeat(cond.camera, b)
            homography = cond.extras.get("homography")
            with self.sync.bind(pairs, b, frames, None if homography is None else _tile(homography, b)):
                out = self.unet(x, t, text.to(z_t.dtype), image, fs, camera)
        if self.first_frame == "replace_residual":
            out = add_conditioning_residual(out, concat)
        if self.first_frame != "concat":
            out = exact_conditioning_output(out, z_t, t, concat, cond_index, self.alphas_cumprod, self.parameterization)
        return out

    def _unet_camera(self, camera: CameraInputs | None, drop: torch.Tensor | None, z_t: torch.Tensor) -> UNetCamera:
        b, _, frames, h, w = z_t.shape
        if camera is None:
            raise ValueError(f"camera method {self.camera!r} got no cameras in its conditions")
        if camera.K.shape[0] != b:
            camera = camera_repeat(camera, b)
        if tuple(camera.K.shape) != (b, frames, 3, 3) or tuple(camera.c2w.shape) != (b, frames, 4, 4):
            raise ValueError(f"cameras K {tuple(camera.K.shape)} / c2w {tuple(camera.c2w.shape)} do not match "
                             f"the latent ({b} videos x {frames} frames)")
        height, width = camera.image_hw
        f = self.first_stage_model.downsample
        if (height, width) != (h * f, w * f):
            raise ValueError(f"camera image_hw {camera.image_hw} != latent {h}x{w} x first-stage factor {f}")
        out = UNetCamera()
        keep = None if drop is None else (~drop).view(b, 1, 1)
        if self.camera == "motionctrl":
            rt = invert_rigid(camera.c2w.float())[..., :3, :4].reshape(b, frames, 12)
            out.rt = (rt if keep is None else rt * keep).to(z_t.dtype)
            return out
        plucker = plucker_rays(camera.K.float(), camera.c2w.float(), height, width)
        if keep is not None:
            plucker = plucker * keep.view(b, 1, 1, 1, 1)
        out.pose_features = self.pose_encoder(plucker.to(z_t.dtype))
        if self.attn_variant != "temporal":
            out.attention_context = build_attention_context(self.attn_variant, camera, drop, self.attn_kwargs)
        return out


def camera_repeat(camera: CameraInputs, batch: int) -> CameraInputs:
    """Cameras of a batch stacked ``n`` times, like ``Conditions.repeat`` stacks tensors."""
    n = batch // camera.K.shape[0]
    if n * camera.K.shape[0] != batch:
        raise ValueError(f"camera batch {camera.K.shape[0]} does not divide the latent batch {batch}")
    ci = None if camera.cond_index is None else camera.cond_index.repeat(n)
    return CameraInputs(K=camera.K.repeat(n, 1, 1, 1), c2w=camera.c2w.repeat(n, 1, 1, 1), image_hw=camera.image_hw,
                        cond_index=ci, num_views=camera.num_views)
