"""Building blocks shared by the U-Net and the WavU-Net.

Module and attribute names (``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``) are part of the
state-dict contract with the released checkpoints: do not rename them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..wavelets import dwt3, idwt3

# The released networks divide the LLL band by 3 inside the wavelet resampling blocks (the same scale as the
# coefficient representation of the image).
WAVELET_LLL_SCALE = 3.0


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, [B] -> [B, dim], cosines first (as the released code)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the input dtype (keeps bf16/fp16 inference stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class SiLUAfterNorm(nn.SiLU):
    """SiLU placed right after a GroupNorm: in inference it overwrites the norm's output instead of allocating
    a second feature map. Bit-identical to ``nn.SiLU``; on CPU at 256^3 each fresh full-size map costs
    hundreds of thousands of page faults, so fewer allocations make the forward pass measurably faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


def conv3(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally changing resolution.

    ``resample`` is ``None``, ``"down"`` or ``"up"``. With ``wavelet=False`` down is a 2x average pool and up a
    2x nearest-neighbour upsampling, applied after GN+SiLU and before the first conv (and to the identity
    branch). With ``wavelet=True`` (WavU-Net) the first conv runs first; down keeps LLL/3 of the result and
    returns its seven high bands as skip features; up rebuilds the higher resolution with the IDWT of
    (3*h, high bands of the matching down block).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        num_groups: int = 32,
        dropout: float = 0.0,
        resample: str | None = None,
        wavelet: bool = False,
        scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.resample = resample
        self.wavelet = wavelet
        self.scale_shift_norm = scale_shift_norm
        self.use_checkpoint = use_checkpoint
        if resample is not None and out_channels != channels:
            raise ValueError("resampling ResBlocks keep their channel count")
        self.in_layers = nn.Sequential(
            GroupNorm32(num_groups, channels), SiLUAfterNorm(), conv3(channels, out_channels)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(num_groups, out_channels),
            SiLUAfterNorm(),
            nn.Dropout(dropout),
            conv3(out_channels, out_channels),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv3d(channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skip_bands: torch.Tensor | None = None):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, skip_bands, use_reentrant=False)
        return self._forward(x, emb, skip_bands)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor, skip_bands: torch.Tensor | None):
        high_bands = None
        if self.resample is None:
            h = self.in_layers(x)
        elif not self.wavelet:
            resample = _avg_pool2 if self.resample == "down" else _nearest_up2
            h = self.in_layers[2](resample(self.in_layers[:2](x)))
            x = resample(x)
        elif self.resample == "down":
            h_bands = dwt3(self.in_layers(x))
            h = h_bands[:, 0] / WAVELET_LLL_SCALE
            high_bands = h_bands[:, 1:]
            x = dwt3(x)[:, 0] / WAVELET_LLL_SCALE
        else:
            if skip_bands is None:
                raise ValueError("a wavelet up-block needs the high bands of its matching down-block")
            h = idwt3(torch.cat([WAVELET_LLL_SCALE * self.in_layers(x)[:, None], skip_bands], dim=1))
            x = idwt3(torch.cat([WAVELET_LLL_SCALE * x[:, None], skip_bands], dim=1))

        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None, None]
        # Rebind h at every step rather than nesting calls: a nested call would keep the previous full-size
        # feature map alive through out_layers (one extra activation at peak, +7% memory at 256^3).
        if self.scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h)
            h = h * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = h + emb_out
            h = self.out_layers(h)
        # Out of place on purpose: adding into h in place (here and for the U-Net's skips) cut page faults
        # further but raised the measured peak RSS at 256^3 above the released code's (docs/benchmarks.md).
        h = self.skip_connection(x) + h
        return h if high_bands is None else (h, high_bands)


def _avg_pool2(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool3d(x, kernel_size=2, stride=2)


def _nearest_up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class WaveletDownsample(nn.Module):
    """One level of the WavU-Net's residual input pyramid: DWT, all eight bands / 3, 3x3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = conv3(8 * in_channels, out_channels)

    def forward(self, pyramid: torch.Tensor) -> torch.Tensor:
        bands = dwt3(pyramid)  # [B, 8, C, ...] flattens band-major, like concatenating the sub-bands
        return self.conv(bands.flatten(1, 2) / WAVELET_LLL_SCALE)


class Stage(nn.ModuleList):
    """One numbered block of a network (state-dict keys read ``input_blocks.<i>.<j>.*`` as released).

    Runs its layers in order, giving ResBlocks the time embedding and wavelet up-blocks the high bands they
    need (popped from ``high_bands``). Returns what the last layer returns.
    """

    def forward(self, h, emb: torch.Tensor, high_bands: list[torch.Tensor] | None = None):
        for layer in self:
            if not isinstance(layer, ResBlock):
                h = layer(h)
            elif layer.wavelet and layer.resample == "up":
                h = layer(h, emb, high_bands.pop())
            else:
                h = layer(h, emb)
        return h
