"""Hostile models and faults while sampling: non-finite weights or schedules are refused, `wdm sample` checks its
output folder first, writes each volume atomically as soon as it is done, never overwrites without --overwrite,
keeps finished volumes on SIGTERM and leaves nothing under a final name on a full disk; one-step samplers work."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generate import tiny_model

from wdmcore import load_model
from wdmcore.cli.main import main
from wdmcore.diffusion import Diffusion, DiffusionConfig
from wdmcore.errors import ConfigError, DataError, NonFiniteError
from wdmcore.samplers import NoiseSource
from wdmcore.tasks.generate import generate
from wdmcore.volumes import writing
from wdmcore.volumes.writing import save_volume

TESTING = Path(__file__).parent
WDMCORE = TESTING.parent / "WDMCore"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model().save(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _nan_model_file(folder: Path) -> Path:
    model = tiny_model()
    with torch.no_grad():
        next(model.network.parameters()).view(-1)[3] = float("nan")
    return model.save(folder / "nan.safetensors")


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -------------------------------------------------------------------------------------------- non-finite


def test_non_finite_weights_are_refused_at_load_and_import(tmp_path, monkeypatch, capsys):
    path = _nan_model_file(tmp_path)
    with pytest.raises(NonFiniteError, match="NaN or infinite weights in 1 tensor"):
        load_model(path)
    monkeypatch.setenv("WDM_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["import-model", str(path), "--preset", "unet-128", "--name", "broken"])
    assert code == 2
    err = capsys.readouterr().err
    assert "wdm: error: " in err and "NaN or infinite weights" in err and "weights_only" not in err
    assert _files(tmp_path / "cache" / "models") == []  # nothing imported, no record written


def test_a_schedule_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        DiffusionConfig(beta_end=2.0)
    with pytest.raises(ConfigError, match="beta_start"):  # the card validator sees it first
        tiny_model(card={"diffusion": {"beta_start": 0.0}})


def test_non_finite_volumes_are_never_written(tmp_path, model_file, capsys):
    model = tiny_model()
    model.network.forward = lambda x, t: torch.full_like(x[:, :8], float("nan"))  # a network that breaks down
    with pytest.raises(NonFiniteError, match="produced NaN or infinite values"):
        generate(model, 1, steps=2, backend="torch")  # the replaced forward is PyTorch's
    array = np.zeros((4, 4, 4), np.float32)
    array[1, 2, 3] = np.nan
    with pytest.raises(NonFiniteError, match="refusing to write"):
        save_volume(array, np.eye(4), tmp_path / "x.nii.gz", dtype="int16")
    assert _files(tmp_path) == ["tiny.safetensors"] or _files(tmp_path) == []
    # Through the command line: a card whose lll_scale would make infinities is refused, exit 2, nothing written.
    from wdmcore.models.checkpoints import save_model_file

    good = tiny_model()
    card = {**good.card, "diffusion": {**good.diffusion_config.to_dict(), "lll_scale": 0}}
    bad = save_model_file(tmp_path / "bad.safetensors", good.network, card)
    out = tmp_path / "out"
    code = main(["sample", "--model", str(bad), "--steps", "2", "--out", str(out), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "wdm: error: " in err and "lll_scale" in err
    assert _files(out) == []


# -------------------------------------------------------------------------------------------- one step


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_one_step_samplers_return_the_x0_prediction_from_pure_noise(sampler):
    model = tiny_model()
    (volume,) = generate(model, 1, seed=3, sampler=sampler, steps=1, backend="torch", precision="fp32")
    # One step from x_T: the network's x0 prediction at the last timestep (clipped to [-1, 1] in image space).
    x = NoiseSource([3], "cpu").initial((8, 8, 8, 8))
    with torch.inference_mode():
        x0 = model.network(x, torch.tensor([999]))
        x0 = model.diffusion.clip_x0(x0)
    from wdmcore.wavelets import from_coefficients

    expected = ((from_coefficients(x0, model.diffusion_config.lll_scale)[0, 0].clamp(-1, 1) + 1) / 2).numpy()
    assert np.isfinite(volume.array).all() and volume.array.std() > 0.01
    np.testing.assert_allclose(volume.array, expected, atol=1e-4)


def test_one_step_diffusion_has_finite_arrays():
    one = Diffusion(DiffusionConfig()).respaced(1)
    assert one.timestep_map.tolist() == [999] and one.num_timesteps == 1
    assert np.isfinite(one.variance_fixed_large).all() and np.isfinite(one.posterior_log_variance_clipped).all()


# -------------------------------------------------------------------------------------------- outputs


def test_output_location_is_checked_before_sampling(tmp_path, model_file, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("wdmcore.tasks.generate.generate", lambda *a, **k: calls.append(1))  # imported when run
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for out in (not_a_folder, not_a_folder / "sub"):
        code = main(["sample", "--model", str(model_file), "--out", str(out), "--progress", "none"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("wdm: error: ") and "file" in err
    assert calls == []


def test_existing_outputs_need_overwrite(tmp_path, model_file, capsys):
    args = ["sample", "--model", str(model_file), "--steps", "1", "--out", str(tmp_path), "--progress", "none"]
    (tmp_path / "sample_seed0000.nii.gz").write_bytes(b"precious")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error: ") and "already exist" in err and "--overwrite" in err
    assert "sample_seed0000.nii.gz" in err
    assert (tmp_path / "sample_seed0000.nii.gz").read_bytes() == b"precious"
    assert main([*args, "--overwrite"]) == 0
    assert (tmp_path / "sample_seed0000.nii.gz").read_bytes() != b"precious"
    assert _files(tmp_path) == ["sample_seed0000.json", "sample_seed0000.nii.gz"]


def test_disk_full_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        Path(args[2]).write_bytes(b"half a volume")  # a partial temporary file, as a real full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writing, "save_nifti", full)
    with pytest.raises(DataError, match="the disk is full"):
        save_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), tmp_path / "v.nii.gz", {"seed": 1})
    assert _files(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 300 kB tmpfs (needs root and a kernel that allows it); skipped elsewhere."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_sample_on_a_really_full_disk(small_tmpfs, model_file, capsys):
    (small_tmpfs / "filler").write_bytes(b"\0" * (300 * 1024 - 8 * 1024))  # leaves less than one volume
    code = main(["sample", "--model", str(model_file), "--steps", "1", "--num", "2", "--out", str(small_tmpfs)]
                + ["--progress", "none"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "wdm: error: " in err and "the disk is full" in err
    assert _files(small_tmpfs) == ["filler"]


def test_sigterm_keeps_the_finished_volumes(tmp_path, model_file):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(WDMCORE)}
    # Slow every network call down so that the signal arrives while volume 2 of 5 is being sampled.
    script = (
        "import sys, time, wdmcore.networks.unet as u\n"
        "orig = u.UNet.forward\n"
        "def slow(self, *a, **k):\n    time.sleep(0.2)\n    return orig(self, *a, **k)\n"
        "u.UNet.forward = slow\n"
        "from wdmcore.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    # PyTorch: the slowed forward is PyTorch's (auto would run OpenVINO on a CPU with native bf16)
    args = ["sample", "--model", str(model_file), "--num", "5", "--steps", "3", "--sampler", "ddim"]
    args += ["--backend", "torch"]
    proc = subprocess.Popen([sys.executable, "-c", script, *args, "--out", str(out), "--progress", "none"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "sample_seed0001.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert "wdm: error: stopped by SIGTERM" in stderr
    names = _files(out)
    finished = [n for n in names if n.endswith(".nii.gz")]
    assert 2 <= len(finished) < 5 and all(not n.startswith(".") for n in names), names
    for name in finished:
        sidecar = json.loads((out / name.replace(".nii.gz", ".json")).read_text(encoding="utf-8"))
        assert sidecar["file"] == name


def test_training_previews_with_one_step(tmp_path):
    from training_helpers import tiny_config

    from wdmcore.data import PhantomDataset
    from wdmcore.training import train

    events = []
    result = train(tiny_config(max_steps=1, checkpoint_interval=1, preview_interval=1, preview_steps=1),
                   PhantomDataset(2, 16), tmp_path, on_event=events.append)  # fmt: skip
    assert result.step == 1
    (preview,) = [e for e in events if e["event"] == "preview"]
    assert any(p.endswith(".png") for p in preview["paths"])
