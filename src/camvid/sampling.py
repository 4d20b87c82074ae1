"""Sampling from a trained run: checkpoint + image (+ caption) + camera trajectory -> video.

Used by ``src/sample.py`` (single video, or batch mode over a test list writing the folder layout
of :mod:`camvid.evaluation.layout`) and by the demo.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from camvid.diffusion.guidance import Guidance
from camvid.geometry.cameras import (
    normalized_to_pixel_intrinsics,
    read_pose_file,
    relative_poses,
    resize_crop_intrinsics,
    w2c_to_c2w,
)
from camvid.models.base import VideoDiffusionModel
from camvid.trajectories import resolve_trajectories, save_path_picture, source_aspect
from camvid.viz.video import to_uint8_video, write_gif

__all__ = [
    "sampler_settings",
    "resolve_checkpoint",
    "load_trained_method",
    "load_image",
    "trajectory_cameras",
    "generate",
    "run_sampling",
    "shard_indices",
    "sample_test_clip",
    "SamplingProtocol",
]


def resolve_checkpoint(ckpt_path: str | Path | None = None, run_dir: str | Path | None = None) -> Path:
    """A ``step_<N>`` directory: the one given, or the latest of ``run_dir``."""
    from camvid.training.checkpoint import STATE_NAME, WEIGHTS_NAME, find_latest, verify_checkpoint

    if ckpt_path:
        ckpt = Path(ckpt_path)
        if not (ckpt / STATE_NAME).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt}: not a checkpoint directory (no {STATE_NAME})")
    else:
        if not run_dir:
            raise ValueError("give ckpt_path=<run>/checkpoints/step_<N> or run_dir=<run>")
        ckpt = find_latest(Path(run_dir) / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"run_dir={run_dir}: no checkpoint under {Path(run_dir) / 'checkpoints'}")
    verify_checkpoint(ckpt, files=[WEIGHTS_NAME])  # complete and intact, or an error naming the file
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


def pose_source_hw(intrinsics: np.ndarray, hw: tuple[int, int],
                   override: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (height, width) of the video a pose file's normalised intrinsics refer to.

    RealEstate10K intrinsics have square pixels, ``fx * W = fy * H``, so ``W / H = fy / fx``: the
    source aspect. Its scale does not matter (normalised intrinsics), so the source is taken with
    the generation height. ``override`` (``pose_source_hw=[H,W]``) wins.
    """
    if override is not None:
        if len(override) != 2 or min(int(v) for v in override) < 1:
            raise ValueError(f"pose_source_hw={list(override)}: give [height, width] in pixels")
        return int(override[0]), int(override[1])
    fx, fy = float(np.median(intrinsics[:, 0])), float(np.median(intrinsics[:, 1]))
    if fx <= 0 or fy <= 0:
        raise ValueError(f"pose file intrinsics fx={fx}, fy={fy}: must be positive")
    return hw[0], max(1, round(hw[0] * float(source_aspect([fx, fy]))))


def trajectory_cameras(spec: str, num_frames: int, hw: tuple[int, int], *, src_hw: tuple[int, int] | None = None,
                       fov_deg: float = 60.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(K (T, 3, 3) pixels at ``hw``, c2w (T, 4, 4) relative to frame 0) from a pose file or a preset.

    A RealEstate10K pose file's normalised intrinsics refer to the video the poses came from (its
    size: ``src_hw`` when given, else the square-pixel aspect of :func:`pose_source_hw`), then
    follow the resize and centre crop of the data path to ``hw``. A warning is issued when the
    result does not have square pixels.
    """
    from camvid.data.synthetic import PRESET_KINDS, default_intrinsics, make_trajectory

    path = Path(spec)
    if path.suffix == ".txt" or path.is_file():
        track = read_pose_file(path)
        if len(track) < num_frames:
            raise ValueError(f"{path}: {len(track)} poses, the model generates {num_frames} frames")
        track = track.subset(range(num_frames))
        src = pose_source_hw(track.intrinsics, hw, src_hw)
        K = normalized_to_pixel_intrinsics(torch.from_numpy(track.intrinsics), src[1], src[0])
        K = resize_crop_intrinsics(K, src, hw)
        fx, fy = float(K[0, 0, 0]), float(K[0, 1, 1])
        if abs(fx - fy) > 0.01 * max(fx, fy):
            import warnings

            warnings.warn(f"{path}: intrinsics at {hw[0]}x{hw[1]} have non-square pixels (fx {fx:.1f} px, fy "
                          f"{fy:.1f} px) with the source size {src[0]}x{src[1]}; check pose_source_hw", stacklevel=2)
        c2w = w2c_to_c2w(torch.from_numpy(track.w2c))
    elif spec in PRESET_KINDS:
        c2w = torch.from_numpy(make_trajectory(spec, num_frames, seed))
        K = torch.from_numpy(default_intrinsics(hw[0], hw[1], fov_deg)).expand(num_frames, 3, 3).clone()
    else:
        raise ValueError(f"trajectory={spec!r}: not a pose file and not a preset ({', '.join(PRESET_KINDS)})")
    return K.float(), relative_poses(c2w.double(), 0).float()


def merged_guidance(cfg: DictConfig, override=None) -> dict:
    """The model's guidance with the keys of ``override`` replaced (``guidance.camera_scale=1``
    changes that key only; the image/text scale and rescale keep the model's values)."""
    guidance = OmegaConf.to_container(cfg.model.guidance, resolve=True)
    if override is None:
        return guidance
    if OmegaConf.is_config(override):
        override = OmegaConf.to_container(override, resolve=True)
    if not isinstance(override, dict):
        raise ValueError(f"guidance={override!r}: give keys, e.g. guidance.camera_scale=1")
    override = {k: v for k, v in override.items() if v is not None}
    known = set(guidance) | {f.name for f in fields(Guidance)}
    unknown = sorted(set(override) - known)
    if unknown:
        raise ValueError(f"guidance keys {unknown} are unknown; guidance has {sorted(known)}")
    return {**guidance, **override}


