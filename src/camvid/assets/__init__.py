"""Files shipped inside the package, named ``builtin:<name>`` wherever a weights path is accepted.

``builtin:tiny_dynamicrafter_base``: the tiny, camera-agnostic DynamiCrafter base that `make demo`
and ``scale=tiny`` train the camera modules on (made by ``python scripts/make_tiny_base.py``; its
recipe, seed, step count and training time are in the JSON card beside it; docs/diffusion.md).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN_WEIGHTS", "resolve_weights"]

HERE = Path(__file__).resolve().parent
BUILTIN_WEIGHTS = {"tiny_dynamicrafter_base": HERE / "tiny_dynamicrafter_base.safetensors"}


def resolve_weights(value) -> str | None:
    """A ``pretrained=`` value as a file path (None when unset): ``builtin:<name>`` names a file
    shipped with the package; anything else is returned as given."""
    if value is None or value == "":
        return None
    value = str(value)
    if not value.startswith("builtin:"):
        return value
    name = value[len("builtin:"):]
    if name not in BUILTIN_WEIGHTS:
        raise ValueError(f"pretrained={value}: no such built-in weights; known: "
                         f"{', '.join('builtin:' + k for k in BUILTIN_WEIGHTS)}")
    path = BUILTIN_WEIGHTS[name]
    if not path.is_file():
        raise FileNotFoundError(f"pretrained={value}: {path} is missing from this checkout; "
                                "remake it with `python scripts/make_tiny_base.py`")
    return str(path)
