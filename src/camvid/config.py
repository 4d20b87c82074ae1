"""Config-level checks: an invalid combination of config groups fails here, at start-up, with one
sentence naming both options, never deep inside a forward pass."""

from __future__ import annotations

from omegaconf import DictConfig

__all__ = ["ConfigError", "choice", "check_combination"]


class ConfigError(ValueError):
    """A combination of config options that cannot run."""


def choice(cfg: DictConfig, group: str) -> str:
    """The option name selected for ``group`` (as typed on the command line), for messages."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            picked = HydraConfig.get().runtime.choices.get(group)
            if picked:
                return str(picked)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    node = cfg.get(group)
    return str(node.get("name", "?")) if node is not None else "?"


def check_combination(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` when model, backbone, attn and data cannot work together."""
    model, backbone, attn, data = cfg.model, cfg.backbone, cfg.attn, cfg.data
    m, b, a, d = (f"{g}={choice(cfg, g)}" for g in ("model", "backbone", "attn", "data"))

    if backbone.family not in model.families:
        needs = " or ".join(model.families)
        raise ConfigError(
            f"Invalid combination: {m} does not run on {b} (a {backbone.family} backbone); "
            f"{m} needs a {needs} backbone."
        )
    if attn.name not in model.attn_variants:
        allowed = ", ".join(f"attn={v}" for v in model.attn_variants)
        if attn.views != model.views:
            why = (
                f"{a} synchronises {attn.views} videos but {m} generates {model.views}"
                if attn.views > model.views
                else f"{a} works within one video but {m} generates {model.views} videos together"
            )
        else:
            why = f"{m} has no cross-frame camera module for {a}"
        raise ConfigError(f"Invalid combination: {why}; with {m} use {allowed}.")
    if model.name == "cami2v" and backbone.family == "animatediff" and attn.name == "temporal":
        raise ConfigError(f"Invalid combination: {m} on {b} is CameraCtrl plus a cross-frame attention, and {a} "
                          "adds none; use attn=epipolar, epipolar_ref or full3d (or model=cameractrl).")
    if data.views != model.views:
        if model.views > 1:
            why = f"{m} trains on video pairs but {d} yields single videos; use data=re10k_fold, webvid_homography or cvd_mix"
        else:
            why = f"{d} yields video pairs but {m} generates single videos; use data=re10k or data=synthetic"
        raise ConfigError(f"Invalid combination: {why}.")
