"""The eps-network of Ho et al. (2020) as released with DDIM (Song et al. 2020): a Wide-ResNet U-Net.

Module names follow the official release's state dict exactly (`temb.dense.0`, `down.1.attn.0.q`, ...), so its
checkpoints load with a plain `load_state_dict`. Attention runs through `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim.errors import DDIMError

__all__ = ["UNetConfig", "UNet", "PRESETS", "timestep_embedding"]


@dataclass
class UNetConfig:
    """Architecture of the U-Net; field names follow the official YAML's `model` section."""

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    num_classes: int = 0          # class-conditional with this many labels (0: unconditional)
    null_class: bool = True       # with classes: one more learned embedding, label -1, for the unconditional output

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "out_channels", "ch", "num_res_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise DDIMError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("ch_mult", "attn_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
                raise DDIMError(f"{name} must be a list of integers, got {value!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real):
            raise DDIMError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        # Lists arrive from JSON/YAML; tuples keep the config hashable and comparable.
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise DDIMError(f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        if self.ch < 1 or self.num_res_blocks < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise DDIMError(f"ch, num_res_blocks, in_channels, out_channels must be positive: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise DDIMError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.image_size % self.downsample_factor:
            raise DDIMError(f"image_size {self.image_size} must be divisible by 2**(len(ch_mult) - 1) = "
                             f"{self.downsample_factor}")
        levels = [self.image_size // 2**i for i in range(len(self.ch_mult))]
        if any(r not in levels for r in self.attn_resolutions):
            # The release silently builds no attention for such a value; a typo should not cost a training run.
            raise DDIMError(f"attn_resolutions {self.attn_resolutions} must be level resolutions {levels} "
                             f"(image_size {self.image_size} halved per level)")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise DDIMError(f"num_classes must be an integer >= 0 (0: unconditional), got {self.num_classes!r}")
        if any(m * self.ch % 32 for m in (1, *self.ch_mult)):
            raise DDIMError(f"every width ch * m (ch={self.ch}, ch_mult={self.ch_mult}) must be divisible by "
                             "32, the GroupNorm group count")

    @property
    def downsample_factor(self) -> int:
        """Total spatial reduction: image sides must be multiples of this."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
        """Inverse of `to_dict`; unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DDIMError(f"unknown UNetConfig fields: {unknown}")
        return cls(**dict(d))

    @classmethod
    def from_official(cls, cfg: Mapping[str, Any]) -> "UNetConfig":
        """Read the official YAML layout (`data.image_size`, `model.ch`, `model.out_ch`, ...)."""
        if "model" not in cfg or "data" not in cfg:
            raise DDIMError("an official config needs 'data' and 'model' sections "
                             f"(configs/cifar10.yml layout); got keys {sorted(cfg)}")
        data, model = cfg["data"], cfg["model"]
        if model.get("type", "simple") != "simple":
            raise DDIMError(f"model.type {model['type']!r} is not supported; only 'simple' (Ho et al.'s U-Net)")
        return cls(
            image_size=int(data["image_size"]),
            in_channels=int(model.get("in_channels", data.get("channels", 3))),
            out_channels=int(model["out_ch"]),
            ch=int(model["ch"]),
            ch_mult=tuple(model["ch_mult"]),
            num_res_blocks=int(model["num_res_blocks"]),
            attn_resolutions=tuple(model["attn_resolutions"]),
            dropout=float(model.get("dropout", 0.0)),
            resamp_with_conv=bool(model.get("resamp_with_conv", True)),
        )


PRESETS: dict[str, UNetConfig] = {
    # The released configurations (configs/{cifar10,celeba,bedroom}.yml of the official code).
    "cifar10": UNetConfig(32, 3, 3, 128, (1, 2, 2, 2), 2, (16,), 0.1),
    "celeba64": UNetConfig(64, 3, 3, 128, (1, 2, 2, 2, 4), 2, (16,), 0.1),
    "lsun256": UNetConfig(256, 3, 3, 128, (1, 1, 2, 2, 4, 4), 2, (16,), 0.0),
    # Small enough for unit tests: one down/up level, attention at the 8x8 level.
    "tiny": UNetConfig(16, 3, 3, 32, (1, 2), 1, (8,), 0.0),
    # The embedded default model (16x16 grey digits); ~7 MB of float32 weights.
    "digits": UNetConfig(16, 1, 1, 32, (1, 2, 2), 2, (8,), 0.1),
}


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of t [B] -> [B, dim]: [sin(t w_i), cos(t w_i)], w_i = 10000^(-i/(dim/2 - 1)).

    This is the official release's (and tensor2tensor's) variant: frequencies span exactly 1 .. 1/10000.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Wide-ResNet block: GN-swish-conv, add projected time embedding, GN-swish-dropout-conv, residual."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)  # the release's 1x1 "network-in-network"

    def forward(self, x: Tensor, temb_act: Tensor) -> Tensor:
        # temb_act is swish(temb), computed once per forward rather than once per block.
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections and a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C): a free view when x is channels_last
        # The 1x1 convs are linear maps over channels: one fused GEMM for q, k, v (CPU 1x1 convs on NCHW tensors
        # take a slow path), weights kept as separate convs so the release's checkpoints load unchanged.
        w = torch.cat([self.q.weight, self.k.weight, self.v.weight]).flatten(1)
        b = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = F.linear(h, w, b).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, HW, C) each: a single head
        a = F.scaled_dot_product_attention(q, k, v).squeeze(1)     # default scale C^-1/2, the release's
        out = F.linear(a, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + out.transpose(1, 2).view(B, C, H, W)  # the sum takes x's memory format


class Downsample(nn.Module):
    """Halve H and W: 3x3 stride-2 conv after padding right/bottom by one (the release's TF "SAME"), or avg-pool."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then an optional 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class _Level(nn.Module):
    """One resolution level: `block` and `attn` lists plus an optional resampler (names as in the release)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, temb_channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, temb_channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, temb_channels, dropout)


class _TimeEmbed(nn.Module):
    def __init__(self, ch: int, temb_ch: int) -> None:
        super().__init__()
        self.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])


