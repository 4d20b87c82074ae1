"""The training loop's view of the data: prepare (rank 0 only), then one loader per rank."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from camvid.data import build_train_dataloader, prepare_dataset

__all__ = ["prepare_data", "build_train_loader", "prepare_synthetic"]


def prepare_data(data_cfg: DictConfig, accelerator) -> None:
    """Render/shard the embedded synthetic set when the data config asks for it; others wait."""
    if accelerator.is_main_process:
        prepare_dataset(data_cfg)
    accelerator.wait_for_everyone()


def build_train_loader(cfg: DictConfig, rank: int, world_size: int, skip_batches: int = 0):
    """This rank's endless training loader; ``skip_batches`` restores the data position on resume
    (the loader drops those samples before decoding them)."""
    from omegaconf import OmegaConf

    # model.rand_cond_frame: the released CamI2V-repo configs condition CamI2V on a random frame and
    # MotionCtrl / CameraCtrl on frame 0
    data_cfg = dict(OmegaConf.to_container(cfg.data, resolve=True),
                    random_cond=bool(cfg.model.get("rand_cond_frame", True)))
    return build_train_dataloader(
        data_cfg, batch_size=int(cfg.trainer.batch_size), num_workers=int(cfg.trainer.num_workers),
        seed=int(cfg.seed), rank=rank, world_size=world_size, skip_batches=skip_batches,
        cap_workers=bool(cfg.trainer.get("cap_workers", True)),
    )


def prepare_synthetic(root: str | Path, *, num_clips: int, num_frames: int, height: int, width: int,
                      seed: int = 0, webvid_clips: int = 0) -> Path:
    """Render + shard a synthetic set at ``root`` (what ``data=synthetic`` does on first use)."""
    prepare_dataset({"root": str(root), "prepare": {
        "num_clips": num_clips, "num_frames": num_frames, "height": height, "width": width, "seed": seed,
        "webvid_clips": webvid_clips}})
    return Path(root)
