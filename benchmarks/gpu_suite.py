"""One command that measures everything a GPU can tell us about wdmcore, and its CPU dry run.

    python benchmarks/gpu_suite.py                          # on a CUDA machine: the whole suite, ~8 minutes
    python benchmarks/gpu_suite.py --device cpu --tiny      # the dry run: same code paths, tiny sizes, < 1 min
    python benchmarks/gpu_suite.py --parts env,gen128 --budget-scale 0.5
    python benchmarks/gpu_suite.py --released /path/to/wdm-3d   # also time the released code, side by side

Parts (each with its own time budget; a measurement that would start after its part's budget is recorded as
"skipped: budget", one that fails records its error, and the suite goes on):

* ``env``: GPU name, driver, torch / CUDA / cuDNN versions, and the measured bf16 matrix-product peak.
* ``flops``: FLOPs of one forward pass of every network timed below, counted with
  ``torch.utils.flop_counter`` on the meta device at full size, cross-checked on the CPU at a small size.
* ``correctness``: forwards on the device against the CPU (fp32, TF32 off) with the reference fixtures, the
  engine's own network call, an ancestral and a DDIM run from the same initial noise, bf16/fp16 against fp32,
  and the released-layout unet-128 / unet-256 at a small size.
* ``gen128`` / ``gen256``: per-step time, time per volume, peak memory and achieved TFLOP/s of sampling at
  128^3 (unet-128, 64^3 coefficients) and 256^3 (unet-256, 128^3 coefficients): fp32 / TF32 / bf16, with and
  without channels-last-3d and torch.compile, the largest batch that fits, and one end-to-end
  ``wdmcore.generate`` call.
* ``train``: training it/s and peak memory, unet-128 at batch 10 and unet-256 at batch 1, fp32 and bf16, with
  and without activation checkpointing and torch.compile, with the engine's loss and EMA.
* ``ddp``: a two-process DistributedDataParallel run (NCCL on two GPUs; gloo on the CPU in the dry run).
* ``released``: with ``--released PATH``, the released wdm-3d network imported from PATH at run time
  (never part of this repository): its forward and per-step times against ours on the same device.
* ``conditional``: the cWDM (32 input channels) and fastWDM3D (24 input channels) networks, built by the
  engine's NetworkConfig: device-vs-CPU check against their fixtures and forward time and memory.

Every network here has random weights: speed and memory do not depend on the values, and the correctness
checks compare the same weights on two devices. Results go to ``benchmarks/results/`` (or ``--out``) as
``gpu_suite_<device>_<date>.json`` and ``.md``, rewritten after every measurement so that a run stopped
part-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any

from gpu_suite_report import BudgetExceeded, Part, Recorder, part_status, say, significant

say("gpu_suite: starting (importing torch)")

import torch  # noqa: E402  (imported after the first progress line: the import alone takes seconds)

REPO = Path(__file__).resolve().parents[1]
PARTS = ["env", "flops", "correctness", "gen128", "gen256", "train", "ddp", "released", "conditional"]
# Seconds per part at --budget-scale 1 (about 8 minutes in all on one GPU when every part uses its budget).
BUDGETS = {"env": 20, "flops": 15, "correctness": 45, "gen128": 100, "gen256": 100, "train": 100, "ddp": 30,
           "released": 30, "conditional": 30}  # fmt: skip
# The figures these measurements are checked against (counted by the flops part, which records its own count).
STATED_TFLOP = {"unet-128": 1.05, "unet-256": 8.41}
# Network calls of the engine's default sampler (tasks/generate.py: UniPC, 25): a volume costs that many steps.
DEFAULT_CALLS = 25

# The released networks' model arguments (run.sh flags of the released code, the conditional networks' facts).
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


# ---------------------------------------------------------------------------------------------- device helpers


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
    }


@contextlib.contextmanager
def precision_mode(device: torch.device, precision: str):
    """``fp32`` (TF32 off: true fp32 arithmetic), ``tf32`` (TF32 convolutions and matmuls), ``bf16``/``fp16``
    (autocast, TF32 on for what stays fp32), ``default`` (fp32 with PyTorch's flags as they are: on CUDA that is
    TF32 convolutions and fp32 matmuls)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if precision != "default":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    try:
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            with torch.autocast(device.type, dtype=dtype):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_call(network: torch.nn.Module, device: torch.device, precision: str, channels_last: bool):
    """network(x, t) in a precision and memory format; output fp32 (what the samplers receive)."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with precision_mode(device, precision):
            out = network(x, t)
        return out.float()

    return call


def engine_network_call():
    """The engine's own network call of ``generate`` (precision, channels-last on CUDA, fp32 output)."""
    from wdmcore.tasks.generate import _network_call

    return _network_call


