"""The WDM U-Net: the backbone of the released checkpoints (additive skips), or concatenated skips."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import GroupNorm32, ResBlock, SiLUAfterNorm, Stage, conv3, timestep_embedding
from .config import NetworkConfig


class DiffusionNetwork(nn.Module):
    """Common interface: ``forward(x, t)`` with x [B, in_channels, D, H, W] and integer timesteps t [B]."""

    config: NetworkConfig

    def _time_embedding(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        return emb

    def _check_input(self, x: torch.Tensor) -> None:
        factor = self.config.downsampling_factor
        if x.dim() != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input [B, {self.config.in_channels}, D, H, W], got {tuple(x.shape)}")
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(
                f"spatial sizes {tuple(x.shape[2:])} must be divisible by {factor} for this network "
                f"({len(self.config.channel_mult)} levels)"
            )


def resblock_factory(config: NetworkConfig, *, wavelet: bool):
    """``res(ch_in, ch_out=None, resample=None)`` building ResBlocks with the config's shared settings."""

    def res(ch_in: int, ch_out: int | None = None, resample: str | None = None) -> ResBlock:
        return ResBlock(
            ch_in,
            4 * config.model_channels,
            ch_out,
            num_groups=config.num_groups,
            dropout=config.dropout,
            resample=resample,
            wavelet=wavelet,
            scale_shift_norm=config.scale_shift_norm,
            use_checkpoint=config.use_checkpoint,
        )

    return res


def _make_time_embed(config: NetworkConfig) -> nn.Sequential:
    emb_dim = 4 * config.model_channels
    return nn.Sequential(nn.Linear(config.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))


class UNet(DiffusionNetwork):
    """U-Net with ResBlock resampling. With ``additive_skips`` (the released models) each decoder block
    averages the feature map with the stored encoder output, ``h = (h + skip) / 2``, and outputs the channel
    count of the next skip it will meet; otherwise skips are concatenated as in a standard diffusion U-Net."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        if config.architecture != "unet":
            raise ValueError("UNet needs a config with architecture 'unet'")
        self.config = config
        mc = config.model_channels

        res = resblock_factory(config, wavelet=False)

        self.time_embed = _make_time_embed(config)
        self.input_blocks = nn.ModuleList([Stage([conv3(config.in_channels, mc)])])
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.input_blocks.append(Stage([res(ch, mc * mult)]))
                ch = mc * mult
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(Stage([res(ch, resample="down")]))
                skip_channels.append(ch)

        self.middle_block = Stage([res(ch), res(ch)])

        self.output_blocks = nn.ModuleList()
        pending = list(skip_channels)
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                skip_ch = pending.pop()
                if config.additive_skips:
                    # Channels drop one block early: the output must match the next skip to average with.
                    out_ch = pending[-1] if pending else mc
                    block = [res(ch, out_ch)]
                else:
                    out_ch = mc * mult
                    block = [res(ch + skip_ch, out_ch)]
                ch = out_ch
                if level and i == config.num_res_blocks:
                    block.append(res(ch, resample="up"))
                self.output_blocks.append(Stage(block))

        self.out = nn.Sequential(GroupNorm32(config.num_groups, ch), SiLUAfterNorm(), conv3(ch, config.out_channels))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        emb = self._time_embedding(t, x)
        skips = []
        h = x
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            skip = skips.pop()
            h = (h + skip) / 2 if self.config.additive_skips else torch.cat([h, skip], dim=1)
            del skip
            h = stage(h, emb)
        return self.out(h)
