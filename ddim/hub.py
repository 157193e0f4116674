"""Hugging Face Hub ids as checkpoints: `google/ddpm-cifar10-32` (optionally `@revision`) -> a local folder.

Needs the optional huggingface_hub (`pip install 'ddim[hub]'`). Online it downloads into the standard cache;
offline (HF_HUB_OFFLINE=1, or no network) it uses the cached snapshot; the cache variables (HF_HOME,
HF_HUB_CACHE) are huggingface_hub's own. A local path always wins over a Hub id spelled the same.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ddim.errors import DDIMError, MissingDependencyError

__all__ = ["looks_like_hub_id", "resolve_hub_id"]

# owner/name as the Hub spells them, then an optional @revision (a branch, tag or commit)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")
# what a diffusers pipeline or UNet2DModel repository needs for sampling
_PATTERNS = ["*.json", "unet/*", "scheduler/*", "*.safetensors", "*.bin", "*.ckpt", "*.pth", "*.txt"]


def looks_like_hub_id(spec: str | os.PathLike) -> bool:
    """True for "owner/name" or "owner/name@revision" that is not an existing local path."""
    text = str(spec)
    return not Path(text).exists() and bool(_HUB_ID.match(text)) and not text.endswith((".ckpt", ".pth", ".pt",
                                                                                         ".safetensors", ".bin"))


def resolve_hub_id(spec: str) -> Path:
    """The local snapshot folder of Hub repo `spec` ("owner/name[@revision]"), downloading it when online."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise MissingDependencyError(f"--ckpt {spec!r} looks like a Hugging Face Hub id, which needs "
                                     "huggingface_hub: pip install 'ddim[hub]' (or give a local path)") from e
    repo, _, revision = spec.partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=_PATTERNS,
                                   local_files_only=offline)
    except LocalEntryNotFoundError as e:
        how = "unset HF_HUB_OFFLINE and rerun with network access" if offline else \
            "check your network, or fetch it once with `huggingface-cli download " + repo + "`"
        raise DDIMError(f"--ckpt {spec!r} is not a local path, and there is no cached copy of it as a Hugging "
                        f"Face Hub repository{' (HF_HUB_OFFLINE=1)' if offline else ''}; {how}") from e
    except Exception as e:        # repository not found, revision not found, HTTP errors: one line
        raise DDIMError(f"--ckpt {spec!r}: could not get it from the Hugging Face Hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else e})") from e
    return Path(folder)
