"""Training says what it costs before it starts, its progress ends at the real last step, a divergence with no
checkpoint does not send the user to --resume, bf16 on the CPU is refused, and under autocast only the network
runs in reduced precision."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from training_helpers import tiny_config

from wdmcore.cli.main import main
from wdmcore.data.phantoms import PhantomDataset
from wdmcore.diffusion import Diffusion
from wdmcore.errors import ConfigError, DataError
from wdmcore.models.checkpoints import read_model_file
from wdmcore.progressbar import ProgressBars, combine
from wdmcore.training import TrainingError, list_checkpoints, train
from wdmcore.training import checkpoints as training_checkpoints
from wdmcore.training import loop as training_loop

TINY = ["--format", "phantoms", "--phantoms", "4", "--preset", "unet-128", "--model-channels", "8",
        "--channel-mult", "1,2", "--num-groups", "4", "--num-res-blocks", "1", "--image-size", "16",
        "--batch-size", "2", "--no-tensorboard"]  # fmt: skip
COST_LINE = re.compile(
    r"about ([\d.]+) s per step: (\d+) steps ≈ ([\d.]+) (s|min|h|days); "
    r"each checkpoint ([\d.]+) (kB|MB|GB), (\d+) kept = ([\d.]+) (kB|MB|GB)"
)
UNIT = {"kB": 1e3, "MB": 1e6, "GB": 1e9}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def test_the_cost_comes_before_the_first_steps_result_with_figures_that_parse(tmp_path, capsys):
    out = tmp_path / "run"
    options = ["--max-steps", "5", "--checkpoint-interval", "2", "--keep-last", "2", "--progress", "jsonl"]
    assert main(["train", *TINY, *options, "--out", str(out)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("cost") == 1 and kinds.index("cost") < kinds.index("progress")
    cost = events[kinds.index("cost")]
    assert cost["steps"] == 5 and cost["step_s"] > 0 and cost["eta_s"] == pytest.approx(5 * cost["step_s"], abs=0.1)
    # Checkpoints at steps 2, 4 and 5, two kept: the estimate is what the folder really holds.
    kept = list_checkpoints(out)
    assert [c[0] for c in kept] == [4, 5] and cost["checkpoints_kept"] == 2
    sizes = [c[1].stat().st_size + c[2].stat().st_size for c in kept]
    assert cost["checkpoint_bytes"] == pytest.approx(sizes[-1], rel=0.25)
    assert cost["checkpoints_total_bytes"] == 2 * cost["checkpoint_bytes"]

    match = COST_LINE.fullmatch(cost["message"])
    assert match, cost["message"]
    step_s, steps, _, _, each, each_unit, count, total, total_unit = match.groups()
    assert float(step_s) == pytest.approx(cost["step_s"], rel=0.06) and int(steps) == 5 and int(count) == 2
    assert float(each) * UNIT[each_unit] == pytest.approx(cost["checkpoint_bytes"], rel=0.06)
    assert float(total) * UNIT[total_unit] == pytest.approx(cost["checkpoints_total_bytes"], rel=0.06)


def test_the_bar_shows_the_cost_line_before_the_first_step(tmp_path, capsys):
    assert main(["train", *TINY, "--max-steps", "2", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    line = next(part for part in re.split(r"[\r\n]", err) if part.startswith("about "))
    assert COST_LINE.fullmatch(line.strip()), line
    assert err.index("about ") < err.index("1/2")


def test_progress_ends_at_the_real_last_step_of_a_stopped_run(tmp_path):
    # Steps far apart from the log interval: before, the last event (and the bar) said step 1 of 100 though the
    # run stopped and saved at step 6.
    events, screen = [], io.StringIO()
    bars = ProgressBars(screen)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 6

    config = tiny_config(max_steps=100, log_interval=50, checkpoint_interval=1000)
    result = train(config, PhantomDataset(4, 16), tmp_path, on_event=combine(events.append, bars), stop=stop)
    bars.close()
    assert result.stopped and result.step == 6
    progress = [e["done"] for e in events if e["event"] == "progress"]
    assert progress[-1] == 6 and events[-1]["event"] == "result" and events[-1]["step"] == 6
    assert re.split(r"[\r\n]", screen.getvalue().strip())[-1].startswith("train:   6%") and "6/100" in screen.getvalue()


def test_slow_steps_move_the_bar_every_step(tmp_path, monkeypatch):
    # Steps slower than the report period (here: any step) are each reported, whatever the log interval.
    monkeypatch.setattr(training_loop, "REPORT_EVERY_S", 0.0)
    events = []
    train(tiny_config(max_steps=4, log_interval=10), PhantomDataset(4, 16), tmp_path, on_event=events.append)
    assert [e["done"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4]


class _NaNFromCall(torch.utils.data.Dataset):
    """Phantoms until ``first_bad`` items have been read, NaN afterwards (a run that diverges at a known step)."""

    def __init__(self, first_bad: int):
        self.inner, self.first_bad, self.reads = PhantomDataset(8, 16), first_bad, 0

    def __len__(self):
        return 8

    def __getitem__(self, index):
        self.reads += 1
        image, i = self.inner[index]
        return (torch.full_like(image, float("nan")) if self.reads > self.first_bad else image), i


def test_a_divergence_before_the_first_checkpoint_does_not_suggest_resuming(tmp_path):
    config = tiny_config(batch_size=1, max_steps=20, checkpoint_interval=4, max_nonfinite_steps=2)
    with pytest.raises(TrainingError) as raised:
        train(config, _NaNFromCall(2), tmp_path / "early")
    assert not list_checkpoints(tmp_path / "early")
    message = str(raised.value)
    assert "resume" not in message.lower() and "start the run again (no checkpoint was written yet)" in message
    # After a checkpoint the message names it and --resume.
    with pytest.raises(TrainingError, match=r"continue from the checkpoint of step 4 with --resume"):
        train(config, _NaNFromCall(5), tmp_path / "late")


def test_a_full_disk_at_the_first_checkpoint_does_not_suggest_resuming(tmp_path, monkeypatch):
    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training_checkpoints, "atomic_torch_save", full)
    with pytest.raises(DataError) as raised:
        train(tiny_config(max_steps=4, checkpoint_interval=2), PhantomDataset(4, 16), tmp_path)
    message = str(raised.value)
    assert "no checkpoint exists yet" in message and "--resume" not in message


def test_bf16_training_on_the_cpu_is_refused_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY, "--max-steps", "2", "--precision", "bf16", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("wdm: error: bf16 training is not supported on the CPU (") and "--precision fp32" in err
    assert not out.exists()  # refused before anything is read or written
    with pytest.raises(ConfigError, match="bf16 training is not supported on the CPU"):
        train(tiny_config(precision="bf16", device="cpu"), PhantomDataset(4, 16), tmp_path / "api")
    assert not list_checkpoints(tmp_path / "api")


def test_under_autocast_only_the_network_runs_in_bf16():
    # The Haar transform is a matmul: under the caller's autocast it used to run in bf16, which rounded the
    # network's input and the loss's target (errors up to ~1e-2) on every CPU and GPU alike.
    seen = {}

    def network(x_t, t):
        seen["x_t"] = x_t
        return torch.zeros_like(x_t).to(torch.bfloat16)  # what a bf16 network returns

    diffusion = Diffusion()
    generator = torch.Generator().manual_seed(0)
    image = PhantomDataset(2, 32)[0][0][None] * 0.999  # phantoms in [-1, 1] with fine detail
    t = torch.tensor([3])
    noise = torch.randn(image.shape, generator=generator)
    reference_loss, _ = diffusion.training_loss(network, image, t, noise_image=noise)
    reference_x_t = seen["x_t"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, per_band = diffusion.training_loss(network, image, t, noise_image=noise)
    assert seen["x_t"].dtype == torch.float32 and loss.dtype == per_band.dtype == torch.float32
    assert torch.allclose(seen["x_t"], reference_x_t, rtol=0, atol=1e-6)
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-6)


def test_a_checkpoint_holds_the_ema_weights_once_and_older_states_still_resume(tmp_path):
    # The EMA weights are the model file's; the training state used to hold a second copy of them (a fifth of a
    # checkpoint: 232 MB of 1.16 GB for unet-128).
    data = PhantomDataset(4, 16)
    train(tiny_config(max_steps=2, checkpoint_interval=100), data, tmp_path / "a")
    raw = torch.load(tmp_path / "a" / "state_0000002.pt", weights_only=True)
    assert raw["format"] == training_checkpoints.STATE_FORMAT and "ema" not in raw
    straight = train(tiny_config(max_steps=4, checkpoint_interval=100), data, tmp_path / "straight")

    # A state of format 1 (with its own EMA copy) resumes as before.
    model_file = tmp_path / "a" / "model_0000002.safetensors"
    raw.update(format=1, ema=read_model_file(model_file)[0])
    torch.save(raw, tmp_path / "a" / "state_0000002.pt")
    resumed = train(tiny_config(max_steps=4, checkpoint_interval=100), data, tmp_path / "a", resume=True)
    assert resumed.step == 4
    a, b = (read_model_file(run / "model_0000004.safetensors")[0] for run in (tmp_path / "a", tmp_path / "straight"))
    assert straight.step == 4 and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in b)


def test_a_state_whose_model_file_is_broken_resumes_from_the_checkpoint_before(tmp_path):
    data = PhantomDataset(4, 16)
    train(tiny_config(max_steps=4, checkpoint_interval=2), data, tmp_path)
    (tmp_path / "model_0000004.safetensors").write_bytes(b"broken")
    events = []
    train(tiny_config(max_steps=4, checkpoint_interval=2), data, tmp_path, resume=True, on_event=events.append)
    assert events[0]["event"] == "start" and events[0]["step"] == 2
