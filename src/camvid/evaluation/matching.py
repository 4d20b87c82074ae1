"""Pluggable two-image feature matchers for the CVD geometry-consistency metrics.

A matcher is any callable ``matcher(image0, image1) -> Matches`` taking two uint8 (H, W, 3)
images. CVD used SuperGlue; its weights are not redistributable here, so the default is SIFT
(pycolmap) with mutual nearest neighbours and Lowe's ratio test. Users with learned-matcher
weights plug their own callable in through ``conf/eval.yaml`` (``geometry.matcher._target_``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Matches", "Matcher", "SiftMatcher", "mutual_ratio_matches"]


@dataclass
class Matches:
    """Keypoints of both images in pixels (pixel centres at +0.5) and index pairs into them."""

    keypoints0: np.ndarray  # (N0, 2)
    keypoints1: np.ndarray  # (N1, 2)
    matches: np.ndarray  # (M, 2) int, rows (i0, i1)

    @property
    def points0(self) -> np.ndarray:
        return self.keypoints0[self.matches[:, 0]]

    @property
    def points1(self) -> np.ndarray:
        return self.keypoints1[self.matches[:, 1]]


class Matcher(Protocol):
    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> Matches: ...


def mutual_ratio_matches(desc0: np.ndarray, desc1: np.ndarray, max_ratio: float = 0.8) -> np.ndarray:
    """Mutual nearest neighbours (L2) that also pass the ratio test in both directions."""
    if len(desc0) == 0 or len(desc1) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    d0 = desc0.astype(np.float32)
    d1 = desc1.astype(np.float32)
    sq = (d0**2).sum(1)[:, None] + (d1**2).sum(1)[None, :] - 2.0 * d0 @ d1.T
    dist = np.sqrt(np.maximum(sq, 0.0))
    nn01 = dist.argmin(1)
    nn10 = dist.argmin(0)
    idx0 = np.arange(len(d0))
    mutual = nn10[nn01] == idx0

    def ratio_ok(dmat: np.ndarray) -> np.ndarray:
        if dmat.shape[1] < 2:
            return np.ones(dmat.shape[0], dtype=bool)
        two = np.partition(dmat, 1, axis=1)[:, :2]
        return two[:, 0] < max_ratio * two[:, 1]

    keep = mutual & ratio_ok(dist) & ratio_ok(dist.T)[nn01]
    return np.stack([idx0[keep], nn01[keep]], axis=1).astype(np.int64)


class SiftMatcher:
    """SIFT keypoints (pycolmap, CPU) matched by mutual nearest neighbours and the ratio test."""

    def __init__(self, max_num_features: int = 4096, max_ratio: float = 0.8,
                 estimate_affine_shape: bool = False, domain_size_pooling: bool = False) -> None:
        self.max_num_features = max_num_features
        self.max_ratio = max_ratio
        self.estimate_affine_shape = estimate_affine_shape
        self.domain_size_pooling = domain_size_pooling
        self._sift = None

    def _extractor(self):
        if self._sift is None:
            import pycolmap

            options = pycolmap.FeatureExtractionOptions()
            options.num_threads = 1
            options.sift.max_num_features = self.max_num_features
            options.sift.estimate_affine_shape = self.estimate_affine_shape
            options.sift.domain_size_pooling = self.domain_size_pooling
            with warnings.catch_warnings():
                # pycolmap.Sift is the one extractor that takes and returns plain numpy arrays
                warnings.simplefilter("ignore", DeprecationWarning)
                self._sift = pycolmap.Sift(options, pycolmap.Device.cpu)
        return self._sift

    def features(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"SiftMatcher: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        gray = (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0
        keypoints, descriptors = self._extractor().extract(np.ascontiguousarray(gray))
        return np.asarray(keypoints)[:, :2].astype(np.float64), np.asarray(descriptors, dtype=np.float32)

    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> Matches:
        k0, d0 = self.features(image0)
        k1, d1 = self.features(image1)
        return Matches(k0, k1, mutual_ratio_matches(d0, d1, self.max_ratio))
