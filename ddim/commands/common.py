"""What the commands share: the help formatter, argparse types, the model and sampler flag groups, and the
way flags become library objects (a loaded model, one `SampleConfig`). Flags shared by several commands mean
the same thing in each."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ddim.checkpoint import LoadedModel
from ddim.config import DTYPES, SampleConfig
from ddim.distributed import resolve_device
from ddim.generate import EMBEDDED_NAME, class_labels, load_model, pixel_shape
from ddim.images import load_images
from ddim.sampling import GUIDANCE_MODES, SOLVERS, VARIANCES
from ddim.sampling.options import DEFAULTS as WALK
from ddim.schedule import SKIPS

__all__ = ["Formatter", "skip_arg", "positive_int", "nonnegative_int", "batch_size", "add_model_args",
           "add_sampler_args", "add_refine_arg", "check_refine", "add_output_args", "load", "sample_config",
           "checkpoint_defaults", "device", "labels", "add_prompt_args", "check_prompt_flags", "prompt_condition",
           "input_images"]


class Parser(argparse.ArgumentParser):
    """No abbreviated flags: `--eta` must not silently mean `--etas` where both exist."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help (one per flag: none added where the help text already states its default, or where
    the default is None, i.e. "not given"), and the epilog's worked examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def batch_size(text: str) -> int | str:
    """argparse type of --batch-size: an integer >= 1 or 'auto'."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'auto', got {text!r}") from None


def skip_arg(text: str) -> str | list[int]:
    """argparse type of --skip: a name of SKIPS, explicit timesteps ("999,799,599" or spaced), or a JSON file of
    them (a list, or an object with "timesteps", as `ddim schedule` writes)."""
    if text in SKIPS:
        return text
    if text.endswith(".json") or Path(text).is_file():
        try:
            data = json.loads(Path(text).read_text())
        except (OSError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"cannot read timesteps from {text!r}: {e}") from None
        data = data.get("timesteps") if isinstance(data, dict) else data
        if not isinstance(data, list) or not data or not all(isinstance(t, int) and not isinstance(t, bool)
                                                              for t in data):
            raise argparse.ArgumentTypeError(f"{text!r} holds no list of integer timesteps")
        return data
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(SKIPS)}, timesteps like 999,799,599, or a "
                                         f"JSON file of them; got {text!r}")
    return values


class _ClipAction(argparse.Action):
    """--clip-denoised [dynamic|keep-eps] (no value: clip to [-1, 1]) and --no-clip-denoised."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string == "--no-clip-denoised":
            if values is not None:
                parser.error("--no-clip-denoised takes no value")
            value: bool | str = False
        elif values is None:
            value = True
        elif values in ("dynamic", "keep-eps"):
            value = values
        else:
            parser.error(f"argument --clip-denoised: must be 'dynamic' or 'keep-eps' (or no value: clip to "
                         f"[-1, 1]), got {values!r}")
        setattr(namespace, self.dest, value)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_model_args(p: argparse.ArgumentParser, fast: bool = True) -> None:
    """--ckpt, --config, --raw-weights, --device and (with fast) the network's speed switches."""
    g = p.add_argument_group("model")
    g.add_argument("--ckpt", default=None, help="checkpoint: ddim .safetensors, a training ckpt-N.pt, the official "
                   ".ckpt / ckpt.pth, a diffusers UNet2DModel or pipeline folder, or an embedded model by name: digits, "
                   "digits-cond, digits-cond-distilled, digits-weak (default: the embedded 16x16 digits model)")
    g.add_argument("--config", "--ckpt-config", dest="ckpt_config", default=None,
                   help="the checkpoint's architecture, for official checkpoints only: a preset name (cifar10, "
                        "celeba64, lsun256) or the official YAML (configs/cifar10.yml). Not a sampling config")
    g.add_argument("--raw-weights", action="store_true", help="official or training checkpoints: the raw weights, "
                   "not the EMA ones")
    g.add_argument("--device", default=_default_device(), help="torch device: cpu, cuda, cuda:1, mps")
    if fast:
        g.add_argument("--dtype", default="float32", choices=DTYPES,
                       help="network compute dtype (bfloat16/float16: autocast, the sampler's arithmetic stays "
                       "float32; float64: the network and the latents in float64, pixel models only)")
        g.add_argument("--channels-last", action="store_true", help="run the network in channels_last memory format")
        g.add_argument("--compile", action="store_true", help="torch.compile the network (slow start, faster steps)")
        g.add_argument("--cache-interval", type=positive_int, default=1, help="DeepCache: a full network pass "
                       "every N steps, only the U-Net's shallow branch in between (1: off, exact)")
        g.add_argument("--cache-branch", type=nonnegative_int, default=None, help="DeepCache's shallow branch: "
                       "the skip connection it starts at, 0..num_res_blocks (default: num_res_blocks, the top level)")


