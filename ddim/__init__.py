"""ddim: Denoising Diffusion Implicit Models (Song, Meng & Ermon, ICLR 2021) in PyTorch."""

from ddim.sampling import DDIMSampler, slerp
from ddim.schedule import NoiseSchedule, timesteps

__all__ = ["NoiseSchedule", "timesteps", "DDIMSampler", "slerp"]
__version__ = "0.1.0"
