"""The training loop: configuration, exact resume, checkpoints, EMA, non-finite steps, stop, previews."""

from __future__ import annotations

import json
import sys
import zlib

import numpy as np
import pytest
import torch
from training_helpers import tiny_config

from wdmcore import load_model
from wdmcore.data.phantoms import PhantomDataset, phantom_affine
from wdmcore.errors import CheckpointError, ConfigError
from wdmcore.models.checkpoints import read_model_file
from wdmcore.training import (
    EMA,
    StreamBatches,
    TrainConfig,
    TrainingError,
    list_checkpoints,
    load_training_state,
    train,
    write_png_gray,
)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # One thread: the CI machine has 2 cores shared with other jobs, and oversubscribed OpenMP threads are slow.
    torch.set_num_threads(1)
    yield


def test_preset_defaults_follow_the_released_recipe():
    c = TrainConfig(preset="unet-128").resolved()
    assert (c.image_size, c.batch_size, c.lr, c.weight_decay, c.ema_rate) == (128, 10, 1e-5, 0.0, 0.9999)
    c256 = TrainConfig(preset="wavunet-256").resolved()
    assert (c256.image_size, c256.batch_size) == (256, 1)
    net = TrainConfig(preset="unet-128", network={"model_channels": 32}, activation_checkpointing=True)
    assert net.network_config().model_channels == 32 and net.network_config().use_checkpoint
    assert net.network_config().channel_mult == (1, 2, 2, 4, 4)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"preset": "unet-64"}, "unknown preset"),
        ({"preset": None}, "give a preset"),
        ({"image_size": 100}, "multiple of 32"),
        ({"lr": 0}, r"lr must be a number in \(0, 1\], got 0"),
        ({"lr": float("inf")}, r"lr must be a number in \(0, 1\], got inf"),
        ({"network": {"model_channels": 0}}, "model_channels must be a whole number from 1 to 4096, got 0"),
        ({"precision": "fp16"}, "precision"),
        ({"low_noise_share": 1.5}, r"low_noise_share must be a number in \[0, 1\], got 1.5"),
        ({"adam_betas": (0.9, 1.0)}, r"each of adam_betas must be a number in \[0, 1\), got 1.0"),
    ],
)
def test_invalid_configs_say_what_to_do(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields).resolved()