def add_sampler_args(p: argparse.ArgumentParser, steps: str = "one", stochastic: bool = True, seed: bool = True,
                     default_steps: Any = WALK.steps, batch: bool = True, solver: bool = True, classes: bool = True,
                     afs: bool = True) -> None:
    """The sampler's flags. steps: "one" (--steps S) or "many" (--steps S1 S2 ...); stochastic adds --eta,
    --variance and --clip-denoised (deterministic commands, encoding and ODE figures, have none of them) and,
    with solver, the stochastic solvers' settings (--restart ..., --s-churn ...); afs adds --afs (commands that
    sample from noise; encoding has none)."""
    g = p.add_argument_group("sampler")
    if steps == "one":
        g.add_argument("--steps", type=positive_int, default=default_steps,
                       help="S, the number of sampling steps (network calls for the ddim solver)")
    else:
        g.add_argument("--steps", type=positive_int, nargs="+", default=list(default_steps),
                       help="sampling step counts S, one result each")
    g.add_argument("--skip", default=WALK.skip, type=skip_arg, metavar="SKIP",
                   help=f"how the sub-sequence tau of the T training steps is chosen: one of {', '.join(SKIPS)}; "
                        "explicit timesteps (999,799,599 or ascending; S is their number and --steps does not "
                        "apply); or a JSON file of them (`ddim schedule --out steps.json`)")
    if solver:
        g.add_argument("--solver", default=WALK.solver, choices=tuple(SOLVERS), help="the update rule")
    if solver and afs:
        g.add_argument("--afs", action="store_true", help="the analytic first step (AMED-Solver's AFS): eps = x_T "
                       "for the first evaluation instead of a network call (one call fewer, any solver)")
    if solver and stochastic:
        g.add_argument("--restart", type=float, nargs=2, default=None, metavar=("SIGMA_MIN", "SIGMA_MAX"),
                       help="--solver restart: the restart interval in EDM noise levels (default 0.06 0.30)")
        g.add_argument("--restart-k", type=int, default=None, metavar="K",
                       help="--solver restart: restarts at the interval (default 2)")
        g.add_argument("--restart-inner", type=int, default=None, metavar="N",
                       help="--solver restart: Heun steps back down each restart (default 3)")
        for flag, default, what in (("s-churn", 40.0, "the churn S_churn (0: Heun's method)"),
                                    ("s-tmin", 0.05, "the lowest EDM sigma that is churned"),
                                    ("s-tmax", 50.0, "the highest EDM sigma that is churned"),
                                    ("s-noise", 1.0, "the scale of the added noise")):
            g.add_argument(f"--{flag}", type=float, default=None, help=f"--solver churn: {what} (default {default:g})")
    if stochastic:
        g.add_argument("--eta", type=float, default=WALK.eta, help="the ddim solver's eta: 0 = DDIM (deterministic), "
                       "1 = DDPM")
        g.add_argument("--variance", default=WALK.variance, choices=VARIANCES,
                       help="the ddim solver's variance: 'eta' is sigma of eq. 16 times eta; 'large' is Table 1's "
                            "sigma-hat sampler")
        g.add_argument("--clip-denoised", "--no-clip-denoised", action=_ClipAction, default=None,
                       metavar="dynamic", help="clip x0_pred to [-1, 1] at every step ('dynamic': Imagen's dynamic "
                       "thresholding, --threshold-ratio, --threshold-max); when neither form is given, as the "
                       "checkpoint asks (a diffusers scheduler's clip_sample), else off")
        g.add_argument("--threshold-ratio", type=float, default=WALK.threshold_ratio, help="--clip-denoised "
                       "dynamic: the per-sample quantile of |x0_pred| used as the threshold")
        g.add_argument("--threshold-max", type=float, default=WALK.threshold_max, help="--clip-denoised dynamic: "
                       "the largest threshold (default: no cap, Imagen)")
    if seed:
        g.add_argument("--seed", type=nonnegative_int, default=0, help="sample i is a pure function of (seed, i)")
    if classes:
        g.add_argument("--class", dest="class_", default=None, metavar="K", help="class-conditional models: the "
                       "label of every sample, -1 for none, or 'all' (one block of samples per class)")
        g.add_argument("--classes", type=int, nargs="+", default=None, metavar="K",
                       help="class-conditional models: labels cycled over the samples (sample i gets K[i %% len])")
        g.add_argument("--guidance", type=float, default=WALK.guidance, help="classifier-free guidance weight w: "
                       "eps(-1) + w (eps(y) - eps(-1)) (a pipeline: eps(negative prompt) + w (eps(prompt) - "
                       "eps(negative prompt))); 1 = conditional, 0 = unconditional")
        g.add_argument("--guidance-mode", default=WALK.guidance_mode, choices=GUIDANCE_MODES,
                       help="'cfg++': CFG++ (the guided x0 renoised with the unconditional eps); --guidance is then "
                            "lambda in [0, 1] (docs/SOLVERS.md)")
        g.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                       help="apply --guidance only at timesteps LO <= t <= HI (one network call of B elsewhere)")
        g.add_argument("--guidance-rescale", type=float, default=WALK.guidance_rescale, help="CFG rescale phi "
                       "(Lin et al.): 0 off, 0.7 the paper's value")
    if batch:
        g.add_argument("--batch-size", type=batch_size, default=64,
                       help="images per network call, or 'auto' (CUDA: what fits in free memory; CPU: 64)")


