"""The ``gen128`` and ``gen256`` parts: sampling at 128^3 (unet-128, 64^3 coefficients) and 256^3 (unet-256,
128^3 coefficients). Per-step time, time per volume, peak memory and achieved TFLOP/s in every precision and
layout, cuDNN benchmark, torch.compile, the largest batch that fits, and one end-to-end ``wdmcore.generate``."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .measuring import make_call, peak_memory, reset_peak, sync
from .networks import TINY_GRID, build, preset
from .recording import BudgetExceeded, Part
from .suite import Suite

# Network calls of the engine's default sampler (wdmcore.vocabulary: UniPC, 10): a volume costs that many steps.
# A literal, so that the suite imports wdmcore only where a part uses it; Testing/test_gpu_suite.py holds it to
# the engine's default.
DEFAULT_CALLS = 10


def sampling_setup(name: str, tiny: bool):
    """(config, coefficient grid edge) of a generation benchmark."""
    config = preset(name, tiny)
    grid = {"unet-128": 64, "unet-256": 128}[name]
    if tiny:
        grid = TINY_GRID
    return config, grid


def time_sampling(suite: Suite, part: Part, call, batch: int, grid: int, warm: int, timed: int) -> dict[str, float]:
    """Ancestral sampling steps through the engine's sampler; median per-step time after ``warm`` steps."""
    from wdmcore.diffusion import Diffusion
    from wdmcore.samplers import NoiseSource, run_sampler

    noise = NoiseSource(list(range(batch)), suite.device)
    x = noise.initial((8, grid, grid, grid))
    stamps: list[float] = []

    def on_step(done, total, x_now, pred):
        sync(suite.device)
        stamps.append(time.perf_counter())
        if done > warm + 1 and part.left() <= 0:
            raise BudgetExceeded

    sync(suite.device)
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


def run(suite: Suite, part: Part, name: str) -> None:
    """The ``gen128`` (name ``unet-128``) or ``gen256`` (``unet-256``) part."""
    dev = suite.device
    config, grid = sampling_setup(name, suite.tiny)
    flops = suite.flops_of(name, config, (grid,) * 3)
    part.note(
        f"{name}: coefficient grid {grid}^3 (image {2 * grid}^3), {flops / 1e12:.4g} TFLOP per forward, "
        "random weights. step_ms: median wall time of one ancestral step (network + update + noise draw, "
        f"synchronised each step); volume_s_default = step time x {DEFAULT_CALLS} (the default sampler's "
        "network calls) / batch."
    )
    network = build(config, dev)
    warm, timed = (1, 3) if suite.tiny else (2, 8)
    eager_need = 1 if suite.tiny else 5
    compile_need = 3 if suite.tiny else 45

    def variant(precision: str, channels_last: bool, compiled: bool = False, batch: int = 1,
                cudnn_benchmark: bool = False, steps: tuple[int, int] = (warm, timed)):  # fmt: skip
        def run() -> dict[str, Any]:
            net = network.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
            if compiled:
                net = torch.compile(net, backend=suite.compile_backend(), dynamic=False)
            saved = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = cudnn_benchmark
            try:
                reset_peak(dev)
                figures = time_sampling(suite, part, make_call(net, dev, precision, channels_last), batch, grid, *steps)
            finally:
                torch.backends.cudnn.benchmark = saved
                if compiled:
                    torch._dynamo.reset()
            figures.update(peak_memory(dev))
            figures.update(suite.tflops(flops, batch, figures["step_ms"] / 1000))
            if compiled:
                figures["compile_s"] = figures["first_step_s"]
            return figures

        what = {"network": name, "image": 2 * grid, "batch": batch, "precision": precision,
                "channels_last": channels_last, "compile": compiled,
                "cudnn_benchmark": cudnn_benchmark}  # fmt: skip
        if compiled and not suite.may_compile("generation"):
            part.row(**what, status="skipped: the dry run compiles once per code path")
            return None
        return part.measure(what, run, need_s=compile_need if compiled else eager_need)

    best = variant("bf16", True)
    # The dry run's second network runs the same code: two settings are enough there.
    short = suite.tiny and name != "unet-128"
    others = (("fp32", False),) if short else (("fp32", False), ("tf32", False), ("bf16", False), ("fp32", True),
                                               ("tf32", True))  # fmt: skip
    for precision, cl in others:
        variant(precision, cl)
    if not short:
        variant("bf16", True, cudnn_benchmark=True)
        variant("fp16", True)

    # Largest batch that fits: double until out of memory (bf16, channels-last).
    cap = (2 if short else 4) if suite.tiny else (64 if name == "unet-128" else 16)
    largest, batch, stopped_by = best, 2, f"the cap of {cap}"
    while batch <= cap:
        row = variant("bf16", True, batch=batch, steps=(1, 2))
        if row is None:
            stopped_by = part.record["rows"][-1]["status"]
            break
        largest = row
        batch *= 2
    if largest:
        part.note(f"largest batch measured (bf16, channels-last): {largest['batch']}; search stopped by {stopped_by}")

    # One end-to-end call of the engine's generate() with its default sampler: noise, the default calls, IDWT,
    # copy to the host.
    def end_to_end() -> dict[str, Any]:
        from wdmcore import WDMModel, generate

        model = WDMModel(network.to(memory_format=torch.contiguous_format), {"image_size": 2 * grid, "name": name})
        steps = 5 if suite.tiny else DEFAULT_CALLS
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
