"""The WDM WavU-Net: wavelet down/up-sampling, a residual input pyramid, and high-band skips."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import GroupNorm32, SiLUAfterNorm, Stage, WaveletDownsample, conv3
from .config import NetworkConfig
from .unet import DiffusionNetwork, _make_time_embed, resblock_factory


class WavUNet(DiffusionNetwork):
    """WavU-Net as released (``use_freq=True``).

    Encoder, per level: ResBlocks, a wavelet down-ResBlock (keeps LLL/3, hands its seven high bands to the
    decoder) and a :class:`WaveletDownsample` step of the input pyramid, on every level. Decoder, per level:
    a ResBlock, a second ResBlock, then *the same* second ResBlock again followed by a wavelet up-ResBlock.
    That reuse is how the released network is built (its state dict stores the shared block under two keys);
    it is one module here too, so both keys load into it and it runs twice, as released. With one ResBlock
    per level the decoder level is that block, then the same block again followed by the up-ResBlock. After
    the decoder, ``num_res_blocks`` ResBlocks at full resolution precede the output head.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        if config.architecture != "wavunet":
            raise ValueError("WavUNet needs a config with architecture 'wavunet'")
        self.config = config
        mc = config.model_channels

        res = resblock_factory(config, wavelet=True)

        self.time_embed = _make_time_embed(config)
        self.input_blocks = nn.ModuleList([Stage([conv3(config.in_channels, mc)])])
        ch, pyramid_ch = mc, config.in_channels
        for mult in config.channel_mult:
            for _ in range(config.num_res_blocks):
                self.input_blocks.append(Stage([res(ch, mc * mult)]))
                ch = mc * mult
            self.input_blocks.append(Stage([res(ch, resample="down")]))
            self.input_blocks.append(Stage([WaveletDownsample(pyramid_ch, ch)]))
            pyramid_ch = ch

        self.middle_block = Stage([res(ch), res(ch)])

        self.output_blocks = nn.ModuleList()
        for mult in reversed(config.channel_mult):
            out_ch = mc * mult
            for _ in range(config.num_res_blocks - 1):
                self.output_blocks.append(Stage([res(ch, out_ch)]))
                ch = out_ch
            shared = res(ch, out_ch)
            ch = out_ch
            self.output_blocks.append(Stage([shared]))
            self.output_blocks.append(Stage([shared, res(ch, resample="up")]))

        # One full-resolution ResBlock per num_res_blocks before the output head, as released (two for the
        # released models; a one-block configuration has one, and its state dict has no out_res.1).
        self.out_res = nn.ModuleList([Stage([res(ch)]) for _ in range(config.num_res_blocks)])
        self.out = nn.Sequential(GroupNorm32(config.num_groups, ch), SiLUAfterNorm(), conv3(ch, config.out_channels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        emb = self._time_embedding(t, x)
        high_bands: list[torch.Tensor] = []
        pyramid = x
        h = x
        for stage in self.input_blocks:
            if isinstance(stage[0], WaveletDownsample):
                h = h + stage(pyramid, emb)
                pyramid = h
            else:
                h = stage(h, emb)
                if isinstance(h, tuple):
                    h, bands = h
                    high_bands.append(bands)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = stage(h, emb, high_bands)
        for stage in self.out_res:
            h = stage(h, emb)
        return self.out(h)
