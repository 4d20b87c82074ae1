"""A trained run and a clip to look at: checkpoint loading, the run's evaluation clips, noised forwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

__all__ = ["LoadedRun", "load_run", "load_released", "run_clip", "clip_from_image", "clip_frames", "noised_forward"]


@dataclass
class LoadedRun:
    cfg: DictConfig  # the run's resolved training config
    method: torch.nn.Module  # the method with the checkpoint's weights, in eval mode
    checkpoint: Path

    @property
    def name(self) -> str:
        return f"{self.cfg.model.name}/{self.cfg.attn.name}"

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.cfg.backbone.height), int(self.cfg.backbone.width)

    @property
    def num_frames(self) -> int:
        return int(self.cfg.backbone.num_frames)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """A run directory (its latest checkpoint) or one ``<run>/checkpoints/step_<N>`` directory."""
    from camvid.sampling import load_trained_method, resolve_checkpoint
    from camvid.training.checkpoint import STATE_NAME

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run not found: {path} (give a run directory or <run>/checkpoints/step_<N>; "
                                "`make demo` writes outputs/demo/train)")
    ckpt = resolve_checkpoint(ckpt_path=path if (path / STATE_NAME).is_file() else None, run_dir=path)
    cfg, method = load_trained_method(ckpt, device)
    return LoadedRun(cfg, method, ckpt)


def load_released(overrides: list[str] | str, device: str | torch.device = "cpu",
                  conf_dir: str | Path | None = None) -> LoadedRun:
    """A method from released weights, configured like ``src/sample.py`` without a run directory, e.g.
    ``["model=cami2v", "backbone=dynamicrafter_256", "pretrained=model.ckpt", "method_ckpt=256_cami2v.pt"]``
    (docs/models.md). ``conf_dir``: the repository's ``conf/`` (default: next to ``src/``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from camvid.sampling import pretrained_method

    if isinstance(overrides, str):
        overrides = overrides.split()
    conf = Path(conf_dir) if conf_dir else Path(__file__).resolve().parents[3] / "conf"
    if not (conf / "sample.yaml").is_file():
        raise FileNotFoundError(f"{conf}/sample.yaml not found: pass conf_dir=<repository>/conf")
    if not any(o.startswith("model=") for o in overrides):
        raise ValueError(f"released weights need model=... among the overrides, got {overrides}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=list(overrides))
    cfg, method, source = pretrained_method(cfg, device)
    return LoadedRun(cfg, method, Path(source))


def run_clip(run: LoadedRun, index: int = 0, split: str = "test", root: str | Path | None = None,
             stride: int | None = None) -> dict:
    """Clip ``index`` of the run's evaluation data (the run's ``data.root`` unless ``root``), collated:
    one video, or one group of ``num_views`` videos for multi-view methods."""
    from camvid.data import build_eval_dataset

    dataset = build_eval_dataset(run.cfg.data, root=None if root is None else str(root), split=split, stride=stride)
    if not 0 <= index < len(dataset):
        raise ValueError(f"clip index {index} is outside the {len(dataset)} clips of split {split!r}")
    return dataset.collate([dataset[index]])


def clip_from_image(run: LoadedRun, image: str | Path, trajectory: str, caption: str = "",
                    fov_deg: float = 60.0, seed: int = 0) -> dict:
    """A batch like ``src/sample.py`` builds: an image (frame 0, the others zero) and a camera path (preset
    name or pose file). For image-to-video models; the notebooks then run the sampler on it."""
    from camvid.sampling import load_image, trajectory_cameras

    hw, T = run.image_hw, run.num_frames
    picture, src_hw = load_image(image, hw)
    K, c2w = trajectory_cameras(trajectory, T, hw, src_hw=src_hw, fov_deg=fov_deg, seed=seed)
    video = torch.zeros(1, T, 3, *hw)
    video[:, 0] = picture
    return {"video": video, "K": K[None], "c2w": c2w[None], "cond_index": torch.zeros(1, dtype=torch.long),
            "frame_stride": torch.full((1,), int(run.cfg.data.stride_eval), dtype=torch.long),
            "caption": [caption], "key": [Path(image).stem], "num_views": 1}


def clip_frames(video: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> (T, H, W, 3) uint8 for plotting."""
    from camvid.viz.video import to_uint8_video

    return to_uint8_video(video)


@torch.no_grad()
def noised_forward(run: LoadedRun, batch: dict, timesteps: list[int], seed: int = 0) -> list[torch.Tensor]:
    """One conditional denoiser call per timestep on the batch's own videos noised to ``t``.

    The same input for every model, so their attention can be compared; the outputs (eps or v) are
    returned. Run it inside ``camvid.attention.capture`` to record the attention.
    """
    from camvid.diffusion import q_sample

    method = run.method
    device = next(method.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    latents = method.encode_video(batch["video"])
    cond = method.conditions(batch, latents)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    outs = []
    for t in timesteps:
        if not 0 <= int(t) < len(method.alphas_cumprod):
            raise ValueError(f"timestep {t} is outside [0, {len(method.alphas_cumprod)})")
        noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
        tt = torch.full((latents.shape[0],), int(t), dtype=torch.long, device=device)
        outs.append(method.denoise(q_sample(latents, tt, noise, method.alphas_cumprod), tt, cond))
    return outs
