"""Where the released systems of the sampling-only baselines live on disk, and the error a missing
file gives. Nothing is downloaded: place the folders by hand (docs/models.md, "Sampling-only baselines")."""

from __future__ import annotations

from pathlib import Path

__all__ = ["LAYOUT", "SOURCES", "require"]

# config key -> default name under the weights folder (``model.weights.<key>`` overrides the path)
LAYOUT = {
    "sd15": "stable-diffusion-v1-5",
    "motion_adapter": "animatediff-motion-adapter-v1-5-3",
    "sparsectrl": "animatediff-sparsectrl-rgb",
    "cameractrl": "CameraCtrl.ckpt",
    "svd": "stable-video-diffusion-img2vid",
    "motionctrl_svd": "motionctrl_svd.ckpt",
}

SOURCES = {
    "sd15": "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5 (diffusers folders unet/, vae/, "
            "text_encoder/, tokenizer/)",
    "motion_adapter": "https://huggingface.co/guoyww/animatediff-motion-adapter-v1-5-3 (diffusers MotionAdapter: "
                      "AnimateDiff v3's v3_sd15_mm.ckpt)",
    "sparsectrl": "https://huggingface.co/guoyww/animatediff-sparsectrl-rgb (diffusers SparseControlNetModel: "
                  "v3_sd15_sparsectrl_rgb.ckpt)",
    "cameractrl": "https://huggingface.co/hehao13/CameraCtrl (CameraCtrl.ckpt, the AnimateDiff v3 release)",
    "svd": "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid (diffusers pipeline folder, 14 frames)",
    "motionctrl_svd": "https://huggingface.co/TencentARC/MotionCtrl (motionctrl_svd.ckpt, the SVD release)",
}


def require(path, key: str, option: str, folder: bool) -> Path:
    """``path`` if it exists (a folder or a file, as ``folder`` says), else FileNotFoundError naming the
    option that set it and where the weights come from."""
    p = Path(str(path))
    ok = p.is_dir() if folder else p.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise FileNotFoundError(
            f"{option}={p}: no such {kind}. It holds {LAYOUT[key]} from {SOURCES[key]}; download it there by hand "
            f"(nothing is fetched by camvid), set CAMVID_WEIGHTS, or point {option} at it (docs/models.md, "
            "\"Sampling-only baselines\")")
    return p