# --------------------------------------------------------------------------------------------------- networks


def randomize(network: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give the zero-initialised output convolutions random weights, so that every layer shapes the output
    (with the released initialisation a fresh network outputs exactly zero and compares trivially)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv3d) and not module.weight.any():
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                module.weight.copy_((torch.rand(module.weight.shape, generator=generator) * 2 - 1) * bound)
                module.bias.copy_((torch.rand(module.bias.shape, generator=generator) * 2 - 1) * bound)
    return network


# The dry run's stand-ins: same architecture and code, 8 base channels, fewer levels (CPU bf16 convolutions are
# very slow, and a full-depth unet-256 needs a 32^3 grid), so that every network runs on an 8^3 grid.
TINY_MULT = {"unet-128": (1, 2, 2), "unet-256": (1, 2, 2, 2), "wavunet-128": (1, 2), "wavunet-256": (1, 2)}
TINY_GRID = 8


def preset(name: str, tiny: bool, **changes: Any):
    """A preset's NetworkConfig; with ``tiny`` the dry run's small stand-in of it."""
    from wdmcore.networks import preset_config

    config = preset_config(name)
    if tiny:
        changes = {"model_channels": 8, "num_groups": 4, "channel_mult": TINY_MULT[name], **changes}
    return dataclasses.replace(config, **changes) if changes else config


def build(config, device: torch.device | str = "cpu", seed: int = 0) -> torch.nn.Module:
    from wdmcore.networks import build_network

    torch.manual_seed(seed)
    return randomize(build_network(config), seed + 1).to(device).eval()


def conditional_config(name: str, tiny: bool):
    from wdmcore.networks import config_from_official_args

    args = dict(CONDITIONAL[name]["args"])
    if tiny:
        args.update(num_channels=8, num_groups=4, channel_mult="1,2,2")
    return config_from_official_args(args)


