"""DynamiCrafter image-to-video family (lvdm 3-D UNet) and its camera-controlled methods.

Names are resolved lazily (PEP 562) so that ``camvid.models.camera`` can use the building blocks
here without an import cycle through the builder.
"""

from importlib import import_module

_EXPORTS = {
    "METHODS": "builder",
    "SIZES": "builder",
    "build_dynamicrafter_method": "builder",
    "DynamiCrafterI2V": "method",
    "DynamiCrafterUNet": "unet",
    "UNetCamera": "unet",
    "dynamicrafter_unet_config": "unet",
    "ImageProjModel": "image_proj",
    "Resampler": "image_proj",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
