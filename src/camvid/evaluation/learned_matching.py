"""A learned matcher for the CVD geometry metrics: DISK keypoints matched by LightGlue (kornia).

CVD matched with SuperGlue, whose weights may not be redistributed. LightGlue (Lindenberger et
al. 2023) is SuperGlue's successor from the same group; kornia ships it together with the DISK
detector, with no torchvision dependency. It plugs into the geometry protocol like SIFT
(``geometry.matcher._target_=camvid.evaluation.learned_matching.LightGlueMatcher``, see
docs/evaluation.md). Its numbers are **not numerically comparable with the paper's SuperGlue
numbers** (other detector, other matcher, other training data); they rank methods the same way a
learned matcher does, and the GT videos' reference column says what the matcher reaches on real
frames.

Weights are read from local files only, never downloaded (kornia's own constructors would fetch
them): DISK's ``depth-save.pth`` (``{"extractor": state_dict}``, cvlab-epfl/disk) and LightGlue's
``disk_lightglue.pth`` (cvg/LightGlue release v0.1_arxiv, blocks stored as ``self_attn.<i>`` /
``cross_attn.<i>``). A missing file raises :class:`~camvid.evaluation.weights.MissingWeights`,
naming it and where to get it; the evaluator then marks the geometry rows "not computed". kornia
itself is an optional extra (``pip install -e ".[matchers]"``).

SuperPoint is not offered: kornia (0.9) has LightGlue weights for SuperPoint but no SuperPoint
detector.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from camvid.evaluation.matching import Matches
from camvid.evaluation.weights import require_weights

__all__ = ["LightGlueMatcher", "FEATURES", "official_to_kornia_lightglue", "kornia_to_official_lightglue"]

# features -> (weight key of camvid.evaluation.weights, LightGlue weight key, descriptor dim)
FEATURES = {"disk": ("disk", "lightglue_disk", 128)}
# LightGlue buffers the kornia module derives itself (absent from the released files)
_DERIVED = {"confidence_thresholds"}


def _kornia_feature():
    try:
        import kornia.feature as kf
    except ImportError as err:
        raise ImportError(f"the LightGlue matcher needs kornia ({err}); install the optional extra: "
                          "pip install -e \".[matchers]\"") from err
    return kf


def official_to_kornia_lightglue(state: dict) -> dict:
    """LightGlue's released key layout (``self_attn.<i>.*``, ``cross_attn.<i>.*``) -> kornia's
    (``transformers.<i>.self_attn.*``); other keys are the same in both."""
    return {re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", k): v for k, v in state.items()}


def kornia_to_official_lightglue(state: dict) -> dict:
    """The inverse of :func:`official_to_kornia_lightglue` (for writing files in the released layout)."""
    return {re.sub(r"^transformers\.(\d+)\.(self_attn|cross_attn)\.", r"\2.\1.", k): v for k, v in state.items()
            if k not in _DERIVED}


def _load_state(path: Path, what: str) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which one
        raise ValueError(f"{what}: {path} is not a readable torch state dict ({err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {path} holds a {type(state).__name__}, expected a state dict")
    return state


def _load_strict(module: torch.nn.Module, state: dict, path: Path, what: str, derived=frozenset()) -> None:
    expected = set(module.state_dict())
    missing = sorted(expected - set(state) - set(derived))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{what}: {path} does not have the released key layout: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes of another configuration
        raise ValueError(f"{what}: {path}: {err}") from err


class LightGlueMatcher:
    """DISK keypoints + LightGlue matches, as a matcher of :mod:`camvid.evaluation.matching`.

    Args:
        features: the local features (``"disk"``).
        extractor_weights: DISK's ``depth-save.pth`` (or ``epipolar-save.pth``).
        lightglue_weights: ``disk_lightglue.pth`` of LightGlue's v0.1_arxiv release.
        max_num_keypoints: DISK keypoints kept per image (the strongest).
        filter_threshold: LightGlue's match confidence threshold (its default 0.1).
        device: torch device of both networks.
    """

    def __init__(self, features: str = "disk", extractor_weights: str | None = None,
                 lightglue_weights: str | None = None, max_num_keypoints: int = 2048,
                 filter_threshold: float = 0.1, device: str = "cpu") -> None:
        if features not in FEATURES:
            raise ValueError(f"LightGlueMatcher features={features!r}: choose one of {sorted(FEATURES)}")
        if int(max_num_keypoints) < 1:
            raise ValueError(f"LightGlueMatcher max_num_keypoints={max_num_keypoints}: must be >= 1")
        if not 0.0 <= float(filter_threshold) < 1.0:
            raise ValueError(f"LightGlueMatcher filter_threshold={filter_threshold}: must be in [0, 1)")
        extractor_key, lightglue_key, dim = FEATURES[features]
        extractor_path = require_weights(extractor_key, extractor_weights)
        lightglue_path = require_weights(lightglue_key, lightglue_weights)
        kf = _kornia_feature()
        self.features = features
        self.max_num_keypoints = int(max_num_keypoints)
        self.device = torch.device(device)

        self.extractor = kf.DISK(desc_dim=dim)
        state = _load_state(extractor_path, "DISK weights")
        state = state.get("extractor", state) if isinstance(state.get("extractor"), dict) else state
        _load_strict(self.extractor, state, extractor_path, "DISK weights")

        # features=None: kornia builds the network without fetching anything; the DISK configuration
        # of LightGlue is its default one with 128-d input descriptors
        self.lightglue = kf.LightGlue(features=None, input_dim=dim, filter_threshold=float(filter_threshold),
                                      flash=False)
        state = official_to_kornia_lightglue(_load_state(lightglue_path, "LightGlue weights"))
        _load_strict(self.lightglue, state, lightglue_path, "LightGlue weights", derived=_DERIVED)
        self.extractor.to(self.device).eval()
        self.lightglue.to(self.device).eval()

    @torch.no_grad()
    def keypoints(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """DISK keypoints (N, 2) in kornia's pixel frame (pixel centres at integers) and descriptors (N, D)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"LightGlueMatcher: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        feats = self.extractor(x, n=self.max_num_keypoints, pad_if_not_divisible=True)[0]
        return feats.keypoints, feats.descriptors

    @torch.no_grad()
    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> Matches:
        k0, d0 = self.keypoints(image0)
        k1, d1 = self.keypoints(image1)

        def side(k, d, image):
            size = torch.tensor([[image.shape[1], image.shape[0]]], device=self.device, dtype=k.dtype)  # (W, H)
            return {"keypoints": k[None], "descriptors": d[None], "image_size": size}

        out = self.lightglue({"image0": side(k0, d0, image0), "image1": side(k1, d1, image1)})
        matches = out["matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2)
        # camvid's keypoints have pixel centres at +0.5 (COLMAP's convention, like SiftMatcher's)
        return Matches(k0.cpu().double().numpy() + 0.5, k1.cpu().double().numpy() + 0.5, matches)
