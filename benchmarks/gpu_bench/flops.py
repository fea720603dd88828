"""The ``flops`` part: FLOPs of one forward pass of every network timed, counted on the meta device at full
size and cross-checked on real tensors at a small size."""

from __future__ import annotations

from typing import Any

from .conditional import CONDITIONAL, conditional_config
from .networks import TINY_GRID, build, count_flops, meta_flops, preset
from .recording import Part, significant
from .suite import Suite

# The figures the timing goals were derived from (this part records its own count beside them).
STATED_TFLOP = {"unet-128": 1.05, "unet-256": 8.41}


def run(suite: Suite, part: Part) -> None:
    part.note(
        "FLOPs = torch.utils.flop_counter count of one forward pass (2 per multiply-add; convolutions and "
        "matrix products only: GroupNorm, SiLU and additions are not counted)."
    )
    nets = [
        ("unet-128", preset("unet-128", False), (64, 64, 64)),
        ("unet-256", preset("unet-256", False), (128,) * 3),
    ]
    if not suite.tiny:  # the dry run counts the two stated figures only (each count takes a second on a CPU)
        nets += [("wavunet-128", preset("wavunet-128", False), (64, 64, 64))]
        nets += [(name, conditional_config(name, False), spec["grid"]) for name, spec in CONDITIONAL.items()]
    for name, config, grid in nets:

        def count(config=config, grid=grid, name=name) -> dict[str, Any]:
            flops = meta_flops(config, grid)
            suite.flops[f"{name}@{'x'.join(map(str, grid))}"] = flops
            figures: dict[str, Any] = {"tflop_per_forward": significant(flops / 1e12)}
            if name in STATED_TFLOP:
                figures["stated_tflop"] = STATED_TFLOP[name]
                figures["matches_stated_2_digits"] = round(flops / 1e12, 2) == STATED_TFLOP[name]
            return figures

        part.measure({"what": "meta-device count", "network": name, "grid": list(grid)}, count)

    # Cross-check on real tensors: a small size on the CPU, scaled by the voxel count (every counted
    # operation is a convolution over the whole grid, so the count is proportional to it).
    small = TINY_GRID if suite.tiny else 32

    def cpu_check() -> dict[str, Any]:
        config = preset("unet-128", suite.tiny)
        flops = count_flops(build(config, "cpu"), (1, 8, small, small, small))
        scaled = flops * (64 / small) ** 3
        meta = meta_flops(config, (64, 64, 64))
        return {"tflop_scaled_to_64": round(scaled / 1e12, 6), "meta_tflop_at_64": round(meta / 1e12, 6),
                "scaled_over_meta": round(scaled / meta, 6)}  # fmt: skip

    network = "unet-128" + (" (tiny stand-in)" if suite.tiny else "")
    part.measure({"what": "cpu count, scaled", "network": network, "grid": [small] * 3}, cpu_check)