def collaborative_settings(cfg: DictConfig, override=None) -> dict:
    """CVD multi-view settings (model ``collaborative``: strategy, partitions, recurrent steps),
    updated by the sample-time ``collaborative`` keys."""
    node = cfg.model.get("collaborative")
    settings = {} if node is None else OmegaConf.to_container(node, resolve=True)
    if override:
        if OmegaConf.is_config(override):
            override = OmegaConf.to_container(override, resolve=True)
        settings.update({k: v for k, v in override.items() if v is not None})
    return settings


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
             eta: float | None = None, guidance=None, collaborative=None) -> torch.Tensor:
    """Sample the videos of ``batch`` (single videos, or groups of views for multi-view methods) with
    the method's guidance and sampler settings of ``cfg`` (a training config) unless overridden."""
    from camvid.diffusion.collaborative import sample_collaborative_video
    from camvid.diffusion.sampler import sample_video

    guidance = merged_guidance(cfg, guidance)
    if getattr(method, "sampling_only", False):  # released systems through their own pipelines (camvid.baselines)
        return method.generate(batch, seed=int(seed), steps=steps, guidance=guidance)
    device = next(method.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    settings = sampler_settings(cfg, steps, eta)
    num_steps = settings.pop("steps")
    gen = torch.Generator(device=device).manual_seed(int(seed))
    views = int(batch.get("num_views", 1))
    if views > 1:
        B = batch["video"].shape[0]
        shape = tuple(method.encode_video(batch["video"][:1]).shape[1:])
        collab = collaborative_settings(cfg, collaborative)
        return sample_collaborative_video(method, batch, num_videos=views, num_steps=num_steps,
                                          guidance=guidance, generator=gen, latent_shape=(B, *shape),
                                          **collab, **settings)
    return sample_video(method, batch, num_steps=num_steps, guidance=guidance, generator=gen, **settings)


def reverse_trajectory(K: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The trajectory played backwards, relative to its new first frame (the public CVD inference
    samples the second video of a pair along the reversed trajectory)."""
    return K.flip(0), relative_poses(c2w.flip(0).double(), 0).float()


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
    # pose files / videos / scaled presets -> a path transferred to this image (camvid.trajectories);
    # a transferred file's normalised intrinsics refer to the image (``target``), a preset's to ``hw``
    pose_hw = cfg.get("pose_source_hw")
    target = src_hw or hw
    paths = resolve_trajectories(specs, cfg.out_dir, T, target, translation_scale=cfg.get("trajectory_scale"),
                                 stride=int(cfg.get("trajectory_stride", 1)), fov_deg=cfg.fov_deg,
                                 seed=cfg.trajectory_seed, source_hw=None if pose_hw is None else tuple(pose_hw))
    cams = [trajectory_cameras(p, T, hw, src_hw=target, fov_deg=cfg.fov_deg, seed=cfg.trajectory_seed + i)
            for i, p in enumerate(paths)]
    if views > 1 and cfg.get("reverse_second", False):
        cams[1] = reverse_trajectory(*cams[1])
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
    out = generate(method, train_cfg, batch, seed=cfg.seed, steps=cfg.steps, eta=cfg.eta, guidance=cfg.guidance,
                   collaborative=cfg.get("collaborative"))
    written = []
    for i, spec in enumerate(specs):
        sid = "sample" if len(specs) == 1 else f"view{i}"
        frames = to_uint8_video(out[i])
        folder = write_sample(cfg.out_dir, sid, frames, batch["K"][i].numpy(), batch["c2w"][i].numpy(),
                              caption=str(cfg.caption), seed=int(cfg.seed), fps=cfg.fps,
                              meta={"method": train_cfg.model.name, "attn": train_cfg.attn.name,
                                    "checkpoint": str(ckpt), "trajectory": spec,
                                    "group": "single" if len(specs) > 1 else None, "view": i,
                                    "paper_row": train_cfg.get("paper_row")})
        write_gif(folder / "video.gif", frames, fps=cfg.fps)
        save_path_picture(folder, batch["K"][i].numpy(), batch["c2w"][i].numpy(), hw, str(spec))
        written.append(folder)
    return written


def shard_indices(n: int, shard_index: int = 0, num_shards: int = 1) -> list[int]:
    """The test-clip indices one of ``num_shards`` ranks / array tasks samples: every ``num_shards``-th,
    so the shards are disjoint and together cover ``range(n)``."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} / num_shards={num_shards}: need 0 <= shard_index < num_shards")
    return list(range(shard_index, n, num_shards))


PROMPT_SOURCES = ("test", "webvid")


@dataclass(frozen=True)
class SamplingProtocol:
    """How test clips become samples (CVD's evaluation protocols; docs/evaluation.md).

    - ``pairs``: every test clip is a RealEstate10K trajectory pair (a folded clip: two trajectories
      from one start). A multi-view method (CVD) samples its pairs anyway; a single-video method
      (CameraCtrl, MotionCtrl, CamI2V) generates the two videos one at a time, with the same prompt
      and the clip's seed (the two draw different noise, as CVD's two videos do), and they are
      written as one group, so CLIP-F and the cross-video metrics apply to it.
    - ``identical_trajectories``: the second video of each pair takes the first one's trajectory
      (CVD appendix A.5, scored by the ``identical_mse`` metric family).
    - ``prompts``: ``test`` (the clips' own captions) or ``webvid`` (captions from ``prompts_path``,
      clip ``i`` taking entry ``i`` of a fixed permutation of the file: CVD's "WebVid prompts").
    """

    pairs: bool = False
    identical_trajectories: bool = False
    prompts: str = "test"
    prompts_path: str | None = None
    prompts_seed: int = 0
    captions: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_config(cls, node, where: str = "protocol") -> SamplingProtocol:
        """From a config node (``stage_sample.protocol`` / sample.yaml's ``protocol``); None: the default."""
        from camvid.data.prompts import load_prompts

        values = {} if node is None else (OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node)
                                          else dict(node))
        known = {"pairs", "identical_trajectories", "prompts", "prompts_path", "prompts_seed"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        for key in ("pairs", "identical_trajectories"):
            if not isinstance(values.get(key, False), bool):
                raise ValueError(f"{where}.{key}={values[key]!r}: give true or false")
        source = values.get("prompts") or "test"
        if source not in PROMPT_SOURCES:
            raise ValueError(f"{where}.prompts={source!r}: choose one of {list(PROMPT_SOURCES)}")
        path = values.get("prompts_path")
        captions: tuple[str, ...] = ()
        if source == "webvid":
            if not path:
                raise ValueError(f"{where}.prompts=webvid needs {where}.prompts_path: a WebVid CSV (column "
                                 "'name'), a JSON list of captions or a text file with one per line")
            captions = tuple(load_prompts(path))
        seed = values.get("prompts_seed", 0)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{where}.prompts_seed={seed!r}: give an integer >= 0")
        return cls(pairs=bool(values.get("pairs", False)),
                   identical_trajectories=bool(values.get("identical_trajectories", False)),
                   prompts=source, prompts_path=None if path is None else str(path), prompts_seed=seed,
                   captions=captions)

    def describe(self) -> dict:
        """What a sample's ``meta.json`` records about the protocol."""
        return {"pairs": self.pairs, "identical_trajectories": self.identical_trajectories, "prompts": self.prompts,
                **({"prompts_path": self.prompts_path} if self.prompts != "test" else {})}


def model_views(train_cfg: DictConfig) -> int:
    """How many videos the method generates together (1: single-video methods)."""
    return int(train_cfg.model.get("views", 1) or 1)


def eval_split_dataset(train_cfg: DictConfig, root, split: str = "test", stride: int | None = None,
                       pairs: bool = False):
    """The evaluation split of the run's data config; ``pairs=True`` reads it as folded
    RealEstate10K trajectory pairs also for a single-video method (``SamplingProtocol.pairs``)."""
    from camvid.data import build_eval_dataset

    stride = int(stride) if stride is not None else int(train_cfg.data.stride_eval)
    data_cfg = train_cfg.data
    if pairs and int(data_cfg.get("views", 1) or 1) == 1:
        if data_cfg.get("format") == "webvid":
            raise ValueError(f"protocol.pairs=true needs RealEstate10K trajectories; data={data_cfg.get('name')} "
                             "is WebVid (no cameras)")
        data_cfg = OmegaConf.merge(data_cfg, {"pairing": "fold", "views": 2})
    return build_eval_dataset(data_cfg, root=root, split=split, stride=stride)


def _scene_key(key: str) -> str:
    """The clip a pair's video came from: its key without the view suffix (``clip:a`` -> ``clip``)."""
    return re.sub(r":[a-z]$", "", str(key))


def _same_trajectory(batch: dict, views: int) -> dict:
    """Every view of a group takes the first view's cameras (and GT frames, which they then share)."""
    batch = dict(batch)
    for name in ("K", "c2w", "video"):
        value = batch[name].clone()
        first = value[0::views]
        for v in range(1, views):
            value[v::views] = first
        batch[name] = value
    return batch


def sample_test_clip(method: VideoDiffusionModel, train_cfg: DictConfig, dataset, idx: int, out_dir, *,
                     base_seed: int, ckpt, steps=None, eta=None, guidance=None, collaborative=None,
                     fps: float = 8, skip_existing: bool = True, test_root=None, split: str = "test",
                     protocol: SamplingProtocol | None = None) -> list[Path]:
    """Sample test clip ``idx`` into ``out_dir`` (one folder per video, GT beside it). The noise seed
    is ``base_seed + idx``, so a clip's sample is the same whichever rank or shard draws it; a clip
    whose folders are all written already is skipped (an interrupted run resumes). ``test_root`` /
    ``split``: where the clip came from, for the conditioning frame's depth (camera-following metric).
    ``protocol``: pairs, identical trajectories and the prompt source (:class:`SamplingProtocol`)."""
    from camvid.data.prompts import prompt_for
    from camvid.evaluation.camera_following import save_conditioning_depth
    from camvid.evaluation.layout import META_FILE, write_sample

    protocol = protocol or SamplingProtocol()
    item = dataset[idx]
    batch = dataset.collate([item])
    views = int(batch.get("num_views", 1))
    n_videos = batch["video"].shape[0]
    groups = [_scene_key(batch["key"][v]) for v in range(n_videos)]
    ids = [batch["key"][v] if views == 1 else f"{groups[v]}_view{v % views}" for v in range(n_videos)]
    folders = [Path(out_dir) / sid for sid in ids]
    used_guidance = merged_guidance(train_cfg, guidance)
    if skip_existing and all((f / META_FILE).is_file() for f in folders):
        earlier = json.loads((folders[0] / META_FILE).read_text()).get("guidance")
        if earlier is not None and earlier != used_guidance:
            raise ValueError(f"{folders[0]} was sampled with guidance {earlier}, this run asks for {used_guidance}: "
                             "sample into another folder, or delete the old samples to replace them")
        return []
    if protocol.identical_trajectories:
        if views < 2:
            raise ValueError("protocol.identical_trajectories=true needs trajectory pairs: a multi-view method "
                             "(model=cvd) or protocol.pairs=true")
        batch = _same_trajectory(batch, views)
    meta_protocol = protocol.describe()
    if protocol.prompts == "webvid":
        caption, row = prompt_for(list(protocol.captions), idx, protocol.prompts_seed)
        batch["caption"] = [caption] * n_videos
        meta_protocol["prompt_row"] = row
    # a single-video method on a pair: the two videos are generated one at a time (one batch of
    # independent videos, so each draws its own noise), then written as one group
    together = views > 1 and model_views(train_cfg) > 1
    gen_batch = batch if together or views == 1 else {**batch, "num_views": 1}
    if views > 1:
        meta_protocol["pair_sampling"] = "joint" if together else "independent"
    seed = int(base_seed) + idx
    out = generate(method, train_cfg, gen_batch, seed=seed, steps=steps, eta=eta, guidance=used_guidance,
                   collaborative=collaborative)
    written = []
    for v in range(out.shape[0]):
        frames = to_uint8_video(out[v])
        folder = write_sample(
            out_dir, ids[v], frames, batch["K"][v].numpy(), batch["c2w"][v].numpy(),
            caption=batch["caption"][v], seed=seed, gt_video=to_uint8_video(batch["video"][v]), fps=fps,
            meta={"method": train_cfg.model.name, "attn": train_cfg.attn.name, "checkpoint": str(ckpt),
                  "frame_stride": int(batch["frame_stride"][v]), "paper_row": train_cfg.get("paper_row"),
                  "group": groups[v] if views > 1 else None, "view": v % views, "protocol": meta_protocol,
                  "guidance": used_guidance},
        )
        write_gif(folder / "video.gif", frames, fps=fps)
        if test_root is not None:  # exact depth of the conditioning frame (camera following)
            # a pair's videos start on the clip's shared frame: its depth is found under the clip's key
            save_conditioning_depth(folder, test_root, split, batch if views == 1 else {**batch, "key": groups}, v)
        save_path_picture(folder, batch["K"][v].numpy(), batch["c2w"][v].numpy(), tuple(frames.shape[1:3]), ids[v])
        written.append(folder)
    return written


def _batch_mode(cfg: DictConfig, train_cfg: DictConfig, method: VideoDiffusionModel, ckpt: Path,
                protocol: SamplingProtocol) -> list[Path]:
    dataset = eval_split_dataset(train_cfg, cfg.test_data, cfg.split, cfg.stride, pairs=protocol.pairs)
    n = min(int(cfg.num_samples), len(dataset))
    written = []
    for idx in shard_indices(n, int(cfg.get("shard_index") or 0), int(cfg.get("num_shards") or 1)):
        written += sample_test_clip(method, train_cfg, dataset, idx, cfg.out_dir, base_seed=int(cfg.seed),
                                    ckpt=ckpt, steps=cfg.steps, eta=cfg.eta, guidance=cfg.guidance,
                                    collaborative=cfg.get("collaborative"), fps=cfg.fps, test_root=cfg.test_data,
                                    split=cfg.split, protocol=protocol)
    return written


def pretrained_method(cfg: DictConfig, device) -> tuple[DictConfig, VideoDiffusionModel, str]:
    """No run directory: the method of ``cfg.model`` on ``cfg.backbone`` from the released files
    (``pretrained=`` base, optional ``method_ckpt=``). ``cfg`` serves as the training config."""
    from camvid.models.registry import build_method

    if cfg.model.get("sampling_only"):
        method = build_method(cfg)
        if cfg.model.get("reference_run"):
            method.set_reference(reference_sampler(cfg.model.reference_run, device))
        return cfg, method.to(device).eval(), f"released {cfg.model.name} (model.weights)"
    if not cfg.get("pretrained"):
        raise ValueError(f"model={cfg.model.name} without run_dir/ckpt_path samples released weights: give "
                         "pretrained=PATH (the base checkpoint) and, for a camera method, method_ckpt=PATH")
    method = build_method(cfg)
    source = str(cfg.get("method_ckpt") or cfg.pretrained)
    return cfg, method.to(device).eval(), source


def reference_sampler(run_dir, device):
    """The text-to-video half of a sampling-only pair baseline: the latest checkpoint of a camvid run
    (``model.reference_run``), sampled with that run's own settings."""
    from pathlib import Path as _Path

    if not (_Path(str(run_dir)) / "checkpoints").is_dir():
        raise FileNotFoundError(f"model.reference_run={run_dir}: no checkpoints there. MotionCtrl+SVD renders view 0 "
                                "of every pair with a MotionCtrl text-to-video run: run the CVD Table 1 MotionCtrl row "
                                "first (python src/train.py experiment=cvd_t1_re10k_motionctrl) or point "
                                "model.reference_run at such a run")
    ref_cfg, ref_method = load_trained_method(resolve_checkpoint(run_dir=run_dir), device)

    def render(batch: dict, *, seed: int, steps: int | None = None) -> torch.Tensor:
        return generate(ref_method, ref_cfg, batch, seed=seed, steps=steps).float().cpu()

    return render


def run_sampling(cfg: DictConfig) -> list[Path]:
    """Entry point of ``src/sample.py``."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # the protocol's options and prompt file are checked before the model is built
    protocol = SamplingProtocol.from_config(cfg.get("protocol")) if cfg.test_data else None
    if cfg.get("model") is not None and not (cfg.ckpt_path or cfg.run_dir):
        train_cfg, method, ckpt = pretrained_method(cfg, device)
    else:
        ckpt = resolve_checkpoint(cfg.ckpt_path, cfg.run_dir)
        train_cfg, method = load_trained_method(ckpt, device)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    if cfg.test_data:
        return _batch_mode(cfg, train_cfg, method, ckpt, protocol)
    return _single(cfg, train_cfg, method, ckpt)
