"""What diffusers' `UNet2DModel` and its schedulers look like on disk, in this architecture's terms: the
constructor defaults, the options that make a UNet2DModel Ho et al.'s network, the key names, the file names and
the scheduler vocabulary. Shared by the reader (`diffusers_import`) and the writer (`diffusers_export`)."""

from __future__ import annotations

import re
from typing import Any

import torch

from ddim.models.unet import UNet, UNetConfig

__all__ = ["DEFAULTS", "REQUIRED", "WHY", "WEIGHT_FILES", "PREDICTION_NAMES", "SCHEDULE_NAMES", "NULL_CLASS_KEY",
           "diffusers_key_map", "rename_legacy_attention"]

# UNet2DModel's constructor defaults: a config.json only lists what differed when it was written, and old ones
# (google/ddpm-*) predate some options.
DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
}
# The options that make a UNet2DModel Ho et al.'s network (as in google/ddpm-cifar10-32).
REQUIRED: dict[str, tuple] = {
    "center_input_sample": (False,), "time_embedding_type": ("positional",), "freq_shift": (1,),
    "flip_sin_to_cos": (False,), "mid_block_type": ("UNetMidBlock2D",), "mid_block_scale_factor": (1,),
    "downsample_padding": (0,), "downsample_type": ("conv",), "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"), "norm_num_groups": (32,), "attn_norm_num_groups": (None, 32), "norm_eps": (1e-6,),
    "resnet_time_scale_shift": ("default",), "add_attention": (True,), "class_embed_type": (None,),
}
WHY = {
    "freq_shift": "the time embedding's frequencies", "flip_sin_to_cos": "the time embedding's [sin, cos] order",
    "downsample_padding": "the downsampling padding (right/bottom only)", "norm_eps": "GroupNorm eps",
    "resnet_time_scale_shift": "time conditioning by addition", "num_class_embeds": "class conditioning",
    "class_embed_type": "class conditioning", "center_input_sample": "inputs used as given",
}
# The weights of a model folder, the preferred first (a Hub download fetches only one of them).
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
PREDICTION_NAMES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}        # ours -> a scheduler's
SCHEDULE_NAMES = {"linear": "linear", "quad": "scaled_linear", "cosine": "squaredcos_cap_v2"}
# Where the export says that the last of the num_class_embeds labels is the learned null label (our -1): the
# weights file's safetensors metadata, which diffusers does not read (a config.json key would be warned about on
# every load; exports before this version put it there, and it is still read from there).
NULL_CLASS_KEY = "ddim_null_class"


def diffusers_key_map(cfg: UNetConfig) -> dict[str, str]:
    """Our state-dict key -> UNet2DModel's. Its up blocks run in forward order (ours: by resolution)."""
    n = len(cfg.ch_mult)
    with torch.device("meta"):
        keys = list(UNet(cfg).state_dict())
    resnet = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

    def sub(rest: str, table: dict[str, str]) -> str:
        head, _, tail = rest.partition(".")
        return f"{table.get(head, head)}.{tail}"

    out = {}
    for k in keys:
        if k.startswith("label_emb."):
            new = "class_embedding." + k[len("label_emb."):]
        elif k.startswith("temb.dense."):
            new = re.sub(r"^temb\.dense\.(\d)", lambda m: f"time_embedding.linear_{int(m[1]) + 1}", k)
        elif k.startswith(("conv_in.", "conv_out.")):
            new = k
        elif k.startswith("norm_out."):
            new = "conv_norm_out." + k[len("norm_out."):]
        elif m := re.match(r"^mid\.(block|attn)_(\d)\.(.*)$", k):
            kind, j, rest = m[1], int(m[2]), m[3]
            new = (f"mid_block.resnets.{j - 1}.{sub(rest, resnet)}" if kind == "block"
                   else f"mid_block.attentions.{j - 1}.{sub(rest, attn)}")
        elif m := re.match(r"^(down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.*)$", k):
            side, i, kind, rest = m[1], int(m[2]), m[3], m[4]
            prefix = f"down_blocks.{i}" if side == "down" else f"up_blocks.{n - 1 - i}"
            if kind in ("block", "attn"):
                j, _, rest = rest.partition(".")
                new = (f"{prefix}.resnets.{j}.{sub(rest, resnet)}" if kind == "block"
                       else f"{prefix}.attentions.{j}.{sub(rest, attn)}")
            else:
                new = f"{prefix}.{kind}rs.0.{rest}"
        else:  # pragma: no cover - every UNet key is handled above
            raise AssertionError(k)
        out[k] = new
    return out


# Attention names of diffusers < 0.15 (the google/ddpm-* uploads); diffusers renames them on load, and so do we.
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_legacy_attention(state: dict) -> dict:
    """A state dict with diffusers < 0.15's attention names renamed to today's."""
    return {re.sub(r"\.attentions\.(\d+)\.(query|key|value|proj_attn)\.",
                   lambda m: f".attentions.{m[1]}.{_LEGACY_ATTN[m[2]]}.", k): v for k, v in state.items()}
