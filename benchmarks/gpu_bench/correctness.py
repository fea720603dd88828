"""The ``correctness`` part: the same weights on the device and on the CPU. Fixture forwards (fp32, TF32 off),
the engine's own network call, ancestral and DDIM runs from the same x_T, reduced precisions against fp32, and
the released layouts at a small size."""

from __future__ import annotations

from typing import Any

import torch

from .measuring import engine_network_call, make_call, max_abs, precision_mode, relative_error
from .networks import TINY_GRID, build, preset
from .recording import Part
from .suite import Suite


def run(suite: Suite, part: Part) -> None:
    dev = suite.device
    part.note(
        "Device runs use fp32 with TF32 off unless the row says otherwise; tolerance 1e-4 (max abs) for fp32. "
        f"Reference fixtures: {suite.reference or 'not found (tiny random networks instead)'}."
    )
    fixtures = []
    if suite.reference:
        fixtures = [f for f in ("unet_tiny_additive.pt", "wnet_tiny_freq.pt") if (suite.reference / f).is_file()]

    from wdmcore.networks import from_official_args

    for fixture in fixtures:

        def check(fixture=fixture) -> dict[str, Any]:
            data = torch.load(suite.reference / fixture, map_location="cpu", weights_only=False)
            network = from_official_args(data["config"])
            network.load_state_dict(data["state_dict"], strict=True)
            network.eval()
            with torch.no_grad():
                cpu_out = network(data["x_t"], data["timesteps"])
                network.to(dev)
                with precision_mode(dev, "fp32"):
                    dev_out = network(data["x_t"].to(dev), data["timesteps"].to(dev))
                with precision_mode(dev, "fp32"):
                    cl_out = engine_network_call()(network, dev, "fp32")(data["x_t"].to(dev), data["timesteps"].to(dev))
            dev_vs_fixture = max_abs(dev_out, data["output"])
            return {
                "cpu_vs_fixture_max_abs": max_abs(cpu_out, data["output"]),
                "device_vs_fixture_max_abs": dev_vs_fixture,
                "device_vs_cpu_max_abs": max_abs(dev_out, cpu_out),
                "engine_call_vs_cpu_max_abs": max_abs(cl_out, cpu_out),
                "pass_1e-4": dev_vs_fixture < 1e-4 and max_abs(cl_out, cpu_out) < 1e-4,
            }

        part.measure({"what": "fixture forward", "fixture": fixture}, check)

    if not fixtures:
        for arch in ("unet-128", "wavunet-128"):

            def check_random(arch=arch) -> dict[str, Any]:
                network = build(preset(arch, True))
                x = torch.randn(2, 8, 8, 8, 8, generator=torch.Generator().manual_seed(99))
                t = torch.tensor([10, 900])
                with torch.no_grad():
                    cpu_out = network(x, t)
                    network.to(dev)
                    with precision_mode(dev, "fp32"):
                        dev_out = network(x.to(dev), t.to(dev))
                return {
                    "device_vs_cpu_max_abs": max_abs(dev_out, cpu_out),
                    "pass_1e-4": max_abs(dev_out, cpu_out) < 1e-4,
                }

            part.measure({"what": "tiny random forward", "network": arch}, check_random)

    # The engine's fp32 call with PyTorch's default flags (cuDNN may use TF32 for convolutions on CUDA).
    def engine_default_flags() -> dict[str, Any]:
        config = preset("unet-128", True)
        network = build(config)
        x = torch.randn(1, 8, 8, 8, 8, generator=torch.Generator().manual_seed(5))
        t = torch.tensor([500])
        with torch.no_grad():
            cpu_out = network(x, t)
            network.to(dev)
            out = engine_network_call()(network, dev, "fp32")(x.to(dev), t.to(dev))
        return {
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "device_vs_cpu_max_abs": max_abs(out, cpu_out),
            "relative_error": relative_error(out, cpu_out),
        }

    part.measure({"what": "engine fp32 call, default backend flags", "network": "tiny unet"}, engine_default_flags)

    # Sampling from the same initial noise on the device and on the CPU.
    def trajectories() -> dict[str, Any]:
        from wdmcore.diffusion import Diffusion
        from wdmcore.samplers import NoiseSource, run_sampler

        config = preset("unet-128", True)
        network = build(config)
        results: dict[str, Any] = {}
        for sampler in ("ancestral", "ddim"):
            outs = []
            for where in ("cpu", dev):
                network.to(where)
                noise = NoiseSource([7], where)
                x = noise.initial((8, 8, 8, 8))
                call = make_call(network, torch.device(where), "fp32", False)
                with torch.inference_mode():
                    outs.append(run_sampler(sampler, call, Diffusion(), x, noise, steps=10).cpu())
            results[f"{sampler}_device_vs_cpu_max_abs"] = max_abs(outs[1], outs[0])
        results["ddim_pass_1e-3"] = results["ddim_device_vs_cpu_max_abs"] < 1e-3
        return results

    part.note(
        "Ancestral sampling draws its per-step noise on the device's own generator (the initial noise is drawn "
        "on the CPU generator, as released), so a CUDA trajectory differs from the CPU one after the first "
        "step: a large ancestral difference is expected on CUDA, not a bug. DDIM (eta 0) is deterministic "
        "given x_T and must agree closely."
    )
    part.measure({"what": "10-step trajectories, same x_T", "network": "tiny unet"}, trajectories)

    # Reduced precision against fp32 on the same device.
    for arch in ("unet-128", "wavunet-128"):

        def low_precision(arch=arch) -> dict[str, Any]:
            network = build(preset(arch, suite.tiny), dev)
            grid = TINY_GRID if suite.tiny else 32
            x = torch.randn(1, 8, grid, grid, grid, generator=torch.Generator().manual_seed(3)).to(dev)
            t = torch.tensor([250], device=dev)
            figures: dict[str, Any] = {"grid": grid}
            with torch.no_grad():
                ref = make_call(network, dev, "fp32", False)(x, t)
                for precision in ("tf32", "bf16", "fp16"):
                    try:
                        out = make_call(network, dev, precision, dev.type == "cuda")(x, t)
                        figures[f"{precision}_relative_error"] = relative_error(out, ref)
                        figures[f"{precision}_finite"] = bool(torch.isfinite(out).all())
                    except Exception as exc:  # e.g. fp16 autocast unsupported on this CPU build
                        figures[f"{precision}_error"] = f"{type(exc).__name__}: {exc}"[:200]
            return figures

        part.measure({"what": "reduced precision vs fp32", "network": arch}, low_precision)

    # The released layouts (full width) at a small spatial size.
    for name in ("unet-128", "unet-256"):

        def released_layout(name=name) -> dict[str, Any]:
            grid = TINY_GRID if suite.tiny else 32
            network = build(preset(name, suite.tiny))
            x = torch.randn(1, 8, grid, grid, grid, generator=torch.Generator().manual_seed(11))
            t = torch.tensor([123])
            with torch.no_grad():
                cpu_out = network(x, t)
                network.to(dev)
                with precision_mode(dev, "fp32"):
                    dev_out = network(x.to(dev), t.to(dev))
            error = max_abs(dev_out, cpu_out)
            return {"grid": grid, "device_vs_cpu_max_abs": error,
                    "relative_error": relative_error(dev_out, cpu_out), "pass_1e-4": error < 1e-4}  # fmt: skip

        part.measure({"what": "released layout forward", "network": name}, released_layout, need_s=2)