class UNet(nn.Module):
    """eps_theta(x_t, t) of Ho et al. (2020), the network sampled by DDIM (Song et al. 2020).

    forward(x [B, C, H, W], t [B]) -> eps [B, C, H, W]. t is normally an integer (Long) timestep in 0..T-1; a
    float tensor is accepted too and embedded as is (not rounded), which allows fractional timesteps. A scalar t
    is broadcast over the batch. x is cast to the parameters' dtype and eps returned in x's dtype, so a bfloat16
    model can be driven by a float32 sampler. H and W may be any multiples of 2**(len(ch_mult) - 1), not only image_size;
    attention sits at the levels chosen from the configured image_size.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        temb_ch = 4 * c.ch
        self.temb = _TimeEmbed(c.ch, temb_ch)
        if c.num_classes:     # added to the time embedding (guided-diffusion's label_emb, diffusers' class_embedding)
            self.label_emb = nn.Embedding(c.num_classes + int(c.null_class), temb_ch)
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)

        widths = [c.ch * m for m in c.ch_mult]
        n = len(widths)
        res = c.image_size
        self.down = nn.ModuleList()
        skips = [c.ch]  # channels of every tensor pushed onto the skip stack, in order
        block_in = c.ch
        for i in range(n):
            level = _Level()
            for _ in range(c.num_res_blocks):
                level.block.append(ResnetBlock(block_in, widths[i], temb_ch, c.dropout))
                block_in = widths[i]
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
                skips.append(block_in)
            if i != n - 1:
                level.downsample = Downsample(block_in, c.resamp_with_conv)
                res //= 2
                skips.append(block_in)
            self.down.append(level)

        self.mid = _Mid(block_in, temb_ch, c.dropout)

        up_levels: list[_Level] = []
        for i in reversed(range(n)):
            level = _Level()
            for _ in range(c.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in + skips.pop(), widths[i], temb_ch, c.dropout))
                block_in = widths[i]
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in, c.resamp_with_conv)
                res *= 2
            up_levels.insert(0, level)  # stored lowest index = highest resolution, as in the release
        self.up = nn.ModuleList(up_levels)
        assert not skips and block_in == c.ch * c.ch_mult[0]

        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_channels, 3, padding=1)

    def check_input(self, x: Tensor, t: Tensor) -> None:
        """Raise a ValueError naming the problem when x [B, C, H, W] or t [B] cannot go through the network."""
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise DDIMError(f"x must have shape [B, {c.in_channels}, H, W], got {tuple(x.shape)}")
        f = c.downsample_factor
        if x.shape[2] % f or x.shape[3] % f or x.shape[2] == 0 or x.shape[3] == 0:
            raise DDIMError(f"image size {x.shape[2]}x{x.shape[3]} is not allowed: H and W must be positive "
                             f"multiples of 2**(len(ch_mult) - 1) = {f} for ch_mult={c.ch_mult}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, x.shape[0])):
            raise DDIMError(f"t must have shape [B] = [{x.shape[0]}] or be a scalar, got {tuple(t.shape)}")

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """eps prediction for x [B, C, H, W] at timesteps t [B] (Long, or float used as is); same shape as x.

        y: class labels LongTensor [B] for a class-conditional network; -1 (or y None) asks for the
        unconditional prediction, the learned null label. An unconditional network takes no y.
        """
        return self.forward_features(x, t, y)[0]

    def label_embedding(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """The class embedding [B, temb] for labels y [B] (-1: the null label); None for unconditional nets."""
        c = self.config
        if not c.num_classes:
            if y is not None:
                raise DDIMError("y: this network is unconditional (num_classes = 0); it takes no class labels")
            return None
        y = torch.full((batch,), -1, dtype=torch.long, device=device) if y is None else \
            torch.as_tensor(y, device=device).reshape(-1).expand(batch)
        if y.dtype.is_floating_point or (y < -1).any() or (y >= c.num_classes).any():
            raise DDIMError(f"y: class labels must be integers in [0, {c.num_classes}) or -1 for none, got "
                            f"{y.unique().tolist()[:8]}")
        if (y == -1).any() and not c.null_class:
            raise DDIMError("y: this network has no null label, so -1 (unconditional) is not available")
        return self.label_emb(torch.where(y == -1, c.num_classes, y))

    def forward_features(self, x: Tensor, t: Tensor, y: Tensor | None = None, branch: int | None = None,
                         deep: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The forward pass, with DeepCache's split (Ma et al. 2024) at skip connection `branch`.

        The skip stack holds conv_in's output, then every block's of the down path. The shallow branch at
        `branch` = b (0 <= b <= num_res_blocks) is conv_in, the first b blocks of the top level, and the top
        level's last b + 1 up blocks, which read skips b..0; everything else is deep. deep None: the full pass,
        returning (eps, the deep features entering the shallow up blocks) (None without a branch). deep given:
        only the shallow branch runs, on those cached features; returns (eps, deep).
        """
        t = torch.as_tensor(t, device=x.device)
        self.check_input(x, t)
        t = t.reshape(-1).expand(x.shape[0])
        # The network's working dtype, read off a norm: a model cast with .to() works in its own dtype, while
        # one whose matmul weights alone were cast for autocast (generate.cast_matmul_weights) stays float32.
        in_dtype, dtype = x.dtype, self.norm_out.weight.dtype
        # A ch x ch x 3 x 3 weight is channels_last-contiguous only if the model was converted (`conv_in`'s may
        # look so by accident when in_channels == 1).
        if self.down[0].block[0].conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.to(dtype)

        temb = timestep_embedding(t, self.config.ch).to(dtype)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))
        label = self.label_embedding(y, x.shape[0], x.device)
        if label is not None:
            temb = temb + label.to(dtype)
        temb_act = F.silu(temb)

        if branch is not None and not 0 <= branch <= self.config.num_res_blocks:
            raise DDIMError(f"cache_branch must be in [0, num_res_blocks = {self.config.num_res_blocks}], got {branch}")
        hs = [self.conv_in(x)]
        down = self.down if deep is None else self.down[:1]
        for level in down:
            for j, block in enumerate(level.block if deep is None else level.block[:branch]):
                h = block(hs[-1], temb_act)
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(h)
            if hasattr(level, "downsample") and deep is None:
                hs.append(level.downsample(hs[-1]))

        if deep is None:
            h = hs[-1]
            h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb_act)), temb_act)
            ups = [(level, j) for level in reversed(self.up) for j in range(len(level.block))]
        else:
            h = deep.to(dtype)
            top = self.up[0]
            ups = [(top, j) for j in range(len(top.block) - branch - 1, len(top.block))]
        for level, j in ups:
            if branch is not None and deep is None and len(hs) == branch + 1:
                deep = h                                   # entering the shallow branch: what the cache keeps
            h = level.block[j](torch.cat([h, hs.pop()], dim=1), temb_act)
            if len(level.attn):
                h = level.attn[j](h)
            if j == len(level.block) - 1 and hasattr(level, "upsample"):
                h = level.upsample(h)

        eps = self.conv_out(F.silu(self.norm_out(h)))
        return (eps.to(in_dtype) if in_dtype.is_floating_point else eps), deep
