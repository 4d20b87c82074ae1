"""Start-up validation of a composed config: types, ranges and paths, before anything is built.

Hydra composes whatever the command line says (``trainer.max_steps=abc`` is a valid override: the
string "abc"), and without this pass such a value surfaces minutes later as a library error naming no
option (``invalid literal for int()``, an optimizer ``TypeError``) or not at all (``max_steps=-5``
trained zero steps and exited 0). Each entry point runs one pass over every option it uses; all
problems are reported together, one line each: the option, its value, and what is allowed.

The schema is a table of rules below, one per option, next to no code: an option added to
``conf/`` that needs checking gets one line here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from camvid.config import ConfigError

__all__ = ["ConfigValidationError", "ConfigPathError", "validate", "validate_train_config",
           "validate_sample_config", "validate_eval_config", "TRAIN_RULES", "SAMPLE_RULES", "EVAL_RULES"]


class ConfigValidationError(ConfigError):
    """One or more options with a value of the wrong type, out of range, or naming a missing path."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n  ".join(self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n  {lines}")


class ConfigPathError(ConfigValidationError, FileNotFoundError):
    """Every problem is a path that does not exist (also a ``FileNotFoundError``)."""


_ABSENT = object()
Check = Callable[[Any], "str | None"]  # returns what is allowed when the value is bad, else None


@dataclass(frozen=True)
class Rule:
    option: str  # dotted path in the composed config
    check: Check
    nullable: bool = False  # null (None) is allowed
    required: bool = False  # the key must exist (most rules skip options a config group does not have)
    is_path: bool = False
    hint: str = ""  # appended to the message: how to fix it


# --- checks ------------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _bound_text(lo, hi, lo_open=False, hi_open=False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return " and ".join(parts)


def _in_bounds(v, lo, hi, lo_open, hi_open) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v):
        if not _is_int(v) or not _in_bounds(v, lo, hi, False, False):
            bounds = _bound_text(lo, hi)
            return f"an integer{' ' + bounds if bounds else ''}"
        return None
    return check


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Check:
    def check(v):
        if not _is_number(v) or not _in_bounds(v, lo, hi, lo_open, hi_open):
            bounds = _bound_text(lo, hi, lo_open, hi_open)
            return f"a number{' ' + bounds if bounds else ''}"
        return None
    return check


probability = number(0.0, 1.0)


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(*choices) -> Check:
    def check(v):
        return None if v in choices else "one of " + ", ".join("null" if c is None else str(c) for c in choices)
    return check


def auto_or(check: Check) -> Check:
    """The string ``auto`` or what ``check`` accepts."""
    def either(v):
        problem = None if v == "auto" else check(v)
        return None if problem is None else f"auto or {problem}"
    return either


def text(v) -> str | None:
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def number_list(length: int | None = None, lo: float | None = None, hi: float | None = None, *,
                hi_open: bool = False, positive_sum: bool = False, ordered: bool = False,
                integers: bool = False) -> Check:
    item = integer(lo, hi) if integers else number(lo, hi, hi_open=hi_open)
    kind = "integers" if integers else "numbers"

    def check(v):
        bounds = _bound_text(lo, hi, False, hi_open)
        want = (f"a list of {length if length else 'one or more'} {kind}{' ' + bounds if bounds else ''}"
                + (" with a positive sum" if positive_sum else "") + (", the first <= the second" if ordered else ""))
        if not isinstance(v, (list, tuple)) or not v or (length and len(v) != length):
            return want
        if any(item(x) for x in v):
            return want
        if positive_sum and sum(v) <= 0:
            return want
        if ordered and list(v) != sorted(v):
            return want
        return None
    return check


def list_of(choices: Iterable[str]) -> Check:
    allowed = list(choices)

    def check(v):
        if not isinstance(v, (list, tuple)) or any(x not in allowed for x in v):
            return "a list drawn from [" + ", ".join(allowed) + "]"
        return None
    return check


def existing_file(v) -> str | None:
    if not isinstance(v, str) or not v:
        return "a path to an existing file"
    return None if Path(v).expanduser().is_file() else "an existing file (not found)"


def existing_dir(v) -> str | None:
    if not isinstance(v, str) or not v:
        return "a path to an existing directory"
    return None if Path(v).expanduser().is_dir() else "an existing directory (not found)"


def weights_path(v) -> str | None:
    """An existing file or directory, or ``builtin:<name>``: weights shipped with the package."""
    if isinstance(v, str) and v.startswith("builtin:"):
        from camvid.assets import resolve_weights

        try:
            resolve_weights(v)
        except (ValueError, FileNotFoundError) as err:
            return f"a known built-in file ({err})"
        return None
    return existing_path(v)


def existing_path(v) -> str | None:
    if not isinstance(v, str) or not v:
        return "a path to an existing file or directory"
    return None if Path(v).expanduser().exists() else "an existing file or directory (not found)"


# --- the schemas -------------------------------------------------------------------------------------

def _optional_path(option: str, check: Check = existing_path, hint: str = "") -> Rule:
    return Rule(option, check, nullable=True, is_path=True, hint=hint)


