"""Checkpoints of a training run: complete or ignored, verified before a byte is loaded, rotated safely.

A checkpoint is a directory ``<run_dir>/checkpoints/step_<N>`` written by ``accelerator.save_state``
(optimizer, LR scheduler, grad scaler, every process's RNG states, registered custom objects), except
that the model part holds only the *trainable* parameters: the frozen base model comes from its own
pretrained file, and a CamI2V checkpoint is 1 GB instead of 11 GB.

Completeness has one meaning: the directory holds ``checkpoint_manifest.json``, written last (after
every rank has finished writing), listing every file with its size and SHA-256. So

- writing happens under a temporary name, renamed once the manifest is in (a crash leaves no
  ``step_<N>`` at all, or one without a manifest);
- loading first verifies the manifest and every file against it, so a truncated or damaged file is
  an error naming that file *before* anything is loaded, and nothing is ever loaded partially;
- auto-resume walks back from the newest checkpoint to the newest one that verifies, warning about
  each it skips;
- rotation deletes the manifest first, so a directory half-deleted by an interrupted rotation never
  looks complete.

accelerate itself swallows a failure to read the RNG states (it logs "Could not load random
states" at INFO and carries on, so resume would silently not be exact): this module reads that file
first and checks afterwards that the states were really restored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from camvid.fsutil import atomic_write_text, dir_mode, file_mode, fsync_dir

__all__ = ["CheckpointManager", "CheckpointError", "trainable_state_dict", "load_trainable_state_dict",
           "find_latest", "read_step", "read_trainer_state", "verify_checkpoint", "is_complete", "list_checkpoints",
           "select_resume_checkpoint", "MANIFEST_NAME", "WEIGHTS_NAME", "STATE_NAME"]

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
WEIGHTS_NAME = "trainable.safetensors"
STATE_NAME = "trainer_state.json"
MANIFEST_NAME = "checkpoint_manifest.json"
MANIFEST_FORMAT = "camvid-checkpoint"
MANIFEST_VERSION = 1
RNG_STATE_PATTERN = "random_states_{rank}.pkl"  # accelerate's name for each process's RNG states
_CHUNK = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, damaged, or cannot be loaded into this run; names the file."""

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k in names}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load trainable weights strictly: every trainable parameter must be present, nothing extra."""
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: checkpoint does not match the model's trainable parameters "
            f"(missing {len(missing)}: {missing[:5]}, unexpected {len(unexpected)}: {unexpected[:5]}); "
            "was it written by a run with a different model/attn config?"
        )
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys


# --- the manifest ------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(directory: Path, step: int) -> Path:
    """Hash every file of ``directory`` and write the manifest, durably, as the last file.

    Every file also gets the umask's mode: safetensors writes its files 0600, which would make the
    checkpoint unreadable to collaborators on shared storage.
    """
    entries = {}
    for d in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        os.chmod(d, dir_mode())
    for f in _files(directory):
        os.chmod(f, file_mode())
        with f.open("rb") as fh:
            os.fsync(fh.fileno())  # the manifest must never reach the disk before the data it vouches for
        entries[f.relative_to(directory).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    fsync_dir(directory)
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": int(step), "files": entries}
    return atomic_write_text(directory / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n", durable=True)


def is_complete(path: Path) -> bool:
    """Cheap test (no hashing): does the directory carry its final marker?"""
    return (Path(path) / MANIFEST_NAME).is_file()


def _read_manifest(path: Path) -> dict:
    mpath = Path(path) / MANIFEST_NAME
    if not mpath.is_file():
        hint = (" (it holds trainer_state.json: written by a camvid without checkpoint manifests, or "
                "cut short while being written or rotated away)") if (Path(path) / STATE_NAME).is_file() else ""
        raise CheckpointError(f"{path}: incomplete checkpoint, no {MANIFEST_NAME}{hint}", mpath)
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{mpath}: unreadable checkpoint manifest ({err})", mpath) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(
            manifest.get("files"), dict):
        raise CheckpointError(f"{mpath}: not a {MANIFEST_FORMAT} manifest", mpath)
    if int(manifest.get("version", 0)) > MANIFEST_VERSION:
        raise CheckpointError(f"{mpath}: manifest version {manifest['version']} is newer than this camvid", mpath)
    return manifest


def verify_checkpoint(path: str | Path, files: list[str] | None = None) -> dict:
    """Check the manifest and every file it lists (or only ``files``): present, same size, same SHA-256.

    Returns the manifest; raises :class:`CheckpointError` naming the first bad file. Sizes are checked
    for every file before any is hashed, so a truncation is found without reading gigabytes.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found", path)
    manifest = _read_manifest(path)
    listed = manifest["files"]
    names = list(listed) if files is None else list(files)
    for name in names:
        if name not in listed:
            raise CheckpointError(f"{path / name}: not listed in the checkpoint manifest", path / name)
    for name in names:
        f, entry = path / name, listed[name]
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the checkpoint", f)
        if f.stat().st_size != int(entry["size"]):
            raise CheckpointError(f"{f}: {f.stat().st_size} bytes, the manifest says {entry['size']} "
                                  "(truncated or overwritten)", f)
    for name in names:
        f = path / name
        if _sha256(f) != listed[name]["sha256"]:
            raise CheckpointError(f"{f}: content differs from the checkpoint manifest (SHA-256 mismatch)", f)
    return manifest


