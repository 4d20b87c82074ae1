"""Sampling from a trained run: checkpoint + image (+ caption) + camera trajectory -> video.

Used by ``src/sample.py`` (single video, or batch mode over a test list writing the folder layout
of :mod:`camvid.evaluation.layout`) and by the demo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from camvid.geometry.cameras import (
    normalized_to_pixel_intrinsics,
    read_pose_file,
    relative_poses,
    resize_crop_intrinsics,
    w2c_to_c2w,
)
from camvid.models.base import VideoDiffusionModel
from camvid.training.preview import to_uint8_video, write_gif

__all__ = [
    "sampler_settings",
    "resolve_checkpoint",
    "load_trained_method",
    "load_image",
    "trajectory_cameras",
    "generate",
    "run_sampling",
]


def resolve_checkpoint(ckpt_path: str | Path | None = None, run_dir: str | Path | None = None) -> Path:
    """A ``step_<N>`` directory: the one given, or the latest of ``run_dir``."""
    from camvid.training.checkpoint import STATE_NAME, find_latest

    if ckpt_path:
        ckpt = Path(ckpt_path)
        if not (ckpt / STATE_NAME).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt}: not a checkpoint directory (no {STATE_NAME})")
        return ckpt
    if not run_dir:
        raise ValueError("give ckpt_path=<run>/checkpoints/step_<N> or run_dir=<run>")
    ckpt = find_latest(Path(run_dir) / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"run_dir={run_dir}: no checkpoint under {Path(run_dir) / 'checkpoints'}")
    return ckpt


def load_trained_method(ckpt: Path, device: torch.device | str = "cpu") -> tuple[DictConfig, VideoDiffusionModel]:
    """Rebuild the method from the run's resolved config and load the checkpoint's trained weights."""
    from camvid.models.registry import build_method, set_trainable
    from camvid.training.checkpoint import WEIGHTS_NAME, load_trainable_state_dict

    run_dir = ckpt.parent.parent
    cfg_path = run_dir / "config_resolved.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: the run's resolved config is missing (written by src/train.py)")
    cfg = OmegaConf.load(cfg_path)
    method = build_method(cfg)
    set_trainable(method, cfg)
    weights = ckpt / WEIGHTS_NAME
    load_trainable_state_dict(method, load_file(str(weights)), str(weights))
    return cfg, method.to(device).eval()


def load_image(path: str | Path, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Short-side resize + centre crop to ``hw``: ((3, H, W) in [-1, 1], original (h, w))."""
    from PIL import Image

    from camvid.geometry.cameras import resize_crop_geometry

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    img = Image.open(path).convert("RGB")
    src_hw = (img.height, img.width)
    s, top, left = resize_crop_geometry(src_hw, hw)
    new_h, new_w = max(hw[0], round(src_hw[0] * s)), max(hw[1], round(src_hw[1] * s))
    img = img.resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + hw[1], top + hw[0]))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return x, src_hw