_COMMON_MODEL = [
    Rule("seed", integer(0), required=True),
    Rule("backbone.height", integer(8)),
    Rule("backbone.width", integer(8)),
    Rule("backbone.num_frames", integer(1)),
    Rule("model.sampler.steps", integer(1)),
    Rule("model.sampler.eta", number(0.0)),
    Rule("model.guidance.scale", number(0.0)),
    Rule("model.guidance.camera_scale", number(0.0)),
    Rule("model.guidance.rescale", probability),
]

TRAIN_RULES: list[Rule] = [
    *_COMMON_MODEL,
    Rule("trainer.max_steps", integer(1), required=True),
    Rule("trainer.batch_size", integer(1), required=True),
    Rule("trainer.grad_accum", integer(1), required=True),
    Rule("trainer.num_workers", integer(0), required=True),
    Rule("trainer.cap_workers", boolean),
    Rule("trainer.max_grad_norm", number(0.0, lo_open=True)),
    Rule("trainer.lr_warmup_steps", integer(0)),
    Rule("trainer.lr_schedule", one_of("constant", "cosine")),
    Rule("trainer.lr_min_ratio", number(0.0, 1.0)),
    Rule("trainer.fused_optimizer", boolean),
    Rule("trainer.ckpt_every", integer(1)),
    Rule("trainer.keep_last", integer(1)),
    Rule("trainer.log_every", integer(1)),
    Rule("trainer.sample_every", integer(0), nullable=True),
    Rule("trainer.sample_num", integer(1)),
    Rule("trainer.sample_steps", integer(1)),
    Rule("trainer.cpu", boolean),
    Rule("trainer.precision", one_of("no", "fp16", "bf16")),
    Rule("trainer.distributed", one_of(None, "ddp", "deepspeed_zero1"), nullable=True),
    Rule("trainer.zero_stage", one_of(1, 2, 3)),
    Rule("trainer.log_sample_keys", boolean),
    Rule("trainer.find_unused_parameters", boolean),
    Rule("model.optimizer.lr", number(0.0, lo_open=True), required=True),
    Rule("model.optimizer.weight_decay", number(0.0)),
    Rule("model.optimizer.new_modules_lr_scale", number(0.0, lo_open=True)),
    Rule("model.optimizer.betas", number_list(2, 0.0, 1.0, hi_open=True)),
    Rule("model.train_base", one_of("auto", True, False)),
    # every method's schedule has 1000 training timesteps (the loss checks the model's own length)
    Rule("model.train_timesteps", number_list(2, 0, 999, integers=True, ordered=True), nullable=True),
    Rule("model.cond_dropout.uncond_prob", probability),
    Rule("model.cond_dropout.p_text", probability),
    Rule("model.cond_dropout.p_image", probability),
    Rule("model.cond_dropout.p_camera", probability),
    Rule("model.cond_dropout.p_text_and_image", probability, nullable=True),
    Rule("data.shuffle_buffer", integer(0)),
    Rule("data.stride_train", number_list(2, 1, integers=True, ordered=True)),
    Rule("data.stride_eval", integer(1)),
    Rule("data.epoch_length", integer(1), nullable=True),
    Rule("data.overfit_batches", integer(0), nullable=True),
    Rule("data.mix_weights", number_list(2, 0.0, positive_sum=True)),
    Rule("data.handoff_group", auto_or(integer(1))),
    Rule("resume_mismatch", one_of("error", "warn")),
    _optional_path("ckpt_path", existing_dir),
    _optional_path("method_ckpt", existing_file),
    Rule("released_masks", one_of("auto", True, False)),
    _optional_path("pretrained", weights_path, hint="the base model's weights (docs/models.md); set CAMVID_WEIGHTS or "
                   "pretrained=PATH, or use backbone=tiny_<family> to train from scratch"),
]

SAMPLE_RULES: list[Rule] = [
    Rule("seed", integer(0), required=True),
    _optional_path("run_dir", existing_dir),
    _optional_path("ckpt_path", existing_dir),
    _optional_path("image", existing_file),
    _optional_path("test_data", existing_dir),
    Rule("num_samples", integer(1)),
    Rule("stride", integer(1), nullable=True),
    Rule("steps", integer(1), nullable=True),
    Rule("eta", number(0.0), nullable=True),
    Rule("fov_deg", number(0.0, 180.0, lo_open=True, hi_open=True)),
    Rule("trajectory_seed", integer(0)),
    Rule("trajectory_scale", number(0.0, lo_open=True), nullable=True),
    Rule("trajectory_stride", integer(1)),
    Rule("fps", number(0.0, lo_open=True)),
    Rule("split", text),
]