# --- finding checkpoints -----------------------------------------------------------------------------

def _step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not Path(ckpt_dir).is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in Path(ckpt_dir).iterdir() if (m := _STEP_DIR.match(p.name))
                  and p.is_dir())


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints (those carrying a manifest), oldest first; hashes are not checked here."""
    return [p for _, p in _step_dirs(ckpt_dir) if is_complete(p)]


def find_latest(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint of ``ckpt_dir`` that carries its manifest (temporary directories ignored)."""
    complete = list_checkpoints(ckpt_dir)
    return complete[-1] if complete else None


def select_resume_checkpoint(ckpt_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """Auto-resume: the newest checkpoint that verifies completely, and ``(directory, problem)`` for
    each newer one skipped (damaged, or without a manifest after a crash while writing or rotating).
    Older directories are not looked at: they do not matter once a newer one verifies."""
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(_step_dirs(ckpt_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            skipped.append((path, str(err)))
            continue
        return path, skipped
    return None, skipped


DAMAGED_SUFFIX = ".damaged"


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the ``step_<N>`` namespace (kept for inspection): rotation,
    find_latest and later resumes no longer see it, and the step can be written again."""
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{n}")
    path.rename(target)
    return target


def read_trainer_state(path: Path) -> dict:
    """The ``trainer_state.json`` of a checkpoint (step, loss, what the run looked like)."""
    state = Path(path) / STATE_NAME
    if not state.is_file():
        raise FileNotFoundError(
            f"not a camvid checkpoint (no {STATE_NAME}): {path}; pass a step_<N> directory from <run_dir>/checkpoints"
        )
    try:
        data = json.loads(state.read_text())
        int(data["step"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{state}: unreadable trainer state ({type(err).__name__}: {err})", state) from None
    return data


def read_step(path: Path) -> int:
    """The optimizer step a checkpoint directory was written at."""
    return int(read_trainer_state(path)["step"])


class CheckpointManager:
    """Save/resume through an accelerate ``Accelerator``.

    ``module`` is the plain (unwrapped) module whose trainable parameters are saved, so the weight
    file's keys are the method's own names whatever wrapper (DDP, DeepSpeed) trains it.
    """

    def __init__(self, accelerator, module: nn.Module, ckpt_dir: Path, keep_last: int = 3):
        self.accelerator = accelerator
        self.module = module
        self.dir = Path(ckpt_dir)
        self.keep_last = max(1, int(keep_last))
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

    # accelerate hooks: replace the full model weights with the trainable subset
    def _save_hook(self, models, weights, output_dir):
        if self.accelerator.is_main_process:
            save_file(trainable_state_dict(self.module), str(Path(output_dir) / WEIGHTS_NAME))
        weights.clear()  # ``models`` is the accelerator's own list: leave it alone

    def _load_hook(self, models, input_dir):
        path = Path(input_dir) / WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"checkpoint weights not found: {path}", path)
        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors' errors name no file
            raise CheckpointError(f"{path}: cannot read the weights ({type(err).__name__}: {err})", path) from err
        load_trainable_state_dict(self.module, state, str(path))
        models.clear()  # a local list here: stops accelerate from loading full model weights

    def save(self, step: int, trainer_state: dict) -> Path:
        acc = self.accelerator
        final = self.dir / f"step_{step:08d}"
        tmp = self.dir / f".tmp_step_{step:08d}"
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()  # every rank's RNG file is on disk before the manifest vouches for it
        if acc.is_main_process:
            atomic_write_text(tmp / STATE_NAME, json.dumps({**trainer_state, "step": step}, indent=2))
            write_manifest(tmp, step)
            if final.exists():
                _remove_checkpoint(final)
            tmp.rename(final)
            fsync_dir(self.dir)
            self._rotate()
        acc.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        for _, p in _step_dirs(self.dir)[: -self.keep_last]:
            _remove_checkpoint(p)

    # --- loading -------------------------------------------------------------------------------------

    def resolve_resume(self, explicit: str | Path | None) -> Path | None:
        """The checkpoint to resume from, agreed by every rank.

        ``explicit`` (``ckpt_path``) must verify or it is an error naming the bad file; without it,
        the newest checkpoint of this run that verifies, with a warning naming each one skipped.
        Rank 0 decides (it reads every rank's files) and the others follow, so all ranks load the
        same checkpoint or all stop.
        """
        decision: dict = {}
        if self.accelerator.is_main_process:
            try:
                decision = self._decide(explicit)
            except Exception as err:  # never leave the other ranks waiting in the broadcast
                decision = {"error": f"{self.dir}: choosing the checkpoint to resume failed: "
                                     f"{type(err).__name__}: {err}"}
        decision = _broadcast(self.accelerator, decision)
        if "error" in decision:
            raise CheckpointError(decision["error"])
        return Path(decision["path"]) if decision["path"] else None

    def _decide(self, explicit) -> dict:
        if explicit:
            try:
                verify_checkpoint(Path(explicit))
            except CheckpointError as err:
                return {"error": f"ckpt_path={explicit}: {err}"}
            return {"path": str(explicit)}
        path, skipped = select_resume_checkpoint(self.dir)
        if skipped and path is None:
            # Starting over from step 0 would quietly throw the run away (and rotation would then
            # delete the new checkpoints before the damaged, higher-numbered ones): stop instead.
            listing = "\n  ".join(f"{p.name}: {why}" for p, why in skipped)
            return {"error": f"{self.dir}: no intact checkpoint to resume from:\n  {listing}\nMove the damaged "
                             "directories away to start this run over, or pass ckpt_path=<another checkpoint>."}
        for p, why in skipped:
            moved = _set_aside(p)
            log.warning("checkpoint %s cannot be resumed and was moved to %s: %s", p.name, moved.name, why)
        if skipped:
            log.warning("resuming from the newest intact checkpoint instead: %s", path)
        return {"path": str(path) if path else None}

    def load(self, path: Path, exact: bool = True) -> dict:
        """Load a verified checkpoint (see :meth:`resolve_resume`) into the accelerator's objects.

        ``exact=False`` (resume_mismatch=warn with more processes than wrote the checkpoint): a rank
        without saved RNG states starts them fresh, with a warning, instead of stopping.
        """
        path = Path(path)
        state = read_trainer_state(path)
        rank = self.accelerator.process_index
        rng_file = path / RNG_STATE_PATTERN.format(rank=rank)
        expected_rng, problem = None, None
        if not exact and not rng_file.is_file():
            log.warning("%s: missing (no such rank in the run that wrote the checkpoint); this rank's RNG "
                        "states start fresh", rng_file)
        else:
            try:
                expected_rng = _read_rng_states(rng_file)
            except CheckpointError as err:
                problem = err
        _agree(self.accelerator, problem)  # every rank stops, or none: nothing is loaded on any rank
        try:
            self.accelerator.load_state(str(path))
        except CheckpointError:
            raise
        except Exception as err:
            # The files verified against the manifest, so this is not damage but a checkpoint of a
            # different run setup (another optimizer, model or number of custom states).
            raise CheckpointError(
                f"{path}: the checkpoint's files are intact but cannot be loaded into this run "
                f"({type(err).__name__}: {err})", path) from err
        problem = None
        if expected_rng is not None and not torch.equal(torch.get_rng_state(), expected_rng["torch_manual_seed"]):
            problem = CheckpointError(f"{rng_file}: the RNG states were not restored by accelerate; "
                                      "resume would not continue the run exactly", rng_file)
        _agree(self.accelerator, problem)
        return state


def _agree(accelerator, problem: CheckpointError | None) -> None:
    """Raise on every rank if any rank has a problem (a rank raising alone would hang the others)."""
    if accelerator.num_processes == 1:
        if problem is not None:
            raise problem
        return
    from accelerate.utils import gather_object

    problems = gather_object([None if problem is None else (accelerator.process_index, str(problem))])
    failed = [p for p in problems if p is not None]
    if problem is not None:
        raise problem
    if failed:
        rank, message = failed[0]
        raise CheckpointError(f"rank {rank}: {message}")


def _read_rng_states(path: Path) -> dict:
    """This rank's accelerate RNG file, read the way accelerate reads it, so its failure has a name."""
    from accelerate.utils import load as accelerate_load

    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint (this rank's RNG states); "
                              "was it written with fewer processes?", path)
    try:
        states = accelerate_load(path)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read the RNG states ({type(err).__name__}: {err})", path) from err
    missing = [k for k in ("random_state", "numpy_random_seed", "torch_manual_seed") if k not in states]
    if missing:
        raise CheckpointError(f"{path}: RNG state file lacks {missing}", path)
    return states


def _remove_checkpoint(path: Path) -> None:
    """Marker first: if this is interrupted, what is left is plainly incomplete."""
    (path / MANIFEST_NAME).unlink(missing_ok=True)
    fsync_dir(path)
    shutil.rmtree(path, ignore_errors=True)


def _broadcast(accelerator, obj):
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]
