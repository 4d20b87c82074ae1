"""Camera conditioning modules: CameraCtrl pose encoder, MotionCtrl / CameraCtrl / CamI2V injection."""

from camvid.models.camera.injection import (
    CAMERA_METHODS,
    DYNAMICRAFTER_ATTN_VARIANTS,
    add_cameractrl,
    add_cami2v,
    add_motionctrl,
    camera_trainable_modules,
)
from camvid.models.camera.pose_encoder import CameraPoseEncoder

__all__ = [
    "CAMERA_METHODS",
    "DYNAMICRAFTER_ATTN_VARIANTS",
    "CameraPoseEncoder",
    "add_cameractrl",
    "add_cami2v",
    "add_motionctrl",
    "camera_trainable_modules",
]
