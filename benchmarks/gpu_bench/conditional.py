"""The ``conditional`` part: the cWDM (32 input channels) and fastWDM3D (24 input channels) networks, which the
engine's NetworkConfig builds from their released arguments: device-vs-fixture check, forward time and memory."""

from __future__ import annotations

from typing import Any

import torch

from .measuring import make_call, max_abs, peak_memory, precision_mode, reset_peak, time_forward
from .networks import build, meta_flops
from .recording import Part, significant
from .suite import Suite

# The conditional networks' released arguments, their full-size and dry-run coefficient grids, their fixtures.
CONDITIONAL = {
    # cWDM: 8 noisy + 3 x 8 condition coefficient channels, concatenated skips, grid 224 x 224 x 160.
    "cwdm": {"args": {"num_channels": 64, "channel_mult": "1,2,2,4,4", "num_res_blocks": 2, "in_channels": 32,
                      "out_channels": 8, "additive_skips": False, "num_groups": 32},
             "grid": (112, 112, 80), "tiny_grid": (8, 8, 4), "fixture": "cwdm/cwdm_unet_tiny.pt"},
    # fastWDM3D: 8 noisy + 16 condition channels, additive skips, 4 res blocks, 128^3 crops.
    "fastwdm3d": {"args": {"num_channels": 64, "channel_mult": "1,2,2,2,4", "num_res_blocks": 4, "in_channels": 24,
                           "out_channels": 8, "additive_skips": True, "num_groups": 32},
                  "grid": (64, 64, 64), "tiny_grid": (8, 8, 8), "fixture": "fastwdm3d/fastwdm3d_unet_tiny.pt"},
}  # fmt: skip


def conditional_config(name: str, tiny: bool):
    from wdmcore.networks import config_from_official_args

    args = dict(CONDITIONAL[name]["args"])
    if tiny:
        args.update(num_channels=8, num_groups=4, channel_mult="1,2,2")
    return config_from_official_args(args)


def run(suite: Suite, part: Part) -> None:
    dev = suite.device
    from wdmcore.networks import from_official_args

    for name, spec in CONDITIONAL.items():
        fixture = suite.reference / spec["fixture"] if suite.reference else None
        if fixture is not None and fixture.is_file():

            def check(fixture=fixture) -> dict[str, Any]:
                data = torch.load(fixture, map_location="cpu", weights_only=False)
                network = from_official_args(data["config"])
                network.load_state_dict(data["state_dict"], strict=True)
                network.to(dev).eval()
                with torch.no_grad(), precision_mode(dev, "fp32"):
                    out = network(data["x_t"].to(dev), data["timesteps"].to(dev))
                error = max_abs(out, data["output"])
                return {"in_channels": network.config.in_channels, "device_vs_fixture_max_abs": error,
                        "pass_1e-4": error < 1e-4}  # fmt: skip

            part.measure({"what": "fixture forward", "network": name}, check)

        def speed(name=name, spec=spec) -> dict[str, Any]:
            config = conditional_config(name, suite.tiny)
            grid = spec["tiny_grid"] if suite.tiny else spec["grid"]
            flops = meta_flops(config, grid)
            network = build(config, dev)
            x = torch.randn(1, config.in_channels, *grid, generator=torch.Generator().manual_seed(2)).to(dev)
            t = torch.tensor([500], device=dev)
            figures: dict[str, Any] = {"in_channels": config.in_channels, "grid": list(grid),
                                       "tflop_per_forward": significant(flops / 1e12)}  # fmt: skip
            for precision, cl in (("fp32", False), ("bf16", True)):
                net = network.to(memory_format=torch.channels_last_3d if cl else torch.contiguous_format)
                reset_peak(dev)
                ms = time_forward(make_call(net, dev, precision, cl), x, t, dev, part)
                figures[f"{precision}{'_cl' if cl else ''}_forward_ms"] = ms
                for key, value in peak_memory(dev).items():
                    figures[f"{precision}_{key}"] = value
                figures.update({f"{precision}_{k}": v for k, v in suite.tflops(flops, 1, ms / 1000).items()})
            return figures

        part.measure({"what": "forward speed", "network": name}, speed, need_s=1 if suite.tiny else 8)
    part.note(
        "Both networks are plain U-Nets that the engine's NetworkConfig builds from their released arguments "
        "(in_channels 32 / 24); their samplers and conditioning are not part of the engine, so only the "
        "network forward is measured."
    )
