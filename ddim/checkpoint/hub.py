"""Hugging Face Hub ids as checkpoints: `google/ddpm-cifar10-32` (optionally `@revision`) -> a local folder that
`diffusers_import` reads.

Needs the optional huggingface_hub (`pip install 'ddim[hub]'`). Online it lists the repository and downloads only
what a diffusers model needs (configs and one weights file per model folder, safetensors preferred over .bin) into
the standard cache; offline (HF_HUB_OFFLINE=1, or no network) it uses the cached snapshot; the cache variables
(HF_HOME, HF_HUB_CACHE) are huggingface_hub's own. A local path always wins over a Hub id spelled the same. A
revision is a branch, tag, commit or refs/pr/N: one with an empty, "." or ".." part (a path out of the cache) is
refused before any lookup.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ddim.checkpoint.diffusers_layout import WEIGHT_FILES
from ddim.errors import DDIMError, MissingDependencyError, one_line

__all__ = ["looks_like_hub_id", "resolve_hub_id", "files_to_fetch"]

# owner/name as the Hub spells them, then an optional @revision (a branch, tag or commit)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")
# what sampling needs of a diffusers pipeline or UNet2DModel repository, besides the weights
_CONFIGS = ("model_index.json", "config.json", "scheduler_config.json", "unet/config.json",
            "scheduler/scheduler_config.json", "vae/config.json", "text_encoder/config.json",
            "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer.json",
            "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json")
# a latent pipeline's other weight folders: (prefix, weight file names, safetensors first)
_OTHER_WEIGHTS = (("vae/", WEIGHT_FILES), ("text_encoder/", ("model.safetensors", "pytorch_model.bin")))


def looks_like_hub_id(spec: str | os.PathLike) -> bool:
    """True for "owner/name" or "owner/name@revision" that is not an existing local path."""
    text = str(spec)
    return not Path(text).exists() and bool(_HUB_ID.match(text)) and not text.endswith((".ckpt", ".pth", ".pt",
                                                                                         ".safetensors", ".bin"))


def _check(spec: str) -> tuple[str, str | None]:
    """(repo, revision) of a Hub id; DDIMError for a name or revision with path parts that would leave the cache."""
    repo, _, revision = spec.partition("@")
    if ".." in repo or "--" in repo:
        raise DDIMError(f"--ckpt {spec!r}: the repository name {repo!r} holds '..' or '--', which the Hub does not "
                        "allow")
    if revision:
        parts = revision.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise DDIMError(f"--ckpt {spec!r}: revision {revision!r} has an empty, '.' or '..' path part; a revision "
                            "is a branch, tag or commit (or refs/pr/N)")
    return repo, revision or None


def files_to_fetch(listing: list[str]) -> list[str]:
    """The files of a repository listing that loading it needs: the configs (and a latent pipeline's tokenizer), and
    per model folder (the root, unet/, vae/, text_encoder/) one weights file, safetensors where it has both."""
    have = set(listing)
    wanted = [f for f in _CONFIGS if f in have]
    others = [(prefix, files) for prefix, files in _OTHER_WEIGHTS if prefix + "config.json" in have]  # a real part
    for prefix, files in (("", WEIGHT_FILES), ("unet/", WEIGHT_FILES), *others):
        weights = next((prefix + w for w in files if prefix + w in have), None)
        if weights is not None:
            wanted.append(weights)
    return wanted


def resolve_hub_id(spec: str) -> Path:
    """The local snapshot folder of Hub repo `spec` ("owner/name[@revision]"), downloading it when online."""
    repo, revision = _check(spec)
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise MissingDependencyError(f"--ckpt {spec!r} looks like a Hugging Face Hub id, which needs "
                                     "huggingface_hub: pip install 'ddim[hub]' (or give a local path)") from e
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    patterns = None
    if not offline:
        try:
            patterns = files_to_fetch(HfApi().list_repo_files(repo, revision=revision))
        except Exception as e:    # no network: fall back to the cache below, as snapshot_download itself does
            if type(e).__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
                raise DDIMError(f"--ckpt {spec!r}: could not get it from the Hugging Face Hub ({one_line(e)})") from e
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=patterns or list(_CONFIGS),
                                   local_files_only=offline or patterns is None)
    except LocalEntryNotFoundError as e:
        how = "unset HF_HUB_OFFLINE and rerun with network access" if offline else \
            f"check your network, or fetch it once with `hf download {repo}`"
        raise DDIMError(f"--ckpt {spec!r} is not a local path, and there is no cached copy of it as a Hugging "
                        f"Face Hub repository{' (HF_HUB_OFFLINE=1)' if offline else ''}; {how}") from e
    except Exception as e:        # repository not found, revision not found, HTTP errors: one line
        raise DDIMError(f"--ckpt {spec!r}: could not get it from the Hugging Face Hub ({one_line(e)})") from e
    return Path(folder)
