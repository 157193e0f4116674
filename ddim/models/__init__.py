"""Networks: the U-Net eps-model of Ho et al. (2020) used by DDIM."""

from ddim.models.unet import PRESETS, UNet, UNetConfig

__all__ = ["UNet", "UNetConfig", "PRESETS"]
