"""The ``released`` part: the released wdm-3d network, imported at run time from a copy outside the
repository (``--released PATH``), loaded with the same weights as ours; outputs compared, and its forward and
per-step times next to ours on the same device."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

from .generation import sampling_setup
from .measuring import make_call, max_abs, precision_mode, sync, time_forward
from .networks import TINY_MULT, build, preset
from .recording import BudgetExceeded, Part
from .suite import Suite

# The released networks' model arguments (the released code's run.sh flags).
RELEASED_ARGS = {
    "unet-128": {"image_size": 128, "channel_mult": "1,2,2,4,4", "additive_skips": True, "use_freq": False},
    "unet-256": {"image_size": 256, "channel_mult": "1,2,2,4,4,4", "additive_skips": True, "use_freq": False},
}
COMMON_RELEASED_ARGS = {
    "num_channels": 64, "num_res_blocks": 2, "num_heads": 1, "num_heads_upsample": -1, "num_head_channels": -1,
    "attention_resolutions": "", "dropout": 0.0, "class_cond": False, "use_checkpoint": False,
    "use_scale_shift_norm": False, "resblock_updown": True, "use_fp16": False, "use_new_attention_order": False,
    "dims": 3, "num_groups": 32, "in_channels": 8, "out_channels": 8, "bottleneck_attention": False,
    "resample_2d": False, "mode": "default", "predict_xstart": True, "learn_sigma": False, "diffusion_steps": 1000,
    "noise_schedule": "linear", "timestep_respacing": "", "use_kl": False, "rescale_timesteps": False,
    "rescale_learned_sigmas": False, "dataset": "brats",
}  # fmt: skip


def run(suite: Suite, part: Part) -> None:
    if not suite.args.released:
        part.record["status"] = "skipped: no --released path given"
        part.note("skipped: no --released path given (a copy of the released wdm-3d code outside the repository)")
        return
    path = Path(suite.args.released).expanduser().resolve()
    if not (path / "guided_diffusion").is_dir():
        part.record["status"] = f"skipped: {path} holds no guided_diffusion package"
        return
    dev = suite.device
    names = ["unet-128"] if suite.tiny else ["unet-128", "unet-256"]
    for name in names:

        def run(name=name) -> dict[str, Any]:
            released, released_diffusion = _released_model(path, name, suite.tiny)
            released.to(dev)  # the released class overrides .to() and returns None
            released.eval()
            # Perturb the released weights (its output conv starts at zero), then load them into ours.
            gen = torch.Generator().manual_seed(4321)
            with torch.no_grad():
                for p in released.parameters():
                    p.add_(torch.randn(p.shape, generator=gen).to(dev) * 0.02)
            ours = build(preset(name, suite.tiny), dev)
            ours.load_state_dict(released.state_dict(), strict=True)
            grid = sampling_setup(name, suite.tiny)[1]
            x = torch.randn(1, 8, grid, grid, grid, generator=torch.Generator().manual_seed(1)).to(dev)
            t = torch.tensor([500], device=dev)
            figures: dict[str, Any] = {"grid": grid}
            with torch.no_grad(), precision_mode(dev, "fp32"):
                figures["ours_vs_released_max_abs_fp32"] = max_abs(ours(x, t), released(x, t))
            # Released code as it runs (PyTorch's default flags, fp32 weights, contiguous layout).
            for label, net in (("released", released), ("ours", ours)):
                figures[f"{label}_forward_ms"] = time_forward(net, x, t, dev, part)
            ours_best = make_call(ours.to(memory_format=torch.channels_last_3d), dev, "bf16", True)
            figures["ours_bf16_channels_last_forward_ms"] = time_forward(ours_best, x, t, dev, part)
            figures["speedup_same_settings"] = round(figures["released_forward_ms"] / figures["ours_forward_ms"], 3)
            figures["speedup_ours_bf16_cl"] = round(
                figures["released_forward_ms"] / figures["ours_bf16_channels_last_forward_ms"], 3
            )
            if released_diffusion is not None:
                figures["released_step_ms"] = _time_released_step(released, released_diffusion, x, dev, part)
            figures["ours_step_ms"] = _time_our_step(make_call(ours, dev, "default", False), x, dev, part)
            figures["ours_bf16_channels_last_step_ms"] = _time_our_step(ours_best, x, dev, part)
            return figures

        part.measure({"what": "released vs ours, forward", "network": name, "released_path": str(path)}, run,
                     need_s=2 if suite.tiny else 10)  # fmt: skip


def _time_released_step(model, diffusion, x, device, part: Part, repeats: int = 3) -> float | str:
    """One released ancestral step (its p_sample: network, image-space clip through its IDWT/DWT, noise)."""
    try:
        times = []
        t = torch.tensor([500], device=device)
        with torch.no_grad():
            diffusion.p_sample(model, x, t, clip_denoised=True)
            sync(device)
            for _ in range(repeats):
                part.check()
                start = time.perf_counter()
                diffusion.p_sample(model, x, t, clip_denoised=True)
                sync(device)
                times.append(time.perf_counter() - start)
        return round(1000 * sorted(times)[len(times) // 2], 3)
    except BudgetExceeded:
        raise
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"[:300]


def _time_our_step(call, x: torch.Tensor, device: torch.device, part: Part, repeats: int = 3) -> float:
    """One of our ancestral steps at t = 500 (network, image-space clip, posterior mean, per-step noise)."""
    from wdmcore.diffusion import Diffusion
    from wdmcore.samplers import NoiseSource

    diffusion, noise = Diffusion(), NoiseSource([0], device)
    t = torch.tensor([500], device=device)

    def step() -> None:
        diffusion.p_sample(call(x, diffusion.model_timesteps(t)), x, t, noise.step(x))

    times = []
    with torch.no_grad():
        step()
        sync(device)
        for _ in range(repeats):
            part.check()
            start = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 3)


class _InertModule(types.ModuleType):
    """Stand-in for a package the released code imports at module level but never uses for a forward pass."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _InertModule(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is not installed here (inert stand-in)")


def _released_model(path: Path, name: str, tiny: bool):
    """The released network (and diffusion, when its module imports) from a copy at ``path``."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    args = {**COMMON_RELEASED_ARGS, **RELEASED_ARGS[name]}
    if tiny:
        args.update(num_channels=8, num_groups=4, channel_mult=",".join(map(str, TINY_MULT[name])))
    # Missing packages that the released modules import only for plotting, logging or file access.
    for _ in range(8):
        try:
            from guided_diffusion.script_util import create_model_and_diffusion

            return create_model_and_diffusion(**args)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing not in ("blobfile", "torchvision", "matplotlib", "PIL", "scipy", "nibabel"):
                raise
            for module_name in (missing, f"{missing}.utils", f"{missing}.transforms", f"{missing}.pyplot",
                                f"{missing}.ndimage", f"{missing}.interpolate"):  # fmt: skip
                sys.modules.setdefault(module_name, _InertModule(module_name))
            for module_name in [m for m in sys.modules if m.startswith("guided_diffusion")]:
                del sys.modules[module_name]
    from guided_diffusion.unet import UNetModel  # noqa: F401  (raises the real import error)

    raise RuntimeError("could not import the released code")
