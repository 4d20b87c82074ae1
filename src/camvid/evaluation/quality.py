"""Video and frame quality metrics of both papers: FVD (two protocols), FID, KID, CLIP-T, CLIP-F.

- FVD, VideoGPT protocol (CamI2V table 1, via fvdcal): frames resized bilinearly to 224 x 224,
  scaled to [-1, 1], I3D logits (400-d) as the embedding.
- FVD, StyleGAN-V protocol (CamI2V table 1): short side resized to 128 (ceil), centre crop
  128 x 128, [-1, 1], StyleGAN-V's TorchScript I3D with ``rescale=False, resize=True,
  return_features=True``.
- Both use the Frechet distance ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(sqrt(S1) S2 sqrt(S1)))``.
- FID / KID (CVD table 2, KID reported x100): torchmetrics with :class:`FidInceptionV3` as the
  feature extractor over all frames; the real set is the GT videos.
- CLIP-T: cosine similarity of every frame's CLIP image embedding with the caption's text
  embedding; CLIP-F: cosine similarity of the frames with the same time index in two videos of one
  scene (CVD's cross-video consistency). Averaged over frames, then over videos / video pairs.
"""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "frechet_distance",
    "preprocess_videogpt",
    "preprocess_stylegan",
    "FvdScorer",
    "frame_fid_kid",
    "ClipScorer",
]


