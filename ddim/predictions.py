"""What a diffusion network can be trained to predict, named once for the whole package.

With x_t = sqrt(a) x_0 + sqrt(1 - a) eps (schedule.py's convention), a network predicts one of:
"eps" the noise (Ho et al. 2020), "x0" the clean data, or "v" = sqrt(a) eps - sqrt(1 - a) x_0 (Salimans & Ho
2022). The sampler reads the output (`sampling.denoiser`), training builds the target (`train`), checkpoints
store the name (`checkpoint`), and configs check it (`config`): all against this one tuple.
"""

from __future__ import annotations

__all__ = ["PREDICTIONS"]

PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")
