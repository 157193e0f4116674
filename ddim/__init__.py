"""ddim: Denoising Diffusion Implicit Models (Song, Meng & Ermon, ICLR 2021) in PyTorch."""

from ddim.checkpoint import load, save
from ddim.sampling import DDIMSampler, slerp
from ddim.schedule import NoiseSchedule, timesteps

__all__ = ["NoiseSchedule", "timesteps", "DDIMSampler", "slerp", "load", "save"]
__version__ = "0.1.0"