def add_refine_arg(p: argparse.ArgumentParser) -> None:
    """--refine K: fixed-point refinement of each inversion step (the exact solvers bdia and edict need none)."""
    p.add_argument("--refine", type=nonnegative_int, default=0, metavar="K",
                   help="refine each inversion step K times with the network at the estimated next point (K extra "
                        "calls per step; 0 = eq. 13 as is; --solver bdia or edict invert exactly without it)")


def check_refine(args: argparse.Namespace) -> None:
    """--refine with an exactly invertible --solver is refused up front (nothing to refine)."""
    from ddim.errors import DDIMError
    from ddim.sampling import make_solver
    if args.refine and getattr(make_solver(args.solver), "exact_inverse", False):
        raise DDIMError(f"--refine {args.refine}: --solver {args.solver} inverts exactly; --refine is for the "
                        "other solvers (eq. 13's inversion)")


def add_output_args(p: argparse.ArgumentParser, default: str, what: str) -> None:
    """--out and --overwrite."""
    p.add_argument("--out", default=default, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def device(args: argparse.Namespace) -> torch.device:
    """--device, checked (a bogus name or CUDA on a machine without it is a one-line error)."""
    return resolve_device(args.device)


def load(args: argparse.Namespace) -> LoadedModel:
    """The model --ckpt names (the embedded one by default), on --device, with its source recorded."""
    from ddim.checkpoint.pipeline import is_latent_pipeline
    from ddim.errors import DDIMError
    dtype = getattr(args, "dtype", None) or "float32"
    if dtype == "float64" and args.ckpt and is_latent_pipeline(Path(args.ckpt)):
        raise DDIMError("--dtype float64: for ddim's own pixel models; a latent pipeline runs in float32, bfloat16 "
                        "or float16")
    loaded = load_model(args.ckpt, args.ckpt_config, ema=not args.raw_weights, device=device(args), dtype=dtype)
    loaded.metadata.setdefault("source", str(args.ckpt or EMBEDDED_NAME))
    return loaded


class Unset:
    """A flag's default value, marked so that a command can tell it from the same value given on the command
    line (`ddim sample`: a distilled student's steps, an autoguided model's w); `sample_config` reads the value."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)


def sample_config(args: argparse.Namespace, **overrides: Any) -> SampleConfig:
    """One validated SampleConfig from whichever sampler and model flags this command has."""
    fields = {}
    for name in ("steps", "skip", "solver", "eta", "variance", "clip_denoised", "seed", "dtype", "channels_last",
                 "compile", "batch_size", "cache_interval", "cache_branch", "guidance", "guidance_mode",
                 "guidance_interval", "guidance_rescale", "threshold_ratio", "threshold_max"):
        if hasattr(args, name):
            value = getattr(args, name)
            fields[name] = value.value if isinstance(value, Unset) else value
    if hasattr(args, "afs"):
        fields["afs"] = args.afs
    settings = solver_settings(args)
    if settings:
        fields["solver_options"] = settings
    if not isinstance(fields.get("skip", ""), str) and "steps" in fields and not isinstance(fields["steps"], list):
        fields["steps"] = None                          # explicit timesteps: S is their number
    if fields.get("clip_denoised", False) is None:      # neither flag: the default until `checkpoint_defaults`
        del fields["clip_denoised"]
    fields.update(overrides)
    return SampleConfig(**fields)


# flag -> (its solver, the solver's setting: the keyword of Restart / Churn and of solver_options)
SOLVER_FLAGS: dict[str, tuple[str, str]] = {
    "restart": ("restart", "restart"), "restart_k": ("restart", "k"), "restart_inner": ("restart", "inner"),
    "s_churn": ("churn", "s_churn"), "s_tmin": ("churn", "s_tmin"), "s_tmax": ("churn", "s_tmax"),
    "s_noise": ("churn", "s_noise"),
}


def solver_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The stochastic solvers' flags that were given, as solver_options of --solver; a flag of another solver is
    refused (one line, naming the flag)."""
    from ddim.errors import DDIMError
    from ddim.sampling import make_solver
    settings = {}
    for dest, (owner, key) in SOLVER_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if getattr(args, "solver", None) != owner:
            raise DDIMError(f"{flag}: a setting of --solver {owner}, not of --solver "
                            f"{getattr(args, 'solver', WALK.solver)}")
        settings[key] = tuple(value) if isinstance(value, list) else value
        try:
            make_solver(owner, solver_options={key: settings[key]})     # the solver's own check, under the flag
        except DDIMError as e:
            raise DDIMError(f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}: {e}") from None
    return settings


def add_prompt_args(p: argparse.ArgumentParser, target: bool = False) -> None:
    """--prompt and --negative-prompt: the condition of a text-to-image pipeline (target: also --target-prompt,
    the condition a transfer decodes under)."""
    g = p.add_argument_group("prompts (latent text-to-image pipelines)")
    g.add_argument("--prompt", default=None, help="the text every sample is conditioned on (its pipeline's own "
                   "tokenizer and text encoder)" + ("; transfer: the text the input images are encoded under"
                                                    if target else ""))
    g.add_argument("--negative-prompt", default=None, help="the null condition of guidance (default: the empty "
                   "prompt)")
    if target:
        g.add_argument("--target-prompt", default=None, help="the text the images are decoded under (with "
                       "--prompt, in place of --from-class / --to-class)")


def check_prompt_flags(args: argparse.Namespace) -> None:
    """The prompt flags that need no model: --negative-prompt and --target-prompt only with --prompt, and prompts
    or classes, not both (checked before the model loads)."""
    from ddim.errors import DDIMError
    prompt, target = getattr(args, "prompt", None), getattr(args, "target_prompt", None)
    if prompt is None and getattr(args, "negative_prompt", None) is not None:
        raise DDIMError("--negative-prompt: give it with --prompt")
    if prompt is None and target is not None:
        raise DDIMError("--target-prompt: give it with --prompt (the text the input images are encoded under)")
    classes = [f for f, d in (("--from-class", "from_class"), ("--to-class", "to_class"))
               if getattr(args, d, None) is not None]
    if prompt is not None and classes:
        raise DDIMError(f"--prompt with {classes[0]}: give prompts (--prompt, --target-prompt: latent text-to-image "
                        "pipelines) or classes (--from-class, --to-class: class-conditional models), not both")


def prompt_condition(args: argparse.Namespace, loaded: Any) -> tuple[Any, Any, dict]:
    """(cond, uncond, their run.json record) from --prompt / --negative-prompt: embeddings by the pipeline's own
    text encoder, one row for every sample; (None, None, {}) without --prompt."""
    from ddim.errors import DDIMError
    prompt, negative = getattr(args, "prompt", None), getattr(args, "negative_prompt", None)
    encode = getattr(loaded, "encode_prompt", None)
    check_prompt_flags(args)
    if prompt is None:
        if encode is not None and loaded.prompts is not None:
            raise DDIMError("--prompt: this pipeline is text-to-image; give the text (--prompt \"a photo of a cat\")")
        return None, None, {}
    if encode is None:
        raise DDIMError(f"--prompt: the model {loaded.metadata.get('source', '')!s} takes no prompt (it is not a "
                        "text-to-image pipeline folder with text_encoder/ and tokenizer/)")
    cond, uncond = encode([prompt]), encode([negative or ""])
    return cond, uncond, {"prompt": prompt, "negative_prompt": negative or ""}


def checkpoint_defaults(args: argparse.Namespace, config: SampleConfig, loaded: LoadedModel) -> SampleConfig:
    """The config with what the checkpoint asks for where the user gave no flag: a diffusers scheduler's
    clip_sample (`loaded.clip_denoised`) unless --clip-denoised / --no-clip-denoised was given."""
    if getattr(args, "clip_denoised", False) is None and getattr(loaded, "clip_denoised", False):
        return config.replace(clip_denoised=loaded.clip_denoised)
    return config


def labels(args: argparse.Namespace, loaded: LoadedModel, n: int):
    """The per-sample class labels [n] that --class / --classes ask for (None: unconditional)."""
    from ddim.errors import DDIMError
    spec_one, spec_many = getattr(args, "class_", None), getattr(args, "classes", None)
    if loaded.config is None:                       # a latent pipeline: conditioned by prompts
        if spec_one is not None or spec_many is not None:
            raise DDIMError("--class / --classes: this pipeline is conditioned by prompts (--prompt), not labels")
        return None
    if spec_one is not None and spec_many is not None:
        raise DDIMError("--class and --classes: give one of them")
    spec = spec_many if spec_many is not None else spec_one
    return class_labels(spec, n, loaded.config.num_classes)


def input_images(args: argparse.Namespace, loaded: Any, n: int | None) -> torch.Tensor:
    """--input as images [N, C, H, W] in [-1, 1] on --device, of the channels and size the model takes (a latent
    pipeline: the images its VAE encodes to its latents' size); image files are resized, arrays checked."""
    from ddim.errors import DDIMError
    c, h, w = pixel_shape(loaded)
    if h != w:
        raise DDIMError(f"--ckpt: the model's images are {h}x{w}; --input is read as square images only")
    return load_images(args.input, c, h, n=n, what="--input").to(args.device)
