"""AnimateDiff text-to-video backbone (diffusers ``UNetMotionModel``) with CameraCtrl's camera
injection and CVD's cross-video synchronisation; see docs/models.md ("AnimateDiff / CVD")."""

from camvid.models.animatediff.builder import METHODS, POSE_ENCODER_CONFIGS, build_animatediff_method
from camvid.models.animatediff.key_mapping import (
    convert_official_state_dict,
    convert_to_official_state_dict,
    official_to_ours,
    ours_to_official,
)
from camvid.models.animatediff.method import AnimateDiffT2V
from camvid.models.animatediff.pose_adaptor import PoseAdaptor, PoseAdaptorAttnProcessor, install_pose_adaptor
from camvid.models.animatediff.unet import UNET_CONFIGS, build_unet, motion_module_sites, unet_config

__all__ = [
    "AnimateDiffT2V",
    "METHODS",
    "POSE_ENCODER_CONFIGS",
    "PoseAdaptor",
    "PoseAdaptorAttnProcessor",
    "UNET_CONFIGS",
    "build_animatediff_method",
    "build_unet",
    "convert_official_state_dict",
    "convert_to_official_state_dict",
    "install_pose_adaptor",
    "motion_module_sites",
    "official_to_ours",
    "ours_to_official",
    "unet_config",
]
