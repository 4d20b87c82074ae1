"""Local weight files of the quality metrics and where to get them.

Nothing is downloaded: every metric network loads from a path in ``conf/eval.yaml``. A missing
file raises :class:`MissingWeights`, whose message names the file and its public source; the
evaluator then marks that metric "not computed" and carries on with the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["WeightSpec", "WEIGHTS", "MissingWeights", "require_weights"]


@dataclass(frozen=True)
class WeightSpec:
    key: str
    filename: str
    used_by: str
    source: str


WEIGHTS: dict[str, WeightSpec] = {
    spec.key: spec
    for spec in (
        WeightSpec(
            "i3d_videogpt", "i3d_pretrained_400.pt", "FVD (VideoGPT protocol)",
            "the Kinetics-400 I3D state dict that VideoGPT downloads (github.com/wilson1yan/VideoGPT, "
            "videogpt/download.py, load_i3d_pretrained); also shipped by github.com/zhizhou57/FVD",
        ),
        WeightSpec(
            "i3d_stylegan", "i3d_torchscript.pt", "FVD (StyleGAN-V protocol)",
            "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V / fvd-comparison)",
        ),
        WeightSpec(
            "fid_inception", "pt_inception-2015-12-05-6726825d.pth", "FID and KID",
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
        ),
        WeightSpec(
            "clip", "a CLIP model folder (config.json, model.safetensors, tokenizer files)", "CLIP-T and CLIP-F",
            "https://huggingface.co/openai/clip-vit-large-patch14 (save a local copy with "
            "CLIPModel/CLIPTokenizer.save_pretrained)",
        ),
        WeightSpec(
            "disk", "depth-save.pth", "the LightGlue matcher's DISK keypoints (geometry metrics)",
            "https://github.com/cvlab-epfl/disk (depth-save.pth; also https://huggingface.co/kornia/disk)",
        ),
        WeightSpec(
            "lightglue_disk", "disk_lightglue.pth", "the LightGlue matcher (geometry metrics)",
            "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/disk_lightglue.pth",
        ),
    )
}


class MissingWeights(FileNotFoundError):
    """A metric's weight file is not on disk; the message says what to fetch and from where."""


def require_weights(key: str, path: str | Path | None) -> Path:
    spec = WEIGHTS[key]
    if path is None or str(path) == "":
        raise MissingWeights(
            f"{spec.used_by}: no path configured for {spec.filename}; get it from {spec.source} "
            f"and set eval.weights.{key} in conf/eval.yaml"
        )
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingWeights(f"{spec.used_by}: weight file not found: {path} ({spec.filename}); "
                             f"get it from {spec.source}")
    return path
