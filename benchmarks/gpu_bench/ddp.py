"""The ``ddp`` part: a two-process DistributedDataParallel training run (NCCL on two GPUs, gloo on the CPU in
the dry run), its step time and whether both ranks hold the same weights afterwards."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .measuring import peak_memory, precision_mode, sync
from .networks import TINY_GRID, build, preset
from .recording import Part
from .suite import Suite


def run(suite: Suite, part: Part) -> None:
    dev = suite.device
    if dev.type == "cuda" and torch.cuda.device_count() < 2:
        part.record["status"] = "skipped: 1 GPU"
        part.note("skipped: 1 GPU (the two-process NCCL run needs two)")
        return
    backend = "nccl" if dev.type == "cuda" else "gloo"
    name, size, per_rank = ("unet-128", 2 * TINY_GRID, 1) if suite.tiny else ("unet-128", 128, 5)
    steps = 3 if suite.tiny else 6

    def run() -> dict[str, Any]:
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as folder:
            result = Path(folder) / "rank0.json"
            # A file store in the temporary folder: no port to collide with another run on the machine.
            store = Path(folder) / "store"
            spec = {"backend": backend, "device": dev.type, "tiny": suite.tiny, "name": name, "size": size,
                    "batch": per_rank, "steps": steps, "store": str(store), "result": str(result)}  # fmt: skip
            # Fresh processes: forking a process that already ran threads (OpenMP, TorchDynamo) can deadlock.
            mp.start_processes(_ddp_worker, args=(spec,), nprocs=2, join=True, start_method="spawn")
            return json.loads(result.read_text())

    what = {"network": name, "image": size, "processes": 2, "batch_per_process": per_rank, "backend": backend,
            "precision": "bf16" if dev.type == "cuda" else "fp32"}  # fmt: skip
    part.measure(what, run, need_s=2 if suite.tiny else 20)


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
