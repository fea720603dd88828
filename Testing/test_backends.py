"""The CPU backends (wdmcore.backends): OpenVINO agrees with PyTorch fp32, its cache converts once and rebuilds a
damaged entry, a failed conversion falls back to PyTorch with one warning, bf16 is refused on CPUs without
native bf16, and ``auto`` follows the CPU. Tiny networks and the bundled demo models, a few calls each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wdmcore import backends
from wdmcore.backends import choice as choice_module
from wdmcore.backends import cpu, network_call, resolve_choice
from wdmcore.errors import ConfigError
from wdmcore.networks import NetworkConfig, build_network
from wdmcore.worker_requests import BadRequest, check_fields

CPU = torch.device("cpu")
needs_openvino = pytest.mark.skipif(not choice_module.openvino_installed(), reason="openvino is not installed")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WDM_CACHE_DIR", str(tmp_path / "cache"))


def tiny_network(in_channels: int = 8, seed: int = 0) -> torch.nn.Module:
    """Every weight drawn from a seeded normal: a fresh network's output convolution is zero, which would make
    any two backends agree."""
    config = NetworkConfig("unet", model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8,
                           in_channels=in_channels)  # fmt: skip
    network = build_network(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return network


def inputs(in_channels: int, grid: int = 8, batch: int = 1):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, in_channels, grid, grid, grid, generator=generator), torch.tensor([417] * batch)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@needs_openvino
@pytest.mark.parametrize("in_channels", [8, 24, 32])  # unconditional, fastWDM3D's and cWDM's condition widths
def test_openvino_fp32_agrees_with_torch_fp32(in_channels):
    network = tiny_network(in_channels)
    x, t = inputs(in_channels, batch=2)
    call = network_call(network, CPU, backend="openvino", precision="fp32")
    with torch.inference_mode():
        expected = network(x, t)
        got = call(x, t)
    assert call.choice.name == "openvino-fp32" and got.dtype == torch.float32
    assert expected.abs().max() > 0.1  # the comparison is between two real outputs
    assert relative(got, expected) < 1e-4


@needs_openvino
def test_the_converted_model_is_cached_and_a_damaged_entry_rebuilt(monkeypatch, tmp_path):
    from wdmcore.backends import openvino_call

    conversions = []
    real_convert = openvino_call.convert
    monkeypatch.setattr(openvino_call, "convert", lambda *a: conversions.append(a[1]) or real_convert(*a))
    network = tiny_network()
    x, t = inputs(8)
    with torch.inference_mode():
        first = network_call(network, CPU, backend="openvino", precision="fp32")(x, t)
        again = network_call(network, CPU, backend="openvino", precision="fp32")(x, t)  # a new run: the cache
        assert len(conversions) == 1 and torch.equal(first, again)
        network_call(network, CPU, backend="openvino", precision="fp32")(*inputs(8, grid=16))  # another grid
        assert conversions == [(1, 8, 8, 8, 8), (1, 8, 16, 16, 16)]
        entry = next(p for p in (tmp_path / "cache" / "openvino").iterdir() if p.is_dir() and "x8x8x8" in p.name)
        weights = (entry / "model.bin").read_bytes()
        (entry / "model.bin").write_bytes(weights[: len(weights) // 2])  # a half-written file
        rebuilt = network_call(network, CPU, backend="openvino", precision="fp32")(x, t)
    assert len(conversions) == 3 and relative(rebuilt, first) < 1e-6
    assert (entry / "model.bin").read_bytes() == weights
    with torch.no_grad():  # other weights: another entry, never the old model
        next(network.parameters()).add_(1.0)
    with torch.inference_mode():
        network_call(network, CPU, backend="openvino", precision="fp32")(x, t)
    assert len(conversions) == 4


@needs_openvino
def test_a_failed_conversion_falls_back_to_pytorch_with_one_warning(monkeypatch):
    from wdmcore.backends import openvino_call

    def broken(*_args):
        raise RuntimeError("Tracer cannot infer type of output\nsecond line")

    monkeypatch.setattr(openvino_call, "convert", broken)
    events = []
    network = tiny_network()
    x, t = inputs(8)
    call = network_call(network, CPU, backend="openvino", precision="fp32", on_progress=events.append)
    with torch.inference_mode():
        outputs = [call(x, t) for _ in range(3)]
        expected = network(x, t)
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "\n" not in warnings[0]["message"]
    assert "Tracer cannot infer type" in warnings[0]["message"] and "PyTorch fp32" in warnings[0]["message"]
    assert call.choice.name == "torch-fp32" and all(torch.equal(o, expected) for o in outputs)


def test_openvino_missing_falls_back_to_pytorch_with_one_warning(monkeypatch):
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    events = []
    call = network_call(tiny_network(), CPU, backend="openvino", precision="fp32", on_progress=events.append)
    assert call.choice.name == "torch-fp32"
    assert [e["kind"] for e in events if e["event"] == "warning"] == ["backend-fallback"]
    assert "openvino" in events[0]["message"].lower()


def test_bf16_is_refused_on_a_cpu_without_native_bf16(monkeypatch):
    from wdmcore.tasks.generate import generate

    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    for backend in ("torch", "openvino", "auto"):
        with pytest.raises(ConfigError, match="native bf16.*use precision fp32 or auto"):
            resolve_choice(CPU, backend, "bf16")
    with pytest.raises(ConfigError, match="native bf16"):  # before the model is read: the name does not exist
        generate("no-such-model.safetensors", precision="bf16", backend="torch")
    with pytest.raises(ConfigError, match="fp16 is a CUDA precision"):
        resolve_choice(CPU, "torch", "fp16")


def test_auto_follows_the_cpu(monkeypatch):
    def host(bf16: bool, openvino: bool, ov_bf16: bool, avx512: bool = False):
        monkeypatch.setattr(cpu, "native_bf16", lambda: bf16)
        monkeypatch.setattr(cpu, "has_avx512", lambda: avx512)
        monkeypatch.setattr(choice_module, "openvino_installed", lambda: openvino)
        monkeypatch.setattr(choice_module, "openvino_bf16", lambda: ov_bf16)

    host(bf16=True, openvino=True, ov_bf16=True, avx512=True)
    assert resolve_choice(CPU).name == "openvino-bf16"
    assert resolve_choice(CPU, faithful=True).name == "torch-fp32"  # the released sampler stays faithful
    assert resolve_choice(CPU, "auto", "fp32").name == "openvino-fp32"
    assert resolve_choice(CPU, "torch", "auto").name == "torch-bf16"
    host(bf16=True, openvino=False, ov_bf16=False, avx512=True)
    assert resolve_choice(CPU).name == "torch-bf16"
    host(bf16=False, openvino=True, ov_bf16=False)  # AVX2 only: OpenVINO fp32 measured no faster
    assert resolve_choice(CPU).name == "torch-fp32"
    assert resolve_choice(CPU, "openvino", "auto").name == "openvino-fp32"
    assert resolve_choice(torch.device("cuda")).name == "torch-fp32"  # CUDA as before
    with pytest.raises(ConfigError, match="OpenVINO backend runs on the CPU"):
        resolve_choice(torch.device("cuda"), "openvino", "auto")
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_choice(CPU, "onnx", "auto")


def test_threads_are_the_physical_cores_of_the_affinity_mask(monkeypatch):
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity mask on this platform")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert cpu.default_threads() == 1  # never more threads than the CPUs this process may run on
    before = torch.get_num_threads()
    try:
        assert cpu.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_worker_requests_check_backend_and_precision():
    check_fields({"type": "vary", "backend": "openvino", "precision": "auto"})
    with pytest.raises(BadRequest, match="'backend' must be auto, torch or openvino"):
        check_fields({"type": "generate", "backend": "onnxruntime"})
    with pytest.raises(BadRequest, match="'precision' must be"):
        check_fields({"type": "inpaint", "precision": "int8"})


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)  # the demo model's intensities span [0, 1]


def available_choices() -> list[tuple[str, str]]:
    pairs = [("torch", "bf16")] if cpu.native_bf16() else []
    if choice_module.openvino_installed():
        pairs.append(("openvino", "fp32"))
        if cpu.native_bf16() and choice_module.openvino_bf16():
            pairs.append(("openvino", "bf16"))
    return pairs


# PSNR floors against PyTorch fp32 for the same seed (the demo model, 4 UniPC calls; two different seeds differ
# by about 15 dB). OpenVINO fp32 measured over 100 dB here (max difference 4e-6); bf16 is held to the floor
# the measurement supports (OpenVINO bf16 at 25 calls: 47.3 dB), with margin.
PSNR_FLOOR = {"fp32": 80.0, "bf16": 35.0}


ONLY_TORCH_FP32 = pytest.param("none", "none", marks=pytest.mark.skip(reason="only PyTorch fp32 runs on this CPU"))


@pytest.mark.parametrize("backend,precision", available_choices() or [ONLY_TORCH_FP32])
def test_the_demo_model_agrees_with_torch_fp32_for_the_same_seed(backend, precision):
    from wdmcore.tasks.generate import generate

    reference = generate("demo_phantom_64", 1, seed=5, steps=4, backend="torch", precision="fp32")[0]
    other = generate("demo_phantom_64", 1, seed=5, steps=4, backend=backend, precision=precision)[0]
    assert (other.meta["backend"], other.meta["precision"]) == (backend, precision)
    assert other.meta["threads"] == torch.get_num_threads()
    assert psnr(other.array, reference.array) > PSNR_FLOOR[precision]
    assert abs(float(other.array.mean()) - float(reference.array.mean())) < 0.01


# A child process run after OpenVINO compiled for two shapes and the call was dropped, with a SIGCHLD handler
# installed (as a DataLoader with workers leaves one). OpenVINO's CPU plugin swaps the thread's alternate signal
# stack; with one core per compilation, the stack left behind was freed and the child's SIGCHLD killed the process.
ALTERNATE_STACK_CASE = """
import gc, signal, subprocess, sys
import torch
from test_backends import inputs, tiny_network
from wdmcore.backends import network_call
signal.signal(signal.SIGCHLD, lambda *args: None)
call = network_call(tiny_network(), torch.device("cpu"), backend="openvino", precision="fp32")
for batch in (1, 2):
    call(*inputs(8, batch=batch))