def test_stream_batches_split_the_global_batch_and_cover_each_epoch():
    single = list(StreamBatches(10, 4, seed=3, start_step=0, end_step=5))
    first_epoch = [i for batch in single for i in batch][:10]
    assert sorted(first_epoch) == list(range(10))
    ranks = [list(StreamBatches(10, 4, 3, 0, 5, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == single
    assert list(StreamBatches(10, 4, 3, start_step=2, end_step=5)) == single[2:]
    with pytest.raises(ConfigError, match="divisible"):
        StreamBatches(10, 3, 0, 0, 1, rank=0, world=2)


def test_ema_warm_up_and_rate():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, rate=0.999, warmup=True)
    assert ema.current_rate() == pytest.approx(0.1)
    with torch.no_grad():
        net.weight.fill_(1.0)
    before = ema.network.weight.clone()
    ema.update(net)
    assert torch.allclose(ema.network.weight, 0.1 * before + 0.9)
    assert EMA(net, 0.999, warmup=False).current_rate() == 0.999


def _all_tensors(path):
    state = load_training_state(path)
    return state["network"], state["ema"], state["optimizer"]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    data = PhantomDataset(5, 16, seed=1)  # 5 volumes, batch 2: epochs end inside a batch
    straight = train(tiny_config(max_steps=6, checkpoint_interval=100), data, tmp_path / "a")
    assert straight.step == 6
    first = train(tiny_config(max_steps=3), data, tmp_path / "b")
    assert first.step == 3 and list_checkpoints(tmp_path / "b")[-1][0] == 3
    resumed = train(tiny_config(max_steps=6, checkpoint_interval=100), data, tmp_path / "b", resume=True)
    assert resumed.step == 6
    net_a, ema_a, opt_a = _all_tensors(tmp_path / "a" / "state_0000006.pt")
    net_b, ema_b, opt_b = _all_tensors(tmp_path / "b" / "state_0000006.pt")
    for key in net_a:
        assert torch.equal(net_a[key], net_b[key]), key
        assert torch.equal(ema_a[key], ema_b[key]), key
    for index, slot in opt_a["state"].items():
        assert torch.equal(slot["exp_avg_sq"], opt_b["state"][index]["exp_avg_sq"])
    tensors_a, card_a = read_model_file(tmp_path / "a" / "model_0000006.safetensors")
    tensors_b, _ = read_model_file(tmp_path / "b" / "model_0000006.safetensors")
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    # The model file holds the EMA weights, not the raw ones, and its card says what it is.
    assert all(torch.equal(tensors_a[k], ema_a[k]) for k in tensors_a)
    assert not all(torch.equal(tensors_a[k], net_a[k]) for k in tensors_a)
    assert card_a["weights"] == "EMA" and card_a["training"]["step"] == 6
    assert "phantoms" in card_a["training"]["data"]
    assert card_a["geometry"]["affine"] == phantom_affine(16).tolist()


def test_resume_refuses_other_settings_and_empty_folders(tmp_path):
    data = PhantomDataset(4, 16)
    train(tiny_config(max_steps=3), data, tmp_path / "run")
    with pytest.raises(ConfigError, match="other settings.*lr"):
        train(tiny_config(max_steps=6, lr=5e-4), data, tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(tiny_config(max_steps=6), data, tmp_path / "run")
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_config(), data, tmp_path / "empty", resume=True)


def test_checkpoints_keep_the_last_k_and_load_as_models(tmp_path):
    events = []
    result = train(tiny_config(max_steps=8, checkpoint_interval=2, keep_last=2), PhantomDataset(4, 16), tmp_path,
                   on_event=events.append)  # fmt: skip
    assert [c[0] for c in list_checkpoints(tmp_path)] == [6, 8]
    assert all(c[2] is not None for c in list_checkpoints(tmp_path))
    assert result.model_path == tmp_path / "model_0000008.safetensors"
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 4, 6, 8]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == list(range(1, 9))
    assert all(np.isfinite(e["loss"]) and e["it_s"] > 0 and e["eta_s"] >= 0 for e in progress)
    assert events[-1] == {"event": "result", "path": str(result.model_path), "step": 8, "stopped": False,
                          "loss": result.last_loss}  # fmt: skip
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert config["max_steps"] == 8 and config["network"]["model_channels"] == 8
    model = load_model(result.model_path)
    volumes = model.sample(1, seed=0, sampler="ddim", steps=3)
    assert volumes.shape == (1, 1, 16, 16, 16)
    assert float(volumes.min()) >= 0.0 and float(volumes.max()) <= 1.0
    # A stale temporary file left by a killed writer is cleaned up at the next start.
    (tmp_path / ".state_0000010.pt.abc.tmp").write_bytes(b"partial")
    train(tiny_config(max_steps=9, checkpoint_interval=2, keep_last=2), PhantomDataset(4, 16), tmp_path, resume=True)
    assert not list(tmp_path.glob(".*.tmp"))


def test_low_noise_share_draws_that_share_of_timesteps_from_the_low_end_and_leaves_the_rest():
    from wdmcore.training.schedule import sample_draws

    positions = list(range(2000))
    t0, noise0 = sample_draws(7, positions, (2, 2, 2), 1000)
    t_half, noise_half = sample_draws(7, positions, (2, 2, 2), 1000, low_noise_share=0.5)
    t_all, _ = sample_draws(7, positions, (2, 2, 2), 1000, low_noise_share=1.0)
    # The noise and the uniform timesteps are drawn first, so a share of 0 draws what it always did.
    assert torch.equal(noise0, noise_half)
    assert (t_all < 50).all() and 20 < len(set(t_all.tolist())) <= 50
    replaced = t_half != t0
    assert (t_half[replaced] < 50).all()
    low = (t_half < 50).float().mean().item()
    # Expected 0.5 + 0.5 * 0.05 = 0.525; the binomial std over 2000 draws is 0.011.
    assert 0.47 < low < 0.58, low
    assert 0.02 < (t0 < 50).float().mean().item() < 0.08
    # Each position keeps its own draws: the first 100 positions are the same drawn alone.
    t_few, _ = sample_draws(7, positions[:100], (2, 2, 2), 1000, low_noise_share=0.5)
    assert torch.equal(t_few, t_half[:100])


def test_low_noise_share_is_recorded_in_the_card(tmp_path):
    result = train(tiny_config(max_steps=2, low_noise_share=0.5), PhantomDataset(4, 16), tmp_path / "run")
    _, card = read_model_file(result.model_path)
    assert card["training"]["low_noise_share"] == 0.5
    _, plain = read_model_file(train(tiny_config(max_steps=1), PhantomDataset(4, 16), tmp_path / "plain").model_path)
    assert "low_noise_share" not in plain["training"]


def test_a_new_run_can_start_from_given_weights(tmp_path):
    data = PhantomDataset(4, 16)
    first = train(tiny_config(max_steps=2), data, tmp_path / "first")
    weights, _ = read_model_file(first.model_path)
    # A learning rate of 1e-12: the weights stay what they were given, so the new run's model is the first's EMA.
    second = train(tiny_config(max_steps=1, lr=1e-12), data, tmp_path / "second", initial_weights=weights)
    continued, _ = read_model_file(second.model_path)
    assert set(continued) == set(weights)
    for name, tensor in weights.items():
        torch.testing.assert_close(continued[name], tensor, rtol=0, atol=1e-6, msg=name)
    fresh, _ = read_model_file(train(tiny_config(max_steps=1, lr=1e-12), data, tmp_path / "fresh").model_path)
    assert any(not torch.allclose(fresh[name], weights[name]) for name in weights)
    # Weights of another network are refused with a message, before anything is trained.
    other = {name: tensor for name, tensor in weights.items() if not name.startswith("out")}
    with pytest.raises(ConfigError, match="initial weights do not fit"):
        train(tiny_config(max_steps=1), data, tmp_path / "other", initial_weights=other)


class _NaNAfter(torch.utils.data.Dataset):
    """Phantoms, except that items with index >= first_bad are NaN."""

    def __init__(self, first_bad: int):
        self.inner, self.first_bad = PhantomDataset(8, 16), first_bad

    def __len__(self):
        return 8

    def __getitem__(self, index):
        image, i = self.inner[index]
        return (torch.full_like(image, float("nan")) if index >= self.first_bad else image), i


def test_non_finite_steps_are_skipped_then_stop_with_a_clear_error(tmp_path):
    events = []
    with pytest.raises(TrainingError, match="3 steps in a row had a non-finite loss.*Lower the learning rate"):
        train(tiny_config(batch_size=8, max_steps=10, max_nonfinite_steps=3, seed=0), _NaNAfter(0), tmp_path / "a",
              on_event=events.append)  # fmt: skip
    assert [e["in_a_row"] for e in events if e["event"] == "nonfinite"] == [1, 2, 3]
    # Isolated bad batches are skipped and training goes on with finite weights.
    result = train(tiny_config(batch_size=1, max_steps=16, max_nonfinite_steps=3), _NaNAfter(7), tmp_path / "b")
    assert result.skipped_steps == 2 and result.step == 16
    state = load_training_state(tmp_path / "b" / "state_0000016.pt")
    assert all(torch.isfinite(v).all() for v in state["network"].values())


def test_stop_request_writes_a_checkpoint_and_resume_continues(tmp_path):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 4  # stop before the fifth step

    result = train(tiny_config(max_steps=100, checkpoint_interval=50), PhantomDataset(4, 16), tmp_path, stop=stop)
    assert result.stopped and result.step == 4
    assert [c[0] for c in list_checkpoints(tmp_path)] == [4]
    assert train(tiny_config(max_steps=6), PhantomDataset(4, 16), tmp_path, resume=True).step == 6


def test_the_stop_file_stops_right_after_a_checkpoint_and_is_removed(tmp_path):
    """A stop file written when the step-2 checkpoint arrives: the run stops at that step (no second write of
    it), removes the file, and a resume is not stopped by it."""
    (tmp_path / "STOP").write_text("left by an earlier session")  # removed at the start, not obeyed

    def on_event(event):
        if event.get("event") == "checkpoint" and event["step"] == 2:
            (tmp_path / "STOP").write_text("stop")

    config = tiny_config(max_steps=100, checkpoint_interval=2)
    result = train(config, PhantomDataset(4, 16), tmp_path, on_event=on_event)
    assert result.stopped and result.step == 2
    assert result.model_path == tmp_path / "model_0000002.safetensors" and result.model_path.is_file()
    assert [c[0] for c in list_checkpoints(tmp_path)] == [2]
    assert not (tmp_path / "STOP").exists()
    assert train(tiny_config(max_steps=4, checkpoint_interval=2), PhantomDataset(4, 16), tmp_path,
                 resume=True).step == 4  # fmt: skip


def test_previews_are_nifti_with_the_card_affine_and_a_valid_png(tmp_path):
    nib = pytest.importorskip("nibabel")
    events = []
    train(tiny_config(max_steps=2, preview_interval=2, preview_steps=2), PhantomDataset(4, 16), tmp_path,
          on_event=events.append)  # fmt: skip
    (preview,) = [e for e in events if e["event"] == "preview"]
    nii = nib.load(next(p for p in preview["paths"] if p.endswith(".nii.gz")))
    assert nii.shape == (16, 16, 16)
    np.testing.assert_allclose(nii.affine, phantom_affine(16))
    png = (tmp_path / "previews" / "preview_0000002.png").read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == ((3 * 16 + 6) * 16, 256)  # each 16-voxel slice enlarged 16x to 256 pixels


def test_previews_are_nifti_without_nibabel_too(tmp_path, monkeypatch):
    """3D Slicer's Python has SimpleITK but not nibabel: the Slicer module still gets a volume to load."""
    pytest.importorskip("SimpleITK")
    from wdmcore.data import load_volume

    monkeypatch.setitem(sys.modules, "nibabel", None)  # `import nibabel` raises ImportError
    events = []
    train(tiny_config(max_steps=2, preview_interval=2, preview_steps=2), PhantomDataset(4, 16), tmp_path,
          on_event=events.append)  # fmt: skip
    (preview,) = [e for e in events if e["event"] == "preview"]
    (nii,) = [p for p in preview["paths"] if p.endswith(".nii.gz")]
    monkeypatch.delitem(sys.modules, "nibabel")
    pytest.importorskip("nibabel")
    volume, affine = load_volume(nii)
    assert volume.shape == (16, 16, 16) and np.isfinite(volume).all()
    np.testing.assert_allclose(affine, phantom_affine(16), atol=1e-5)


def test_png_writer_round_trips_pixels(tmp_path):
    image = np.linspace(0, 1, 12).reshape(3, 4)
    write_png_gray(tmp_path / "x.png", image)
    data = (tmp_path / "x.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat_len = int.from_bytes(data[33:37], "big")
    raw = zlib.decompress(data[41 : 41 + idat_len])
    rows = [raw[r * 5 + 1 : r * 5 + 5] for r in range(3)]
    assert np.array_equal(np.frombuffer(b"".join(rows), np.uint8).reshape(3, 4), np.round(image * 255))


def test_tensorboard_logs_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny_config(max_steps=2, tensorboard=True), PhantomDataset(4, 16), tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "loss_band/0", "loss_band/7"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