def trajectory_cameras(spec: str, num_frames: int, hw: tuple[int, int], *, src_hw: tuple[int, int] | None = None,
                       fov_deg: float = 60.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(K (T, 3, 3) pixels at ``hw``, c2w (T, 4, 4) relative to frame 0) from a pose file or a preset.

    A RealEstate10K pose file's normalised intrinsics refer to the source frames (``src_hw``, the
    conditioning image's original size; ``hw`` if unknown), then follow the resize and centre crop.
    """
    from camvid.data.synthetic import TRAJECTORY_KINDS, default_intrinsics, make_trajectory

    path = Path(spec)
    if path.suffix == ".txt" or path.is_file():
        track = read_pose_file(path)
        if len(track) < num_frames:
            raise ValueError(f"{path}: {len(track)} poses, the model generates {num_frames} frames")
        track = track.subset(range(num_frames))
        src = src_hw or hw
        K = normalized_to_pixel_intrinsics(torch.from_numpy(track.intrinsics), src[1], src[0])
        K = resize_crop_intrinsics(K, src, hw)
        c2w = w2c_to_c2w(torch.from_numpy(track.w2c))
    elif spec in TRAJECTORY_KINDS:
        c2w = torch.from_numpy(make_trajectory(spec, num_frames, seed))
        K = torch.from_numpy(default_intrinsics(hw[0], hw[1], fov_deg)).expand(num_frames, 3, 3).clone()
    else:
        raise ValueError(f"trajectory={spec!r}: not a pose file and not a preset ({', '.join(TRAJECTORY_KINDS)})")
    return K.float(), relative_poses(c2w.double(), 0).float()


def sampler_settings(cfg: DictConfig, steps: int | None = None, eta: float | None = None) -> dict:
    """The method's DDIM settings (conf/model/*.yaml ``sampler``), with optional overrides."""
    settings = OmegaConf.to_container(cfg.model.sampler, resolve=True)
    if steps is not None:
        settings["steps"] = int(steps)
    if eta is not None:
        settings["eta"] = float(eta)
    return settings


@torch.no_grad()
def generate(method: VideoDiffusionModel, cfg: DictConfig, batch: dict, *, seed: int, steps: int | None = None,
             eta: float | None = None, guidance=None) -> torch.Tensor:
    """Sample the videos of ``batch`` (single videos, or groups of views for multi-view methods) with
    the method's guidance and sampler settings of ``cfg`` (a training config) unless overridden."""
    from camvid.diffusion.collaborative import sample_collaborative_video
    from camvid.diffusion.sampler import sample_video

    device = next(method.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if guidance is None:
        guidance = OmegaConf.to_container(cfg.model.guidance, resolve=True)
    elif OmegaConf.is_config(guidance):
        guidance = OmegaConf.to_container(guidance, resolve=True)
    settings = sampler_settings(cfg, steps, eta)
    num_steps = settings.pop("steps")
    gen = torch.Generator(device=device).manual_seed(int(seed))
    views = int(batch.get("num_views", 1))
    if views > 1:
        B = batch["video"].shape[0]
        shape = tuple(method.encode_video(batch["video"][:1]).shape[1:])
        node = cfg.model.get("collaborative")
        collab = {} if node is None else OmegaConf.to_container(node, resolve=True)
        return sample_collaborative_video(method, batch, num_videos=views, num_steps=num_steps,
                                          guidance=guidance, generator=gen, latent_shape=(B, *shape),
                                          **collab, **settings)
    return sample_video(method, batch, num_steps=num_steps, guidance=guidance, generator=gen, **settings)


def _single(cfg: DictConfig, train_cfg: DictConfig, method: VideoDiffusionModel, ckpt: Path) -> list[Path]:
    from camvid.evaluation.layout import write_sample

    hw = (int(train_cfg.backbone.height), int(train_cfg.backbone.width))
    T = int(train_cfg.backbone.num_frames)
    specs = list(cfg.trajectory) if OmegaConf.is_list(cfg.trajectory) else [str(cfg.trajectory)]
    views = int(train_cfg.model.views)
    if views > 1 and len(specs) < 2:
        raise ValueError(f"model={train_cfg.model.name} generates several videos together: give "
                         f"trajectory=[a,b,...] (got {specs})")
    if views == 1 and len(specs) != 1:
        raise ValueError(f"model={train_cfg.model.name} generates one video: give one trajectory (got {specs})")
    image, src_hw = (None, None)
    if method.image_to_video:
        if not cfg.image:
            raise ValueError(f"model={train_cfg.model.name} is image-to-video: give image=PATH")
        image, src_hw = load_image(cfg.image, hw)
    cams = [trajectory_cameras(s, T, hw, src_hw=src_hw, fov_deg=cfg.fov_deg, seed=cfg.trajectory_seed + i)
            for i, s in enumerate(specs)]
    video = torch.zeros(len(specs), T, 3, *hw)
    if image is not None:
        video[:, 0] = image
    batch = {
        "video": video, "K": torch.stack([k for k, _ in cams]), "c2w": torch.stack([c for _, c in cams]),
        "cond_index": torch.zeros(len(specs), dtype=torch.long),
        "frame_stride": torch.full((len(specs),), int(train_cfg.data.stride_eval), dtype=torch.long),
        "caption": [str(cfg.caption)] * len(specs), "key": [f"view{i}" for i in range(len(specs))],
        "num_views": len(specs),
    }
    out = generate(method, train_cfg, batch, seed=cfg.seed, steps=cfg.steps, eta=cfg.eta, guidance=cfg.guidance)
    written = []
    for i, spec in enumerate(specs):
        sid = "sample" if len(specs) == 1 else f"view{i}"
        frames = to_uint8_video(out[i])
        folder = write_sample(cfg.out_dir, sid, frames, batch["K"][i].numpy(), batch["c2w"][i].numpy(),
                              caption=str(cfg.caption), seed=int(cfg.seed), fps=cfg.fps,
                              meta={"method": train_cfg.model.name, "attn": train_cfg.attn.name,
                                    "checkpoint": str(ckpt), "trajectory": spec,
                                    "group": "single" if len(specs) > 1 else None, "view": i})
        write_gif(folder / "video.gif", frames, fps=cfg.fps)
        written.append(folder)
    return written


def _batch_mode(cfg: DictConfig, train_cfg: DictConfig, method: VideoDiffusionModel, ckpt: Path) -> list[Path]:
    from camvid.data import build_eval_dataset
    from camvid.evaluation.camera_following import save_conditioning_depth
    from camvid.evaluation.layout import write_sample

    stride = int(cfg.stride) if cfg.stride is not None else int(train_cfg.data.stride_eval)
    dataset = build_eval_dataset(train_cfg.data, root=cfg.test_data, split=cfg.split, stride=stride)
    n = min(int(cfg.num_samples), len(dataset))
    written = []
    for idx in range(n):
        batch = dataset.collate([dataset[idx]])
        out = generate(method, train_cfg, batch, seed=int(cfg.seed) + idx, steps=cfg.steps, eta=cfg.eta,
                       guidance=cfg.guidance)
        views = int(batch.get("num_views", 1))
        for v in range(out.shape[0]):
            key = batch["key"][v]
            sid = key if views == 1 else f"{key}_view{v % views}"
            frames = to_uint8_video(out[v])
            folder = write_sample(
                cfg.out_dir, sid, frames, batch["K"][v].numpy(), batch["c2w"][v].numpy(),
                caption=batch["caption"][v], seed=int(cfg.seed) + idx, gt_video=to_uint8_video(batch["video"][v]),
                fps=cfg.fps,
                meta={"method": train_cfg.model.name, "attn": train_cfg.attn.name, "checkpoint": str(ckpt),
                      "frame_stride": int(batch["frame_stride"][v]),
                      "group": key if views > 1 else None, "view": v % views},
            )
            write_gif(folder / "video.gif", frames, fps=cfg.fps)
            if views == 1:  # exact depth of the conditioning frame, for the camera-following metric
                save_conditioning_depth(folder, cfg.test_data, cfg.split, batch, v)
            written.append(folder)
    return written


def run_sampling(cfg: DictConfig) -> list[Path]:
    """Entry point of ``src/sample.py``."""
    ckpt = resolve_checkpoint(cfg.ckpt_path, cfg.run_dir)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    train_cfg, method = load_trained_method(ckpt, device)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    if cfg.test_data:
        return _batch_mode(cfg, train_cfg, method, ckpt)
    return _single(cfg, train_cfg, method, ckpt)