def count_flops(network: torch.nn.Module, shape: tuple[int, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    device = next(network.parameters()).device
    x = torch.empty(shape, device=device) if device.type == "meta" else torch.randn(shape, device=device)
    t = torch.zeros(shape[0], dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(x, t)
    return float(counter.get_total_flops())


def meta_flops(config, grid: tuple[int, int, int], batch: int = 1) -> float:
    from wdmcore.networks import build_network

    with torch.device("meta"):
        network = build_network(config).eval()
    return count_flops(network, (batch, config.in_channels, *grid))


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double().cpu(), reference.double().cpu()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


def max_abs(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double().cpu() - reference.double().cpu()).abs().max())


def reference_dir(args: argparse.Namespace) -> Path | None:
    candidates = [args.reference] if args.reference else []
    candidates += [
        os.environ.get("WDM_REFERENCE_DIR"),
        REPO / "Testing" / "reference",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


# ----------------------------------------------------------------------------------------------------- parts


class Suite:
    def __init__(self, args: argparse.Namespace, device: torch.device, recorder: Recorder):
        self.args = args
        self.device = device
        self.tiny = args.tiny
        self.recorder = recorder
        self.matmul_peak_tflops: float | None = None
        self.flops: dict[str, float] = {}
        self.reference = reference_dir(args)
        self.compiled_paths: set[str] = set()

    def may_compile(self, path: str) -> bool:
        """The dry run compiles once per code path (generation, training): each compile costs seconds on a CPU."""
        if not self.tiny:
            return True
        if path in self.compiled_paths:
            return False
        self.compiled_paths.add(path)
        return True

    # -- helpers shared by the timing parts --

    def gen_setup(self, name: str):
        """(config, coefficient grid, image size) of a generation benchmark."""
        config = preset(name, self.tiny)
        grid = {"unet-128": 64, "unet-256": 128}[name]
        if self.tiny:
            grid = TINY_GRID
        return config, grid

    def flops_of(self, name: str, config, grid: tuple[int, int, int]) -> float:
        key = f"{name}@{'x'.join(map(str, grid))}"
        if key not in self.flops:
            self.flops[key] = meta_flops(config, grid)
        return self.flops[key]

    def tflops(self, flops_per_volume: float, batch: int, seconds: float) -> dict[str, float]:
        achieved = flops_per_volume * batch / seconds / 1e12
        out = {"achieved_tflops": significant(achieved)}
        if self.matmul_peak_tflops:
            out["pct_of_bf16_matmul_peak"] = significant(100 * achieved / self.matmul_peak_tflops)
        return out

    def time_sampling(self, part: Part, call, batch: int, grid: int, warm: int, timed: int) -> dict[str, float]:
        """Ancestral sampling steps through the engine's sampler; median per-step time after ``warm`` steps."""
        from wdmcore.diffusion import Diffusion
        from wdmcore.samplers import NoiseSource, run_sampler

        noise = NoiseSource(list(range(batch)), self.device)
        x = noise.initial((8, grid, grid, grid))
        stamps: list[float] = []

        def on_step(done, total, x_now, pred):
            sync(self.device)
            stamps.append(time.perf_counter())
            if done > warm + 1 and part.left() <= 0:
                raise BudgetExceeded

        sync(self.device)
        start = time.perf_counter()
        stopped = False
        with torch.inference_mode():
            try:
                run_sampler("ancestral", call, Diffusion(), x, noise, steps=warm + timed, on_step=on_step)
            except BudgetExceeded:
                stopped = True
        if len(stamps) < warm + 2:
            raise BudgetExceeded
        steps = sorted(b - a for a, b in zip(stamps[warm:], stamps[warm + 1 :], strict=False))
        per_step = steps[len(steps) // 2]
        figures = {
            "first_step_s": round(stamps[0] - start, 3),
            "step_ms": round(1000 * per_step, 3),
            "timed_steps": len(steps),
            "volume_s_default": round(per_step * DEFAULT_CALLS / batch, 3),
        }
        if stopped:
            figures["note"] = "stopped part-way by the budget"
        return figures

    # -- env --

    def part_env(self, part: Part) -> None:
        env: dict[str, Any] = {
            "device": str(self.device),
            "device_name": _device_name(self.device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda_device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "git_commit": _git_commit(),
            "wdmcore": _wdmcore_location(),
            "reference_dir": str(self.reference) if self.reference else None,
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            env.update(
                gpu_memory_gb=round(props.total_memory / 2**30, 2),
                multiprocessors=props.multi_processor_count,
                compute_capability=f"{props.major}.{props.minor}",
                driver=_nvidia_smi("driver_version"),
                nvidia_smi_name=_nvidia_smi("name"),
                cudnn_benchmark_default=torch.backends.cudnn.benchmark,
                cudnn_allow_tf32_default=torch.backends.cudnn.allow_tf32,
                matmul_allow_tf32_default=torch.backends.cuda.matmul.allow_tf32,
            )
        self.recorder.data["environment"] = env
        part.row(
            what="environment",
            **{
                k: v
                for k, v in env.items()
                if k in ("device_name", "torch", "cuda", "cpu_count", "cuda_device_count", "gpu_memory_gb")
            },
            status="ok",
        )

        n = 256 if self.tiny else 8192

        def matmul_peak() -> dict[str, Any]:
            gen = torch.Generator(device=self.device).manual_seed(0)
            a = torch.randn(n, n, device=self.device, dtype=torch.bfloat16, generator=gen)
            b = torch.randn(n, n, device=self.device, dtype=torch.bfloat16, generator=gen)
            for _ in range(3):
                a @ b
            sync(self.device)
            times = []
            for _ in range(10):
                start = time.perf_counter()
                a @ b
                sync(self.device)
                times.append(time.perf_counter() - start)
            median = sorted(times)[len(times) // 2]
            self.matmul_peak_tflops = 2 * n**3 / median / 1e12
            return {"tflops": significant(self.matmul_peak_tflops), "median_ms": round(1000 * median, 3)}

        part.measure({"what": "bf16 matmul peak", "n": n, "method": "median of 10 after 3 warm-ups"}, matmul_peak)

    # -- flops --

    def part_flops(self, part: Part) -> None:
        part.note(
            "FLOPs = torch.utils.flop_counter count of one forward pass (2 per multiply-add; convolutions and "
            "matrix products only: GroupNorm, SiLU and additions are not counted)."
        )
        nets = [
            ("unet-128", preset("unet-128", False), (64, 64, 64)),
            ("unet-256", preset("unet-256", False), (128,) * 3),
        ]
        if not self.tiny:  # the dry run counts the two stated figures only (each count takes a second on a CPU)
            nets += [("wavunet-128", preset("wavunet-128", False), (64, 64, 64))]
            nets += [(name, conditional_config(name, False), spec["grid"]) for name, spec in CONDITIONAL.items()]
        for name, config, grid in nets:

            def count(config=config, grid=grid, name=name) -> dict[str, Any]:
                flops = meta_flops(config, grid)
                self.flops[f"{name}@{'x'.join(map(str, grid))}"] = flops
                figures: dict[str, Any] = {"tflop_per_forward": significant(flops / 1e12)}
                if name in STATED_TFLOP:
                    figures["stated_tflop"] = STATED_TFLOP[name]
                    figures["matches_stated_2_digits"] = round(flops / 1e12, 2) == STATED_TFLOP[name]
                return figures

            part.measure({"what": "meta-device count", "network": name, "grid": list(grid)}, count)

        # Cross-check on real tensors: a small size on the CPU, scaled by the voxel count (every counted
        # operation is a convolution over the whole grid, so the count is proportional to it).
        small = TINY_GRID if self.tiny else 32

        def cpu_check() -> dict[str, Any]:
            config = preset("unet-128", self.tiny)
            flops = count_flops(build(config, "cpu"), (1, 8, small, small, small))
            scaled = flops * (64 / small) ** 3
            meta = meta_flops(config, (64, 64, 64))
            return {"tflop_scaled_to_64": round(scaled / 1e12, 6), "meta_tflop_at_64": round(meta / 1e12, 6),
                    "scaled_over_meta": round(scaled / meta, 6)}  # fmt: skip

        network = "unet-128" + (" (tiny stand-in)" if self.tiny else "")
        part.measure({"what": "cpu count, scaled", "network": network, "grid": [small] * 3}, cpu_check)

    # -- correctness --

    def part_correctness(self, part: Part) -> None:
        dev = self.device
        part.note(
            "Device runs use fp32 with TF32 off unless the row says otherwise; tolerance 1e-4 (max abs) for fp32. "
            f"Reference fixtures: {self.reference or 'not found (tiny random networks instead)'}."
        )
        fixtures = []
        if self.reference:
            fixtures = [f for f in ("unet_tiny_additive.pt", "wnet_tiny_freq.pt") if (self.reference / f).is_file()]

        from wdmcore.networks import from_official_args

        for fixture in fixtures:

            def check(fixture=fixture) -> dict[str, Any]:
                data = torch.load(self.reference / fixture, map_location="cpu", weights_only=False)
                network = from_official_args(data["config"])
                network.load_state_dict(data["state_dict"], strict=True)
                network.eval()
                with torch.no_grad():
                    cpu_out = network(data["x_t"], data["timesteps"])
                    network.to(dev)
                    with precision_mode(dev, "fp32"):
                        dev_out = network(data["x_t"].to(dev), data["timesteps"].to(dev))
                    with precision_mode(dev, "fp32"):
                        cl_out = engine_network_call()(network, dev, "fp32")(
                            data["x_t"].to(dev), data["timesteps"].to(dev)
                        )
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
                network = build(preset(arch, self.tiny), dev)
                grid = TINY_GRID if self.tiny else 32
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
                grid = TINY_GRID if self.tiny else 32
                network = build(preset(name, self.tiny))
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

    # -- generation --

    def part_generation(self, part: Part, name: str) -> None:
        dev = self.device
        config, grid = self.gen_setup(name)
        flops = self.flops_of(name, config, (grid,) * 3)
        part.note(
            f"{name}: coefficient grid {grid}^3 (image {2 * grid}^3), {flops / 1e12:.4g} TFLOP per forward, "
            "random weights. step_ms: median wall time of one ancestral step (network + update + noise draw, "
            f"synchronised each step); volume_s_default = step time x {DEFAULT_CALLS} (the default sampler's "
            "network calls) / batch."
        )
        network = build(config, dev)
        warm, timed = (1, 3) if self.tiny else (2, 8)
        eager_need = 1 if self.tiny else 5
        compile_need = 3 if self.tiny else 45

        def variant(precision: str, channels_last: bool, compiled: bool = False, batch: int = 1,
                    cudnn_benchmark: bool = False, steps: tuple[int, int] = (warm, timed)):  # fmt: skip
            def run() -> dict[str, Any]:
                net = network.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
                if compiled:
                    net = torch.compile(net, backend=self.compile_backend(), dynamic=False)
                saved = torch.backends.cudnn.benchmark
                torch.backends.cudnn.benchmark = cudnn_benchmark
                try:
                    reset_peak(dev)
                    figures = self.time_sampling(
                        part, make_call(net, dev, precision, channels_last), batch, grid, *steps
                    )
                finally:
                    torch.backends.cudnn.benchmark = saved
                    if compiled:
                        torch._dynamo.reset()
                figures.update(peak_memory(dev))
                figures.update(self.tflops(flops, batch, figures["step_ms"] / 1000))
                if compiled:
                    figures["compile_s"] = figures["first_step_s"]
                return figures

            what = {"network": name, "image": 2 * grid, "batch": batch, "precision": precision,
                    "channels_last": channels_last, "compile": compiled,
                    "cudnn_benchmark": cudnn_benchmark}  # fmt: skip
            if compiled and not self.may_compile("generation"):
                part.row(**what, status="skipped: the dry run compiles once per code path")
                return None
            return part.measure(what, run, need_s=compile_need if compiled else eager_need)

        best = variant("bf16", True)
        # The dry run's second network runs the same code: two settings are enough there.
        short = self.tiny and name != "unet-128"
        others = (("fp32", False),) if short else (("fp32", False), ("tf32", False), ("bf16", False), ("fp32", True),
                                                   ("tf32", True))  # fmt: skip
        for precision, cl in others:
            variant(precision, cl)
        if not short:
            variant("bf16", True, cudnn_benchmark=True)
            variant("fp16", True)

        # Largest batch that fits: double until out of memory (bf16, channels-last).
        cap = (2 if short else 4) if self.tiny else (64 if name == "unet-128" else 16)
        largest, batch, stopped_by = best, 2, f"the cap of {cap}"
        while batch <= cap:
            row = variant("bf16", True, batch=batch, steps=(1, 2))
            if row is None:
                stopped_by = part.record["rows"][-1]["status"]
                break
            largest = row
            batch *= 2
        if largest:
            part.note(
                f"largest batch measured (bf16, channels-last): {largest['batch']}; search stopped by {stopped_by}"
            )

        # One end-to-end call of the engine's generate() with its default sampler: noise, the default calls, IDWT,
        # copy to the host.
        def end_to_end() -> dict[str, Any]:
            from wdmcore import WDMModel, generate

            model = WDMModel(network.to(memory_format=torch.contiguous_format), {"image_size": 2 * grid, "name": name})
            steps = 5 if self.tiny else DEFAULT_CALLS
            precision = "bf16" if dev.type == "cuda" else "fp32"
            generate(model, 1, steps=2, device=dev, precision=precision)  # warm-up (cuDNN plans, allocator)
            reset_peak(dev)
            start = time.perf_counter()
            volumes = generate(model, 1, steps=steps, device=dev, precision=precision)
            sync(dev)
            seconds = time.perf_counter() - start
            finite = all(math.isfinite(float(v.array.sum())) for v in volumes)
            return {"steps": steps, "engine_precision": precision, "volume_s": round(seconds, 3),
                    "finite": finite, **peak_memory(dev)}  # fmt: skip

        part.measure({"network": name, "image": 2 * grid, "batch": 1, "what": "wdmcore.generate end to end"},
                     end_to_end, need_s=eager_need * 4)  # fmt: skip

        # Compiles last: each takes tens of seconds and may use up what is left of the budget.
        variant("bf16", True, compiled=True)
        variant("fp32", False, compiled=True)

    def compile_backend(self) -> str:
        # On the CPU dry run the inductor backend would compile C++ for a minute; "eager" still runs
        # TorchDynamo's graph capture of our networks, which is what can break.
        return "eager" if self.device.type == "cpu" else "inductor"

    # -- training --

    def part_train(self, part: Part) -> None:
        part.note(
            "One step = the engine's Diffusion.training_loss under the precision's settings, backward, AdamW and "
            "the engine's EMA update, on random images in [-1, 1]; it_per_s from the median timed step. "
            "Precisions: bf16 = autocast; tf32 = fp32 weights with TF32 convolutions, which is what the training "
            "loop's fp32 runs on CUDA with PyTorch's default flags; fp32 = TF32 off."
        )
        cases = [("unet-128", 10, 128), ("unet-256", 1, 256)]
        if self.tiny:
            cases = [("unet-128", 2, 2 * TINY_GRID), ("unet-256", 1, 2 * TINY_GRID)]
        # (precision, activation checkpointing, compile); every eager variant of both networks first, so that
        # the slow compiles cannot starve them of budget.
        eager = [("bf16", False), ("tf32", False), ("bf16", True), ("tf32", True), ("fp32", False)]
        compiled = [("bf16", False), ("bf16", True), ("tf32", False)]
        if self.device.type == "cpu":  # wdm train refuses bf16 on the CPU (docs/training.md): not measured there
            eager = [item for item in eager if item[0] != "bf16"]
            compiled = [item for item in compiled if item[0] != "bf16"]
            part.note("bf16 rows left out on the CPU, where wdm train refuses bf16.")
        plan = [(case, p, c, False) for case in cases for p, c in eager]
        if self.tiny:  # the dry run's second network runs the same code: one setting is enough there
            plan = [item for item in plan if item[0] == cases[0] or item[1:3] == eager[0]]
        plan += [(case, p, c, True) for case in cases for p, c in compiled]
        for (name, batch, size), precision, checkpointing, compiling in plan:
            what = {"network": name, "image": size, "batch": batch, "precision": precision,
                    "activation_checkpointing": checkpointing, "compile": compiling}  # fmt: skip
            if compiling and not self.may_compile("training"):
                part.row(**what, status="skipped: the dry run compiles once per code path")
                continue
            need = (3 if self.tiny else 60) if compiling else (1 if self.tiny else 8)
            part.measure(what, lambda w=what: self.time_training(part, **w), need_s=need)
            free_memory()

    def time_training(self, part: Part, *, network: str, image: int, batch: int, precision: str,
                      activation_checkpointing: bool, compile: bool) -> dict[str, Any]:  # fmt: skip
        from wdmcore.diffusion import Diffusion
        from wdmcore.training import EMA

        dev = self.device
        warm, timed = (1, 2) if self.tiny else (2, 5)
        net = build(preset(network, self.tiny, use_checkpoint=activation_checkpointing), dev).train()
        ema = EMA(net, 0.9999, True)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
        model = torch.compile(net, backend=self.compile_backend()) if compile else net
        diffusion = Diffusion()
        gen = torch.Generator(device=dev).manual_seed(0)
        images = torch.rand(batch, 1, image, image, image, generator=gen, device=dev) * 2 - 1
        reset_peak(dev)
        times: list[float] = []
        try:
            for i in range(warm + timed):
                if i > warm:
                    part.check()
                start = time.perf_counter()
                t = torch.randint(0, 1000, (batch,), generator=gen, device=dev)
                optimizer.zero_grad(set_to_none=True)
                with precision_mode(dev, precision):
                    loss, _ = diffusion.training_loss(model, images, t, generator=gen)
                loss.backward()
                optimizer.step()
                ema.update(net)
                sync(dev)
                times.append(time.perf_counter() - start)
        except BudgetExceeded:
            if len(times) < warm + 1:
                raise
        finally:
            if compile:
                torch._dynamo.reset()
        steady = sorted(times[warm:])
        median = steady[len(steady) // 2]
        figures = {"first_step_s": round(times[0], 3), "step_s": round(median, 4), "it_per_s": round(1 / median, 3),
                   "timed_steps": len(steady), "loss_finite": bool(torch.isfinite(loss).item()),
                   **peak_memory(dev)}  # fmt: skip
        if compile:
            figures["compile_s"] = figures["first_step_s"]
        return figures

    # -- ddp --

    def part_ddp(self, part: Part) -> None:
        dev = self.device
        if dev.type == "cuda" and torch.cuda.device_count() < 2:
            part.record["status"] = "skipped: 1 GPU"
            part.note("skipped: 1 GPU (the two-process NCCL run needs two)")
            return
        backend = "nccl" if dev.type == "cuda" else "gloo"
        name, size, per_rank = ("unet-128", 2 * TINY_GRID, 1) if self.tiny else ("unet-128", 128, 5)
        steps = 3 if self.tiny else 6

        def run() -> dict[str, Any]:
            import torch.multiprocessing as mp

            with tempfile.TemporaryDirectory() as folder:
                result = Path(folder) / "rank0.json"
                # A file store in the temporary folder: no port to collide with another run on the machine.
                store = Path(folder) / "store"
                spec = {"backend": backend, "device": dev.type, "tiny": self.tiny, "name": name, "size": size,
                        "batch": per_rank, "steps": steps, "store": str(store), "result": str(result)}  # fmt: skip
                # Fresh processes: forking a process that already ran threads (OpenMP, TorchDynamo) can deadlock.
                mp.start_processes(_ddp_worker, args=(spec,), nprocs=2, join=True, start_method="spawn")
                return json.loads(result.read_text())

        what = {"network": name, "image": size, "processes": 2, "batch_per_process": per_rank, "backend": backend,
                "precision": "bf16" if dev.type == "cuda" else "fp32"}  # fmt: skip
        part.measure(what, run, need_s=2 if self.tiny else 20)

    # -- released code --

    def part_released(self, part: Part) -> None:
        if not self.args.released:
            part.record["status"] = "skipped: no --released path given"
            part.note("skipped: no --released path given (a copy of the released wdm-3d code outside the repository)")
            return
        path = Path(self.args.released).expanduser().resolve()
        if not (path / "guided_diffusion").is_dir():
            part.record["status"] = f"skipped: {path} holds no guided_diffusion package"
            return
        dev = self.device
        names = ["unet-128"] if self.tiny else ["unet-128", "unet-256"]
        for name in names:

            def run(name=name) -> dict[str, Any]:
                released, released_diffusion = _released_model(path, name, self.tiny)
                released.to(dev)  # the released class overrides .to() and returns None
                released.eval()
                # Perturb the released weights (its output conv starts at zero), then load them into ours.
                gen = torch.Generator().manual_seed(4321)
                with torch.no_grad():
                    for p in released.parameters():
                        p.add_(torch.randn(p.shape, generator=gen).to(dev) * 0.02)
                ours = build(preset(name, self.tiny), dev)
                ours.load_state_dict(released.state_dict(), strict=True)
                grid = self.gen_setup(name)[1]
                x = torch.randn(1, 8, grid, grid, grid, generator=torch.Generator().manual_seed(1)).to(dev)
                t = torch.tensor([500], device=dev)
                figures: dict[str, Any] = {"grid": grid}
                with torch.no_grad(), precision_mode(dev, "fp32"):
                    figures["ours_vs_released_max_abs_fp32"] = max_abs(ours(x, t), released(x, t))
                # Released code as it runs (PyTorch's default flags, fp32 weights, contiguous layout).
                for label, net in (("released", released), ("ours", ours)):
                    figures[f"{label}_forward_ms"] = _time_forward(net, x, t, dev, part)
                ours_best = make_call(ours.to(memory_format=torch.channels_last_3d), dev, "bf16", True)
                figures["ours_bf16_channels_last_forward_ms"] = _time_forward(ours_best, x, t, dev, part)
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
                         need_s=2 if self.tiny else 10)  # fmt: skip

    # -- conditional networks --

    def part_conditional(self, part: Part) -> None:
        dev = self.device
        from wdmcore.networks import from_official_args

        for name, spec in CONDITIONAL.items():
            fixture = self.reference / spec["fixture"] if self.reference else None
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
                config = conditional_config(name, self.tiny)
                grid = spec["tiny_grid"] if self.tiny else spec["grid"]
                flops = meta_flops(config, grid)
                network = build(config, dev)
                x = torch.randn(1, config.in_channels, *grid, generator=torch.Generator().manual_seed(2)).to(dev)
                t = torch.tensor([500], device=dev)
                figures: dict[str, Any] = {"in_channels": config.in_channels, "grid": list(grid),
                                           "tflop_per_forward": significant(flops / 1e12)}  # fmt: skip
                for precision, cl in (("fp32", False), ("bf16", True)):
                    net = network.to(memory_format=torch.channels_last_3d if cl else torch.contiguous_format)
                    reset_peak(dev)
                    ms = _time_forward(make_call(net, dev, precision, cl), x, t, dev, part)
                    figures[f"{precision}{'_cl' if cl else ''}_forward_ms"] = ms
                    for key, value in peak_memory(dev).items():
                        figures[f"{precision}_{key}"] = value
                    figures.update({f"{precision}_{k}": v for k, v in self.tflops(flops, 1, ms / 1000).items()})
                return figures

            part.measure({"what": "forward speed", "network": name}, speed, need_s=1 if self.tiny else 8)
        part.note(
            "Both networks are plain U-Nets that the engine's NetworkConfig builds from their released arguments "
            "(in_channels 32 / 24); their samplers and conditioning are not part of the engine, so only the "
            "network forward is measured."
        )


def _time_forward(call, x: torch.Tensor, t: torch.Tensor, device: torch.device, part: Part, repeats: int = 5) -> float:
    """Median forward time in ms after one warm-up call (no_grad)."""
    times = []
    with torch.no_grad():
        call(x, t)
        sync(device)
        for _ in range(repeats):
            if times:
                part.check()
            start = time.perf_counter()
            call(x, t)
            sync(device)
            times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 3)


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


def _loopback_interface() -> str | None:
    """The loopback interface's name ("lo" on Linux, "lo0" on macOS), or None where it cannot be listed."""
    import socket

    try:
        names = [name for _, name in socket.if_nameindex()]
    except (AttributeError, OSError):
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def _ddp_worker(rank: int, spec: dict[str, Any]) -> None:
    import torch.distributed as dist

    device = torch.device("cuda", rank) if spec["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
        # gloo connects the two processes over the address the machine's hostname resolves to; on a machine
        # whose hostname resolves to an address it cannot reach, that fails. Both processes are local: loopback.
        loopback = _loopback_interface()
        if loopback:
            os.environ["GLOO_SOCKET_IFNAME"] = loopback
    store = dist.FileStore(spec["store"], 2)
    dist.init_process_group(spec["backend"], store=store, rank=rank, world_size=2)
    try:
        from wdmcore.diffusion import Diffusion

        config = preset(spec["name"], spec["tiny"])
        network = build(config, device).train()
        model = torch.nn.parallel.DistributedDataParallel(network, device_ids=[rank] if device.type == "cuda" else None)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5)
        diffusion = Diffusion()
        gen = torch.Generator(device=device).manual_seed(rank)
        size, batch = spec["size"], spec["batch"]
        image = torch.rand(batch, 1, size, size, size, generator=gen, device=device) * 2 - 1
        precision = "bf16" if device.type == "cuda" else "fp32"
        times = []
        for _ in range(spec["steps"]):
            start = time.perf_counter()
            t = torch.randint(0, 1000, (batch,), generator=gen, device=device)
            optimizer.zero_grad(set_to_none=True)
            with precision_mode(device, precision):
                loss, _ = diffusion.training_loss(model, image, t, generator=gen)
            loss.backward()
            optimizer.step()
            sync(device)
            times.append(time.perf_counter() - start)
        # Every rank holds the same weights after a step if the gradients were averaged.
        first = next(network.parameters()).detach().flatten()[:64].clone()
        gathered = [torch.zeros_like(first) for _ in range(2)]
        dist.all_gather(gathered, first)
        if rank == 0:
            steady = sorted(times[1:])
            median = steady[len(steady) // 2]
            result = {"first_step_s": round(times[0], 3), "step_s": round(median, 4), "it_per_s": round(1 / median, 3),
                      "global_batch": 2 * batch, "ranks_in_sync": bool(torch.equal(gathered[0], gathered[1])),
                      **peak_memory(device)}  # fmt: skip
            Path(spec["result"]).write_text(json.dumps(result))
        dist.barrier()  # neither rank tears down while the other still talks to it
    finally:
        dist.destroy_process_group()
    # gloo's worker threads can abort the process while the interpreter shuts down (SIGABRT, "terminate called
    # without an active exception"; pytorch/pytorch#179291); the work is done and written, so skip that shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def _wdmcore_location() -> str:
    import wdmcore

    return f"{wdmcore.__version__} at {Path(wdmcore.__file__).parent}"


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout  # fmt: skip
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# -------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and sizes: the CPU dry run for CI")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts ({', '.join(PARTS)}); "
                        "'generation' means gen128,gen256")  # fmt: skip
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the JSON and .md")
    parser.add_argument("--released", help="folder holding a copy of the released wdm-3d code (guided_diffusion/)")
    parser.add_argument(
        "--reference", help="folder of the reference fixtures (default: $WDM_REFERENCE_DIR, Testing/reference)"
    )
    args = parser.parse_args(argv)
    parts = []
    for item in args.parts.split(","):
        item = item.strip()
        expanded = ["gen128", "gen256"] if item == "generation" else [item]
        for part in expanded:
            if part not in PARTS:
                parser.error(f"unknown part {part!r}; choose from {', '.join(PARTS)} or 'generation'")
            if part not in parts:
                parts.append(part)
    args.part_list = parts
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        say("CUDA was requested but PyTorch sees no GPU; run with --device cpu --tiny for the dry run")
        return 2
    if device.type == "cpu" and args.tiny:
        # The dry run shares small CI machines: one thread is steadier than threads fighting for cores.
        torch.set_num_threads(1)
    import wdmcore

    say(f"wdmcore {wdmcore.__version__} from {Path(wdmcore.__file__).parent}; device {device}; parts {args.part_list}")
    recorder = Recorder(args.out, _device_name(device), args.tiny, args.budget_scale, cleanup=free_memory)
    suite = Suite(args, device, recorder)
    global_deadline = time.monotonic() + args.budget_scale * sum(BUDGETS[p] for p in args.part_list) + 30
    runners = {
        "env": suite.part_env,
        "flops": suite.part_flops,
        "correctness": suite.part_correctness,
        "gen128": lambda part: suite.part_generation(part, "unet-128"),
        "gen256": lambda part: suite.part_generation(part, "unet-256"),
        "train": suite.part_train,
        "ddp": suite.part_ddp,
        "released": suite.part_released,
        "conditional": suite.part_conditional,
    }
    for name in args.part_list:
        part = Part(name, BUDGETS[name] * args.budget_scale, recorder, global_deadline)
        say(f"== {name} (budget {part.budget_s:.0f} s)")
        try:
            runners[name](part)
        except Exception as exc:  # recorded; the next part runs
            part.record["status"] = f"error: {type(exc).__name__}: {exc}"[:400]
            part.record["traceback"] = traceback.format_exc(limit=8)[-3000:]
            say(f"{name}: {part.record['status']}")
        else:
            if part.record["status"] == "running":
                part.record["status"] = part_status(part.record["rows"])
        part.record["elapsed_s"] = round(time.monotonic() - part.started, 1)
        free_memory()
        recorder.write()
    say(f"done: {recorder.json_path} and {recorder.md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