EVAL_RULES: list[Rule] = [
    Rule("samples_dir", existing_dir, required=True, is_path=True),
    Rule("reference", boolean),
    Rule("metrics", list_of(("camera", "camera_following", "geometry", "fvd", "fid_kid", "clip", "identical_mse"))),
    Rule("device", text),
    Rule("camera.trials", integer(1)),
    Rule("camera.base_seed", integer(0)),
    Rule("camera.workers", integer(1)),
    Rule("camera.cache", boolean),
    Rule("camera.progress", boolean),
    Rule("camera.sfm.matcher", one_of("exhaustive", "sequential")),
    Rule("camera.sfm.mapper", one_of("global", "incremental")),
    Rule("camera.sfm.max_num_features", integer(1)),
    Rule("camera.sfm.max_num_matches", integer(1)),
    Rule("camera.sfm.max_epipolar_error", number(0.0, lo_open=True)),
    Rule("camera.sfm.sequential_overlap", integer(1)),
    Rule("camera.sfm.num_threads", integer(-1)),
    Rule("camera.sfm.upscale", integer(1)),
    Rule("geometry.ransac_threshold_px", number(0.0, lo_open=True)),
    Rule("geometry.epipolar_threshold", number(0.0, lo_open=True)),
    Rule("geometry.min_baseline", number(0.0)),
    Rule("geometry.ransac_seed", integer(0)),
    Rule("fvd.batch_size", integer(1)),
    Rule("fvd.protocols", list_of(("videogpt", "stylegan"))),
    Rule("fid_kid.frame_stride", integer(1)),
    Rule("fid_kid.batch_size", integer(1)),
    Rule("fid_kid.kid_subsets", integer(1)),
    Rule("fid_kid.kid_subset_size", integer(1)),
    Rule("clip.batch_size", integer(1)),
    Rule("wandb.enabled", boolean),
]


# --- the pass ----------------------------------------------------------------------------------------

def _value(cfg: DictConfig, option: str):
    """(value, error): the resolved plain value of ``option``, _ABSENT when the key does not exist."""
    node: Any = cfg
    *parents, leaf = option.split(".")
    try:
        for key in parents:  # ``in`` is False for a ??? value, keys() lists it
            if not isinstance(node, DictConfig) or key not in node.keys():
                return _ABSENT, None
            node = node[key]
        if not isinstance(node, DictConfig) or leaf not in node.keys():
            return _ABSENT, None
        if OmegaConf.is_missing(node, leaf):
            return None, "set (it is ???, a required option)"
        value = node[leaf]
    except Exception as err:  # an interpolation that cannot resolve
        return None, f"a resolvable value ({type(err).__name__}: {err})"
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return value, None


def _show(value) -> str:
    if isinstance(value, str):
        return value if value else "''"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def validate(cfg: DictConfig, rules: Iterable[Rule]) -> None:
    """Check every rule; raise one :class:`ConfigValidationError` listing every problem."""
    problems, path_only = [], True
    for rule in rules:
        value, unresolvable = _value(cfg, rule.option)
        if value is _ABSENT:
            if rule.required:
                problems.append(f"{rule.option}: missing; it is required")
                path_only = False
            continue
        if unresolvable:
            problems.append(f"{rule.option}: must be {unresolvable}")
            path_only = False
            continue
        if value is None and rule.nullable:
            continue
        allowed = "a value, not null" if value is None else rule.check(value)
        if allowed:
            line = f"{rule.option}={_show(value)}: must be {allowed}"
            if rule.is_path and value is not None:
                line += f": {Path(str(value)).expanduser().resolve()}"
            else:
                path_only = False
            problems.append(f"{line} ({rule.hint})" if rule.hint else line)
    if problems:
        raise (ConfigPathError if path_only else ConfigValidationError)(problems)


def _data_root_rules(cfg: DictConfig) -> list[Rule]:
    """The data roots must exist unless the data config renders its own data (``data.prepare``)."""
    data = cfg.get("data")
    if data is None or data.get("prepare"):
        return []
    return [Rule(f"data.{key}", existing_dir, is_path=True) for key in ("root", "re10k_root", "webvid_root")
            if key in data and not (key == "root" and data.get("format") == "mix")]


def validate_train_config(cfg: DictConfig) -> None:
    validate(cfg, [*TRAIN_RULES, *_data_root_rules(cfg)])


def validate_sample_config(cfg: DictConfig) -> None:
    """Three ways to name the weights: ``ckpt_path``, ``run_dir``, or ``model=`` with released files."""
    released = not cfg.get("ckpt_path") and not cfg.get("run_dir") and cfg.get("model") is not None
    rules = [*SAMPLE_RULES, Rule("released_masks", one_of("auto", True, False))]
    if released:  # only then are the base and method files read from these options
        rules += [*(r for r in TRAIN_RULES if r.option == "pretrained"), _optional_path("method_ckpt", existing_file)]
    validate(cfg, rules)
    if not cfg.get("ckpt_path") and not cfg.get("run_dir") and cfg.get("model") is None:
        raise ConfigValidationError(["ckpt_path=null and run_dir=null: give ckpt_path=<run>/checkpoints/step_<N>, "
                                     "run_dir=<run>, or model=<name> with pretrained=<file> (released weights)"])


def validate_eval_config(cfg: DictConfig) -> None:
    validate(cfg, EVAL_RULES)
