"""wdm distill: the two-step target, the rounds on a tiny teacher, the student's card and defaults, exact resume,
two gloo processes and the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_samplers_exact import SHAPE, TexturedMixture
from training_helpers import TINY_NETWORK

import wdmcore
from wdmcore import generate, load_model
from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import PhantomDataset, phantom_affine
from wdmcore.diffusion import Diffusion, DiffusionConfig
from wdmcore.distill import (
    DistillationObjective,
    DistillConfig,
    PairedPhantomDataset,
    distill,
    file_sha256,
    teacher_grid,
    two_step_target,
)
from wdmcore.errors import ConfigError
from wdmcore.models.cards import validate_card
from wdmcore.models.checkpoints import read_model_file, save_model_file
from wdmcore.networks import NetworkConfig, build_network
from wdmcore.samplers import NoiseSource, run_sampler
from wdmcore.training import load_training_state
from wdmcore.wavelets import from_coefficients

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "WDMCore" / "wdmcore" / "assets"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """A tiny unconditional model of 16^3 whose x0 prediction depends on its input (random weights everywhere: a
    fresh network's last layer is zero, and a constant x0 estimate leaves nothing to distil)."""
    torch.manual_seed(7)
    network = build_network(NetworkConfig.from_dict(TINY_NETWORK))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    card = {"name": "tiny_teacher", "image_size": 16, "diffusion": DiffusionConfig().to_dict()}
    return save_model_file(tmp_path_factory.mktemp("teacher") / "tiny.safetensors", network, card)


def small_config(**overrides) -> DistillConfig:
    fields = {"calls": 2, "teacher_calls": 8, "steps_per_round": 3, "batch_size": 2, "lr": 1e-3, "ema_rate": 0.9,
              "device": "cpu", "tensorboard": False, "checkpoint_interval": 2, "log_interval": 1}  # fmt: skip
    fields.update(overrides)
    return DistillConfig(**fields)


# -- the target ----------------------------------------------------------------------------------------------


def _student_of(teacher, diffusion: Diffusion, levels: list[int]):
    """A perfect student: at each of its timesteps it predicts exactly the distillation target."""
    student_levels = levels[::2]

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = torch.tensor([student_levels.index(int(v)) for v in t])
        return two_step_target(teacher, diffusion, levels, x, k)

    return denoise


def test_a_student_predicting_the_target_lands_where_the_teacher_does_in_half_the_calls():
    # An exact denoiser (closed-form E[x0 | x_t] of a textured mixture) as the teacher: the engine's DDIM sampler
    # over the student's timesteps, with the target as the student's prediction, must reproduce the teacher's DDIM
    # over twice as many timesteps.
    diffusion = Diffusion(DiffusionConfig())
    mixture = TexturedMixture(diffusion)
    levels = teacher_grid(diffusion, 8)
    assert len(levels) == 8 and levels[0] == 999 and levels[-1] > 0
    x_T = torch.randn((16, *SHAPE), generator=torch.Generator().manual_seed(3))
    noise = NoiseSource(range(16))
    teacher_out = run_sampler("ddim", mixture.denoise, diffusion, x_T, noise, steps=8, timesteps=levels)
    student = _student_of(mixture.denoise, diffusion, levels)
    student_out = run_sampler("ddim", student, diffusion, x_T, noise, steps=4, timesteps=levels[::2])
    torch.testing.assert_close(student_out, teacher_out, atol=2e-4, rtol=0)
    # Two rounds: a student of the perfect student, in 2 calls, still lands there.
    grand = _student_of(student, diffusion, levels[::2])
    torch.testing.assert_close(
        run_sampler("ddim", grand, diffusion, x_T, noise, steps=2, timesteps=levels[::4]), teacher_out, atol=5e-4,
        rtol=0,
    )  # fmt: skip
    # Not a comparison that cannot fail: the teacher's own x0 in half the calls lands elsewhere.
    alone = run_sampler("ddim", mixture.denoise, diffusion, x_T, noise, steps=4, timesteps=levels[::2])
    assert (alone - teacher_out).abs().max() > 1e-2


class _Exact(torch.nn.Module):
    """A module over a callable (x, t) -> x0, so that the objective can call it as the network."""

    def __init__(self, function):
        super().__init__()
        self.function = function
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.function(x, t) + 0 * self.dummy


def test_the_objective_is_zero_for_the_perfect_student_and_not_for_the_teacher():
    diffusion = Diffusion(DiffusionConfig())
    mixture = TexturedMixture(diffusion)
    levels = teacher_grid(diffusion, 8)
    coefficients, _ = mixture.sample(6, seed=1)
    images = from_coefficients(coefficients, 3.0).clamp(-1, 1)  # [6, 1, 4, 4, 4]
    objective = DistillationObjective(_Exact(mixture.denoise), diffusion, levels, seed=0, image_size=4)
    positions = list(range(6))
    perfect = _Exact(_student_of(mixture.denoise, diffusion, levels))
    loss, per_band = objective(perfect, (images, torch.arange(6)), positions, torch.device("cpu"))
    assert per_band.shape == (8,) and loss.item() < 1e-8
    teacher_loss, _ = objective(_Exact(mixture.denoise), (images, torch.arange(6)), positions, torch.device("cpu"))
    assert teacher_loss.item() > 1e-4


# -- rounds, the student file, its defaults --------------------------------------------------------------------


def test_rounds_make_a_student_file_whose_card_sets_the_default_sampler_and_calls(teacher_file, tmp_path):
    events: list[dict] = []
    result = distill(teacher_file, PhantomDataset(4, 16), tmp_path / "d", small_config(), on_event=events.append)
    assert result.model_path == tmp_path / "d" / "student_2calls.safetensors" and not result.stopped
    assert [e["calls"] for e in events if e["event"] == "round"] == [4, 2]
    tensors, card = read_model_file(result.model_path)
    distilled = card["distilled"]
    levels = teacher_grid(Diffusion(DiffusionConfig()), 8)
    assert distilled["sampler"] == "ddim" and distilled["calls"] == 2 and distilled["timesteps"] == levels[::4]
    assert distilled["teacher_sha256"] == file_sha256(teacher_file)
    teacher_tensors, _ = read_model_file(teacher_file)
    assert any(not torch.equal(tensors[k], teacher_tensors[k]) for k in teacher_tensors)  # it learned something

    student = load_model(result.model_path)
    assert student.sampling_defaults(None, None) == ("ddim", 2)
    assert student.sampling_defaults("unipc", None)[0] == "unipc"  # a user's sampler wins
    assert student.sampling_defaults(None, 5) == ("ddim", 5)  # and so do a user's calls
    progress: list[dict] = []
    volume = generate(result.model_path, 1, on_progress=progress.append)[0]
    assert (volume.meta["sampler"], volume.meta["steps"]) == ("ddim", 2)
    assert [e["done"] for e in progress if e.get("event") == "progress" and e.get("task") == "sample"][-1] == 2
    explicit = generate(result.model_path, 1, sampler="unipc", steps=3)[0]
    assert (explicit.meta["sampler"], explicit.meta["steps"]) == ("unipc", 3)
    image = PhantomDataset(1, 16)[0][0][0].numpy()
    varied = wdmcore.vary(result.model_path, (image, phantom_affine(16)), strength=0.6)
    assert (varied.meta["sampler"], varied.meta["steps"]) == ("ddim", 2) and varied.meta["denoising_steps"] == 1

    # The student's DDIM runs its card's timesteps: the network sees exactly them.
    seen: list[int] = []
    network = student.network
    student.sample_coefficients(
        [0], sampler="ddim", steps=2, network=lambda x, t: seen.append(int(t[0])) or network(x, t)
    )
    assert seen == distilled["timesteps"]


def test_a_resumed_distillation_gives_the_same_bits_as_an_uninterrupted_one(teacher_file, tmp_path):
    data = PhantomDataset(5, 16, seed=1)
    whole = distill(teacher_file, data, tmp_path / "whole", small_config(steps_per_round=4))
    polls = {"n": 0}

    def stop_after_three_steps() -> bool:
        polls["n"] += 1
        return polls["n"] == 4  # polled before each step: stops round 1 after its third step

    stopped = distill(teacher_file, data, tmp_path / "cut", small_config(steps_per_round=4),
                      stop=stop_after_three_steps)  # fmt: skip
    assert stopped.stopped and stopped.model_path is None and stopped.rounds_done == 0
    with pytest.raises(ConfigError, match="--resume"):
        distill(teacher_file, data, tmp_path / "cut", small_config(steps_per_round=4))
    with pytest.raises(ConfigError, match="other settings"):
        distill(teacher_file, data, tmp_path / "cut", small_config(steps_per_round=4, lr=2e-3), resume=True)
    resumed = distill(teacher_file, data, tmp_path / "cut", small_config(steps_per_round=4), resume=True)
    assert resumed.model_path is not None
    for folder in ("round1_4calls", "round2_2calls"):
        a = load_training_state(tmp_path / "whole" / folder / "state_0000004.pt")
        b = load_training_state(tmp_path / "cut" / folder / "state_0000004.pt")
        for part in ("network", "ema"):
            assert a[part].keys() == b[part].keys()
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (folder, part)
    first = load_training_state(tmp_path / "whole" / "round1_4calls" / "state_0000002.pt")["network"]
    last = load_training_state(tmp_path / "whole" / "round1_4calls" / "state_0000004.pt")["network"]
    assert any(not torch.equal(first[k], last[k]) for k in first)  # the compared weights did move
    assert read_model_file(whole.model_path)[0].keys() == read_model_file(resumed.model_path)[0].keys()


def test_a_conditional_teacher_is_distilled_with_its_conditioning_carried(tmp_path):
    network = build_network(NetworkConfig.from_dict({**TINY_NETWORK, "in_channels": 32, "additive_skips": False}))
    card = {
        "name": "tiny_synthesize",
        "task": "synthesize",
        "image_size": 16,
        "inputs": [{"name": n, "meaning": f"phantom contrast {n}"} for n in ("t2", "flair", "pd")],
        "output": {"name": "t1", "meaning": "phantom contrast t1"},
        "preprocessing": {"kind": "cwdm-brats"},
        "diffusion": DiffusionConfig(clip_min=0.0, clip_max=1.0).to_dict(),
    }
    teacher = save_model_file(tmp_path / "teacher.safetensors", network, card)
    data = PairedPhantomDataset(card, 4, seed=0)
    image, condition, _ = data[0]
    assert image.shape == (1, 16, 16, 16) and condition.shape == (24, 8, 8, 8)
    result = distill(teacher, data, tmp_path / "d", small_config(calls=4, steps_per_round=2))
    student = load_model(result.model_path)
    assert student.task == "synthesize" and student.card["inputs"] == card["inputs"]
    coefficients = student.sample_coefficients([0], sampler="ddim", steps=4, condition=condition[None])
    assert coefficients.shape == (1, 8, 8, 8, 8) and bool(torch.isfinite(coefficients).all())
    contrasts, _ = paired_phantom(16, 5, 0)
    inputs = {name: (contrasts[name], phantom_affine(16)) for name in ("t2", "flair", "pd")}
    made = wdmcore.synthesize(result.model_path, inputs)
    assert (made.meta["sampler"], made.meta["steps"]) == ("ddim", 4) and made.array.shape == (16, 16, 16)
    # Single volumes cannot drive a conditional teacher: the objective says what it needs.
    with pytest.raises(ConfigError, match="condition"):
        distill(teacher, PhantomDataset(4, 16), tmp_path / "single", small_config(calls=4, steps_per_round=1))


# -- two processes ---------------------------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import sys
    import torch
    sys.path.insert(0, {testing!r})
    from test_distill import small_config
    from wdmcore.data.phantoms import PhantomDataset, phantom_affine
    from wdmcore.distill import distill

    torch.set_num_threads(1)
    distill(sys.argv[1], PhantomDataset(6, 16, seed=2), sys.argv[2], small_config(batch_size=4, steps_per_round=2))
    """
)


def test_two_gloo_processes_distil_the_same_student_as_one(teacher_file, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(testing=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "WDMCore"), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(teacher_file), str(tmp_path / "ddp")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    distill(
        teacher_file, PhantomDataset(6, 16, seed=2), tmp_path / "one", small_config(batch_size=4, steps_per_round=2)
    )
    # Round 2 starts from (and is taught by) round 1's weights, which already differ by float rounding (the
    # reduction order of the gradients): 3e-6 measured after its two steps, against updates of lr = 1e-3 per step
    # that a wrong split of the batch would change.
    for folder, tolerance in (("round1_4calls", 1e-6), ("round2_2calls", 2e-5)):
        ddp = load_training_state(tmp_path / "ddp" / folder / "state_0000002.pt")
        one = load_training_state(tmp_path / "one" / folder / "state_0000002.pt")
        for part in ("network", "ema"):
            for key, value in one[part].items():
                torch.testing.assert_close(ddp[part][key], value, atol=tolerance, rtol=0, msg=f"{folder} {part} {key}")
    assert (tmp_path / "ddp" / "student_2calls.safetensors").is_file()


# -- refusals --------------------------------------------------------------------------------------------------


def _wdm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "WDMCore")}
    return subprocess.run([sys.executable, "-m", "wdmcore", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--calls", "3"], "power of two"),
        (["--calls", "16", "--teacher-calls", "16"], "fewer than the teacher"),
        (["--teacher-calls", "12"], "power of two"),
    ],
)
def test_the_command_refuses_bad_call_counts(teacher_file, tmp_path, options, message):
    done = _wdm("distill", "--teacher", str(teacher_file), "--format", "phantoms", "--out", "out", *options,
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("wdm: error:") and message in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_call_count_outside_the_table_is_refused_by_the_parser(tmp_path):
    done = _wdm("distill", "--teacher", "x.safetensors", "--out", "out", "--calls", "0", cwd=tmp_path)
    assert done.returncode == 2 and "--calls" in done.stderr and not (tmp_path / "out").exists()


def test_an_inpaint_teacher_is_refused(tmp_path):
    done = _wdm("distill", "--teacher", str(ASSETS / "demo_phantom_inpaint_32.safetensors"), "--format", "phantoms",
                "--out", "out", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "wdm: error:" in done.stderr and "inpaint model cannot be distilled" in done.stderr


def test_a_synthesize_teacher_needs_paired_phantoms_and_resume_needs_a_distillation(tmp_path):
    with pytest.raises(ConfigError, match="paired"):
        from wdmcore.cli.distill import build_distill_dataset

        build_distill_dataset({"task": "synthesize"}, {"format": "auto"}, None, tmp_path, None)
    with pytest.raises(ConfigError, match="no distillation to resume"):
        distill(ASSETS / "demo_phantom_64.safetensors", PhantomDataset(2, 64), tmp_path / "empty", small_config(),
                resume=True)  # fmt: skip


def test_the_card_of_a_student_is_checked():
    base = {"diffusion": DiffusionConfig().to_dict()}
    good = {"sampler": "ddim", "calls": 2, "timesteps": [999, 302], "teacher_sha256": "0" * 64}
    validate_card({**base, "distilled": good})
    for bad, message in [
        ({**good, "timesteps": [302, 999]}, "decreasing"),
        ({**good, "timesteps": [999]}, "list of 2"),
        ({**good, "timesteps": [1000, 3]}, "between 0 and 999"),
        ({**good, "sampler": "unipc"}, "ddim"),
        ({**good, "teacher_sha256": "xyz"}, "hexadecimal"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_card({**base, "distilled": bad})


def test_the_distill_record_says_what_was_distilled(teacher_file, tmp_path):
    distill(teacher_file, PhantomDataset(4, 16), tmp_path / "d", small_config(calls=4, steps_per_round=1))
    record = json.loads((tmp_path / "d" / "distill.json").read_text())
    assert record["teacher_sha256"] == file_sha256(teacher_file) and record["calls"] == 4