def frechet_distance(x1: np.ndarray, x2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (float64)."""
    from scipy import linalg

    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    if len(x1) < 2 or len(x2) < 2:
        raise ValueError(f"Frechet distance needs at least 2 samples per set, got {len(x1)} and {len(x2)}")
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    # tr(sqrt(S1 S2)) via the symmetric form sqrt(S1) S2 sqrt(S1), whose eigenvalues are real
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = linalg.eigvalsh(root1 @ s2 @ root1)
    trace_sqrt = np.sqrt(np.clip(inner, 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def _to_float_frames(videos: torch.Tensor) -> torch.Tensor:
    if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected uint8 videos (B, T, H, W, 3), got {videos.dtype} {tuple(videos.shape)}")
    B, T, H, W, _ = videos.shape
    return videos.permute(0, 1, 4, 2, 3).reshape(B * T, 3, H, W).float()


def preprocess_videogpt(videos: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> (B, 3, T, size, size) in [-1, 1], plain bilinear resize."""
    B, T = videos.shape[:2]
    x = F.interpolate(_to_float_frames(videos), size=(size, size), mode="bilinear", align_corners=False)
    return (2.0 * x / 255.0 - 1.0).view(B, T, 3, size, size).transpose(1, 2).contiguous()


def preprocess_stylegan(videos: torch.Tensor, size: int = 128) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> (B, 3, T, size, size) in [-1, 1]: short side to ``size``, centre crop."""
    B, T, H, W = videos.shape[:4]
    scale = size / min(H, W)
    new_hw = (size, math.ceil(W * scale)) if H < W else (math.ceil(H * scale), size)
    x = F.interpolate(_to_float_frames(videos), size=new_hw, mode="bilinear", align_corners=False)
    top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return (2.0 * x / 255.0 - 1.0).reshape(B, T, 3, size, size).transpose(1, 2).contiguous()


class FvdScorer:
    """FVD of one protocol (``"videogpt"`` or ``"stylegan"``) with a loaded detector."""

    def __init__(self, protocol: str, detector, device: str | torch.device = "cpu", batch_size: int = 8,
                 resolution: int | None = None) -> None:
        if protocol not in ("videogpt", "stylegan"):
            raise ValueError(f"FVD protocol must be 'videogpt' or 'stylegan', got {protocol!r}")
        self.protocol, self.detector = protocol, detector
        self.device, self.batch_size = torch.device(device), batch_size
        # the protocols' input sizes; tests shrink it to keep random-weight checks fast
        self.resolution = resolution or (224 if protocol == "videogpt" else 128)

    @torch.no_grad()
    def embed(self, videos: np.ndarray) -> np.ndarray:
        """uint8 (B, T, H, W, 3) -> (B, D) float64 embeddings."""
        out = []
        for i in range(0, len(videos), self.batch_size):
            batch = torch.as_tensor(np.asarray(videos[i : i + self.batch_size]))
            if self.protocol == "videogpt":
                x = preprocess_videogpt(batch, self.resolution).to(self.device)
                feats = self.detector(x)
            else:
                x = preprocess_stylegan(batch, self.resolution).to(self.device)
                feats = self.detector(x, rescale=False, resize=True, return_features=True)
            out.append(feats.double().cpu().numpy())
        return np.concatenate(out)

    def __call__(self, real: np.ndarray, fake: np.ndarray) -> float:
        return frechet_distance(self.embed(real), self.embed(fake))


class _Precomputed(torch.nn.Module):
    """Identity "feature extractor": the Inception runs once per frame, FID and KID share its output."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@torch.no_grad()
def frame_fid_kid(real_frames: np.ndarray, fake_frames: np.ndarray, inception: torch.nn.Module,
                  device: str | torch.device = "cpu", batch_size: int = 32, kid_subsets: int = 100,
                  kid_subset_size: int = 1000) -> dict[str, float]:
    """FID and KID (mean, std; x100 as CVD reports) of two uint8 (N, H, W, 3) frame sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real_frames), len(fake_frames))
    if n < 2:
        raise ValueError(f"FID/KID need at least 2 frames per set, got {len(real_frames)} and {len(fake_frames)}")
    inception = inception.to(device).eval()
    identity = _Precomputed(int(inception.num_features))
    fid = FrechetInceptionDistance(feature=identity, normalize=False).to(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=identity, subsets=kid_subsets, subset_size=min(kid_subset_size, n),
                                      normalize=False).to(device)
    for frames, real in ((real_frames, True), (fake_frames, False)):
        for i in range(0, len(frames), batch_size):
            batch = torch.as_tensor(np.asarray(frames[i : i + batch_size])).permute(0, 3, 1, 2).to(device)
            features = inception(batch)
            fid.update(features, real=real)
            kid.update(features, real=real)
    kid_mean, kid_std = kid.compute()
    return {"FID": float(fid.compute()), "KID": 100.0 * float(kid_mean), "KID_std": 100.0 * float(kid_std)}


_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    """CLIP-T and CLIP-F with a transformers CLIP loaded from a local folder."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        import json

        from transformers import AutoTokenizer, CLIPModel

        model_dir = Path(model_dir)
        self.model = CLIPModel.from_pretrained(model_dir).to(device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.device, self.batch_size = torch.device(device), batch_size
        self.image_size = int(self.model.config.vision_config.image_size)
        mean, std = _OPENAI_MEAN, _OPENAI_STD
        processor = model_dir / "preprocessor_config.json"
        if processor.is_file():
            cfg = json.loads(processor.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        # transformers >= 5 returns a model output whose pooler_output holds the projected embedding
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP's preprocessing: bicubic short-side resize, centre crop, mean/std normalisation."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        H, W = x.shape[-2:]
        s = self.image_size / min(H, W)
        new_hw = (max(self.image_size, round(H * s)), max(self.image_size, round(W * s)))
        x = F.interpolate(x, size=new_hw, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (new_hw[0] - self.image_size) // 2, (new_hw[1] - self.image_size) // 2
        x = x[:, :, top : top + self.image_size, left : left + self.image_size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        out = []
        for i in range(0, len(frames), self.batch_size):
            pixels = self._pixels(torch.as_tensor(np.asarray(frames[i : i + self.batch_size])))
            emb = self._pooled(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_embedding(self, caption: str) -> torch.Tensor:
        tokens = self.tokenizer([caption], padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        emb = self._pooled(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                        attention_mask=tokens["attention_mask"].to(self.device)))
        return F.normalize(emb.float(), dim=-1).cpu()[0]

    def clip_t(self, video: np.ndarray, caption: str) -> float:
        """Mean over frames of cos(image, caption) for one uint8 (T, H, W, 3) video."""
        return float((self.image_embeddings(video) @ self.text_embedding(caption)).mean())

    def clip_f(self, videos: list[np.ndarray]) -> float:
        """Mean over video pairs and frames of cos(frame_t of video a, frame_t of video b)."""
        if len(videos) < 2:
            raise ValueError("CLIP-F needs at least two videos of one scene")
        embs = [self.image_embeddings(v) for v in videos]
        sims = [float((ea * eb).sum(-1).mean()) for ea, eb in itertools.combinations(embs, 2)]
        return float(np.mean(sims))
