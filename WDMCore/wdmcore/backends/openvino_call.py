"""The OpenVINO backend: the network converted once per (network, input shapes), cached on disk, compiled for
the CPU in the requested precision.

The converted model (OpenVINO IR: ``model.xml`` + ``model.bin``, fp32 weights) lives in
``<cache root>/openvino/<key>/`` beside the model cache (:mod:`wdmcore.paths`), where the key is the SHA-256 of
the network (:func:`network_sha256`), the network input's shape (batch, channels, grid) and the timestep dtype.
One IR serves both precisions: fp32 or bf16 is a compile-time setting (``INFERENCE_PRECISION_HINT``; fp32 is set
explicitly, since OpenVINO's default on a CPU with bf16 is bf16). A file lock makes concurrent runs convert once;
files are written under temporary names and renamed, and ``manifest.json`` (written last) holds the SHA-256 of
both files, so a partial or damaged entry is detected and rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..paths import cache_subdir
from ..version import __version__

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the conversion changes, so older entries are not used
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def network_sha256(network: torch.nn.Module) -> str:
    """SHA-256 over what the conversion computes: the network's class, its configuration (GroupNorm groups or
    attention heads change the computation, not the state dict), the engine's version (its network code), and
    the state dict (names, dtypes, shapes and values, in key order)."""
    digest = hashlib.sha256()
    config = getattr(network, "config", None)
    described = config.to_dict() if hasattr(config, "to_dict") else repr(config)
    digest.update(f"{type(network).__qualname__}|{json.dumps(described, sort_keys=True, default=str)}\n".encode())
    digest.update(f"wdmcore {__version__}\n".encode())
    for name, tensor in sorted(network.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}\n".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def cache_key(identity: str, x_shape: tuple[int, ...], t_dtype: torch.dtype) -> str:
    shape = "x".join(str(s) for s in x_shape)
    dtype = str(t_dtype).removeprefix("torch.")
    return f"{identity[:32]}-{shape}-t{dtype}-v{FORMAT}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_is_whole(folder: Path) -> bool:
    """The entry's files exist and match the SHA-256 its manifest recorded."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        return all(_file_sha256(folder / name) == manifest["sha256"][name] for name in ("model.xml", "model.bin"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


@functools.cache
def shared_core() -> Any:
    """The process's one ``openvino.Core``. OpenVINO's CPU plugin puts its own alternate signal stack on the thread
    that creates it and puts the earlier one back when it is destroyed; several cores, made and destroyed out of
    order, leave that thread with a freed signal stack, and the next handled signal (SIGCHLD when a child process
    ends, with a handler such as a DataLoader's) then kills the process with a segmentation fault. One core,
    alive until the process ends, keeps the stack valid."""
    import openvino

    return openvino.Core()


def convert(network: torch.nn.Module, x_shape: tuple[int, ...], t_dtype: torch.dtype) -> Any:
    """The network as an OpenVINO model with static input shapes: traced under ``no_grad`` (converting the
    module directly fails: its in-place SiLU makes two traces differ), then converted."""
    import openvino

    example = (torch.randn(x_shape), torch.zeros(x_shape[0], dtype=t_dtype))
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about the shape checks, which hold for this one shape
        traced = torch.jit.trace(network, example, check_trace=False)
        model = openvino.convert_model(traced, example_input=example)
    model.reshape({model.inputs[0]: list(x_shape), model.inputs[1]: [x_shape[0]]})
    return model


def cached_model(network: torch.nn.Module, identity: str, x_shape: tuple[int, ...], t_dtype: torch.dtype) -> Any:
    """The converted model for this network (``identity``: its :func:`network_sha256`) and shapes: read from the
    cache, or converted and stored there (under a lock; a damaged entry is rebuilt)."""
    import openvino
    from filelock import FileLock

    root = cache_subdir("openvino")
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(identity, x_shape, t_dtype)
    folder = root / key
    with FileLock(str(root / f"{key}.lock")):
        if folder.is_dir():
            if _entry_is_whole(folder):
                log.info("OpenVINO model from the cache: %s", folder)
                return shared_core().read_model(folder / "model.xml")
            log.warning("the cached OpenVINO model %s is incomplete or damaged; converting again", folder)
            shutil.rmtree(folder, ignore_errors=True)
        model = convert(network, x_shape, t_dtype)
        staging = root / f".{key}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        openvino.save_model(model, staging / "model.xml", compress_to_fp16=False)
        manifest = {
            "format": FORMAT,
            "network_sha256": identity,
            "input_shape": list(x_shape),
            "timestep_dtype": str(t_dtype),
            "openvino": openvino.__version__ if hasattr(openvino, "__version__") else "",
            "sha256": {name: _file_sha256(staging / name) for name in ("model.xml", "model.bin")},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(staging, folder)  # the entry appears whole or not at all
        log.info("OpenVINO model converted and cached: %s", folder)
        return model


class OpenVINOCall:
    """``call(x, t)`` through OpenVINO: one compiled model per input shape, made on first use."""

    def __init__(self, network: torch.nn.Module, precision: str, threads: int):
        self.network = network
        self.precision = precision
        self.threads = threads
        self._identity: str | None = None
        self._compiled: dict[tuple, Any] = {}

    def compiled_for(self, x: torch.Tensor, t: torch.Tensor) -> Any:
        shape = (tuple(x.shape), t.dtype)
        compiled = self._compiled.get(shape)
        if compiled is None:
            if self._identity is None:
                self._identity = network_sha256(self.network)
            model = cached_model(self.network, self._identity, tuple(x.shape), t.dtype)
            config = {
                "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[self.precision],
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY",
            }
            compiled = shared_core().compile_model(model, "CPU", config)
            self._compiled[shape] = compiled
        return compiled

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        compiled = self.compiled_for(x, t)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        inputs = [np.ascontiguousarray(x.detach().float().cpu().numpy()), t.detach().cpu().numpy()]
        out = compiled(inputs)[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True)).to(x.device)