del call
gc.collect()
for _ in range(3):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
print("survived")
"""


@needs_openvino
def test_a_child_process_after_openvino_does_not_kill_the_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    testing = Path(__file__).resolve().parent
    path = os.pathsep.join([str(testing), str(testing.parent / "WDMCore")])
    env = {**os.environ, "PYTHONPATH": path, "WDM_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", ALTERNATE_STACK_CASE], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0 and "survived" in run.stdout, (run.returncode, run.stderr[-2000:])


@needs_openvino
def test_a_conditional_task_runs_through_openvino():
    # The condition is concatenated into x before the network call: OpenVINO sees all 32 channels.
    from wdmcore.tasks.examples import example_volumes
    from wdmcore.tasks.synthesize import synthesize

    volumes = example_volumes()
    given = {name: volumes[f"{name}.nii.gz"] for name in ("t2", "flair", "pd")}
    torch_out = synthesize("demo_phantom_synthesize_32", given, seed=3, steps=3, backend="torch", precision="fp32")
    ov_out = synthesize("demo_phantom_synthesize_32", given, seed=3, steps=3, backend="openvino", precision="fp32")
    assert ov_out.meta["backend"] == "openvino" and torch_out.meta["backend"] == "torch"
    assert np.abs(ov_out.array - torch_out.array).max() < 1e-3
    assert psnr(ov_out.array, torch_out.array) > PSNR_FLOOR["fp32"]


def test_the_conversion_key_changes_with_the_configuration_not_only_the_weights():
    # Two networks with the same state dict (names, shapes, values) but other GroupNorm groups compute differently:
    # a cached conversion of one must never serve the other.
    from wdmcore.backends.openvino_call import network_sha256

    eight = tiny_network()
    config = NetworkConfig("unet", model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4,
                           in_channels=8)  # fmt: skip
    four = build_network(config).eval()
    four.load_state_dict(eight.state_dict())
    assert network_sha256(four) != network_sha256(eight)
    assert network_sha256(eight) == network_sha256(tiny_network())
