"""DynamiCrafter image-to-video family (lvdm 3-D UNet) and its camera-controlled methods."""

from camvid.models.dynamicrafter.builder import METHODS, SIZES, build_dynamicrafter_method
from camvid.models.dynamicrafter.image_proj import ImageProjModel, Resampler
from camvid.models.dynamicrafter.method import DynamiCrafterI2V
from camvid.models.dynamicrafter.unet import DynamiCrafterUNet, UNetCamera, dynamicrafter_unet_config

__all__ = [
    "METHODS",
    "SIZES",
    "DynamiCrafterI2V",
    "DynamiCrafterUNet",
    "ImageProjModel",
    "Resampler",
    "UNetCamera",
    "build_dynamicrafter_method",
    "dynamicrafter_unet_config",
]
