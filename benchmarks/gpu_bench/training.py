"""The ``train`` part: it/s and peak memory of one training step (the engine's loss, backward, AdamW, EMA),
unet-128 at batch 10 and unet-256 at batch 1, per precision, with and without activation checkpointing and
torch.compile."""

from __future__ import annotations

import time
from typing import Any

import torch

from .measuring import free_memory, peak_memory, precision_mode, reset_peak, sync
from .networks import TINY_GRID, build, preset
from .recording import BudgetExceeded, Part
from .suite import Suite


def run(suite: Suite, part: Part) -> None:
    part.note(
        "One step = the engine's Diffusion.training_loss under the precision's settings, backward, AdamW and "
        "the engine's EMA update, on random images in [-1, 1]; it_per_s from the median timed step. "
        "Precisions: bf16 = autocast; tf32 = fp32 weights with TF32 convolutions, which is what the training "
        "loop's fp32 runs on CUDA with PyTorch's default flags; fp32 = TF32 off."
    )
    cases = [("unet-128", 10, 128), ("unet-256", 1, 256)]
    if suite.tiny:
        cases = [("unet-128", 2, 2 * TINY_GRID), ("unet-256", 1, 2 * TINY_GRID)]
    # (precision, activation checkpointing, compile); every eager variant of both networks first, so that
    # the slow compiles cannot starve them of budget.
    eager = [("bf16", False), ("tf32", False), ("bf16", True), ("tf32", True), ("fp32", False)]
    compiled = [("bf16", False), ("bf16", True), ("tf32", False)]
    if suite.device.type == "cpu":  # wdm train refuses bf16 on the CPU (docs/training.md): not measured there
        eager = [item for item in eager if item[0] != "bf16"]
        compiled = [item for item in compiled if item[0] != "bf16"]
        part.note("bf16 rows left out on the CPU, where wdm train refuses bf16.")
    plan = [(case, p, c, False) for case in cases for p, c in eager]
    if suite.tiny:  # the dry run's second network runs the same code: one setting is enough there
        plan = [item for item in plan if item[0] == cases[0] or item[1:3] == eager[0]]
    plan += [(case, p, c, True) for case in cases for p, c in compiled]
    for (name, batch, size), precision, checkpointing, compiling in plan:
        what = {"network": name, "image": size, "batch": batch, "precision": precision,
                "activation_checkpointing": checkpointing, "compile": compiling}  # fmt: skip
        if compiling and not suite.may_compile("training"):
            part.row(**what, status="skipped: the dry run compiles once per code path")
            continue
        need = (3 if suite.tiny else 60) if compiling else (1 if suite.tiny else 8)
        part.measure(what, lambda w=what: time_training(suite, part, **w), need_s=need)
        free_memory()


def time_training(suite: Suite, part: Part, *, network: str, image: int, batch: int, precision: str,
                  activation_checkpointing: bool, compile: bool) -> dict[str, Any]:  # fmt: skip
    from wdmcore.diffusion import Diffusion
    from wdmcore.training import EMA

    dev = suite.device
    warm, timed = (1, 2) if suite.tiny else (2, 5)
    net = build(preset(network, suite.tiny, use_checkpoint=activation_checkpointing), dev).train()
    ema = EMA(net, 0.9999, True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
    model = torch.compile(net, backend=suite.compile_backend()) if compile else net
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
