"""The DDIM sampler family (Song, Meng & Ermon 2020) and the solvers that came after it.

Layers, each importing only those above it:
- `steps`: the pure step math (eq. 12, eq. 16, the DDPM posterior step);
- `denoiser`: a network output -> (eps, x0_pred) (prediction type, clipping);
- `plan`: the noise levels (t, a_t, a_s) a walk visits, for sampling and for inversion;
- `solvers`: the update rules (DDIM(eta), sigma-hat), each a small `Solver`; `multistep` (PLMS,
  DPM-Solver++ 2M/3M) and `unipc` (UniPC) build on them; `registry`: them by name;
- `options`: `WalkOptions`, every option of a walk, validated once (by the modules above that use them);
- `walk`: the one loop; `sampler`: the `DDIMSampler` front; `noise`, `slerp`: helpers.
"""

from ddim.sampling.denoiser import CLIPS, Denoiser, Model
from ddim.sampling.multistep import PLMS, DPMSolverPP, Multistep
from ddim.sampling.noise import Generator, randn
from ddim.sampling.options import WalkOptions
from ddim.sampling.plan import FINAL_ALPHAS, Plan, Step, invert_plan, resolve_taus, sample_plan
from ddim.sampling.sampler import DDIMSampler
from ddim.sampling.slerp import slerp
from ddim.sampling.registry import SOLVERS, VARIANCES, make_solver
from ddim.sampling.solvers import DDIM, SigmaHat, Solver
from ddim.sampling.steps import PREDICTIONS, ddim_sigma, ddim_step, ddpm_posterior_step, predict_eps_x0
from ddim.sampling.unipc import UniPC
from ddim.sampling.walk import walk

__all__ = ["DDIMSampler", "slerp", "ddim_sigma", "predict_eps_x0", "ddim_step", "ddpm_posterior_step", "randn",
           "PREDICTIONS", "VARIANCES", "Denoiser", "Model", "Generator", "Step", "resolve_taus", "sample_plan",
           "invert_plan", "Solver", "DDIM", "SigmaHat", "SOLVERS", "make_solver", "walk", "Multistep", "PLMS",
           "DPMSolverPP", "UniPC", "CLIPS", "FINAL_ALPHAS", "WalkOptions", "Plan"]
