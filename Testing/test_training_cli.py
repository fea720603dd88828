"""`wdm train`: options, --config, jsonl events, data errors, and a run killed while writing a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wdmcore import load_model
from wdmcore.cli.main import main
from wdmcore.training import list_checkpoints, load_training_state

nib = pytest.importorskip("nibabel")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "unet-128", "--model-channels", "8", "--channel-mult", "1,2", "--num-groups", "4",
        "--num-res-blocks", "1", "--image-size", "16", "--batch-size", "2", "--no-tensorboard"]  # fmt: skip


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)
    yield


def _volume(path: Path, shape, spacing=(2.0, 2.0, 2.0), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.random(shape).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0][:4])), str(path))
    return path


def _wdm(args, capsys) -> tuple[int, str, str]:
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folder_of_any_size_trains_and_reports_jsonl(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _volume(data / "a.nii.gz", (30, 24, 18), spacing=(1.0, 1.0, 2.0))
    _volume(data / "b.nii.gz", (12, 40, 20), spacing=(1.5, 1.0, 1.0), seed=1)
    out = tmp_path / "run"
    options = ["--max-steps", "4", "--checkpoint-interval", "2", "--log-interval", "1", "--progress", "jsonl"]
    code, stdout, err = _wdm([*TINY, "--data", str(data), "--out", str(out), *options], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["done"] for e in events if e["event"] == "progress" and e.get("task") == "train"] == [1, 2, 3, 4]
    assert events[-1]["event"] == "result" and events[-1]["path"] == str(out / "model_0000004.safetensors")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["data"]["format"] == "auto" and config["data"]["volumes"] == 2
    assert config["data"]["resample"] == "fit"
    model = load_model(out / "model_0000004.safetensors")
    # "fit": the largest extent (40 mm) spans the 16-voxel cube -> 2.5 mm voxels (up to the rounding of the
    # resampled shape, which the affine records exactly).
    assert model.card["geometry"]["spacing_mm"] == pytest.approx([2.5, 2.5, 2.5], rel=0.05)
    assert model.card["training"]["volumes"] == 2


def test_config_file_and_command_line_precedence(tmp_path, capsys):
    config = {"lr": 0.002, "max_steps": 3, "seed": 5, "data": {"format": "phantoms", "phantoms": 6}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    code, _, err = _wdm([*TINY, "--config", str(tmp_path / "c.json"), "--seed", "7", "--out", str(out),
                         "--progress", "none"], capsys)  # fmt: skip
    assert code == 0, err
    resolved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert (resolved["lr"], resolved["max_steps"], resolved["seed"]) == (0.002, 3, 7)
    assert resolved["data"]["phantoms"] == 6 and resolved["network"]["model_channels"] == 8
    # --resume alone takes the run's own settings from its config.json.
    code, _, err = _wdm(["--out", str(out), "--resume", "--max-steps", "5", "--progress", "none"], capsys)
    assert code == 0, err
    assert list_checkpoints(out)[-1][0] == 5
    (tmp_path / "bad.json").write_text('{"learning_rate": 1}')
    code, _, err = _wdm([*TINY, "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "unknown training options ['learning_rate']" in err


def _case_empty(data: Path) -> None:
    (data / "notes.txt").write_text("no volumes here")


def _case_2d(data: Path) -> None:
    _volume(data / "good.nii.gz", (16, 16, 16))
    _volume(data / "flat.nii.gz", (16, 16))


def _case_4d(data: Path) -> None:
    _volume(data / "good.nii.gz", (16, 16, 16))
    _volume(data / "series.nii.gz", (16, 16, 16, 3))


def _case_unreadable(data: Path) -> None:
    _volume(data / "good.nii.gz", (16, 16, 16))
    (data / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")


def _case_mixed(data: Path) -> None:
    _volume(data / "a.nii.gz", (16, 16, 16))
    _volume(data / "b.nii.gz", (20, 20, 20))


@pytest.mark.parametrize(
    ("make", "extra", "expected"),
    [
        (_case_empty, [], ["no volume"]),
        (_case_2d, [], ["flat.nii.gz", "2-D", "--skip-bad-files"]),
        (_case_4d, [], ["series.nii.gz", "4-D", "--skip-bad-files"]),
        (_case_unreadable, [], ["broken.nii.gz", "--skip-bad-files"]),
        (_case_mixed, ["--resample", "none"], ["different shapes", "--resample fit"]),
    ],
    ids=["empty", "2d", "4d", "unreadable", "mixed-sizes"],
)
def test_data_errors_are_clear(tmp_path, capsys, make, extra, expected):
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    code, _, err = _wdm([*TINY, "--data", str(data), "--out", str(tmp_path / "run"), *extra], capsys)
    assert code == 2
    assert any(line.startswith("wdm: error: ") for line in err.splitlines())  # below the progress bars
    for text in expected:
        assert text.lower() in err.lower(), err
    assert not list_checkpoints(tmp_path / "run")


def test_skip_bad_files_trains_on_the_rest(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _case_unreadable(data)
    code, _, err = _wdm([*TINY, "--data", str(data), "--out", str(tmp_path / "run"), "--skip-bad-files",
                         "--max-steps", "1", "--progress", "none"], capsys)  # fmt: skip
    assert code == 0, err


# A child process that trains and blocks inside the writer of the checkpoint at step 4: it writes part of the
# temporary file, tells the parent, and waits to be killed.
_KILLED_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import torch, safetensors.torch
    sys.path.insert(0, {testing!r})
    from training_helpers import tiny_config
    from wdmcore.data.phantoms import PhantomDataset
    from wdmcore.training import train

    out, which, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    calls = []

    def blocking(real):
        def write(obj, target, *args, **kwargs):
            calls.append(1)
            if len(calls) < 2:
                return real(obj, target, *args, **kwargs)
            with open(target, "wb") as handle:
                handle.write(b"half a checkpoint")
                handle.flush()
                os.fsync(handle.fileno())
            marker.write_text("writing")
            time.sleep(120)
        return write

    if which == "state":
        torch.save = blocking(torch.save)
    else:
        safetensors.torch.save_file = blocking(safetensors.torch.save_file)
    torch.set_num_threads(1)
    train(tiny_config(max_steps=100, checkpoint_interval=2), PhantomDataset(5, 16, seed=1), out)
    """
)


@pytest.mark.parametrize("which", ["model", "state"])
def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, which):
    script = tmp_path / "child.py"
    script.write_text(_KILLED_CHILD.format(testing=str(Path(__file__).parent)))
    out, marker = tmp_path / "run", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "WDMCore"), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), str(out), which, str(marker)], env=env)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert child.poll() is None, "the child process ended before reaching the checkpoint"
            assert time.monotonic() < deadline, "the child did not reach the second checkpoint in time"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert list(out.glob(".*.tmp")), "the partial temporary file should be there"
    complete = [c for c in list_checkpoints(out) if c[2] is not None]
    assert [c[0] for c in complete] == [2]
    model = load_model(out / "model_0000002.safetensors")
    assert model.card["training"]["step"] == 2
    assert load_training_state(out / "state_0000002.pt")["step"] == 2

    # Resuming continues from step 2 and ends exactly where an uninterrupted run ends.
    sys.path.insert(0, str(Path(__file__).parent))
    from training_helpers import tiny_config

    from wdmcore.data.phantoms import PhantomDataset
    from wdmcore.training import train

    train(tiny_config(max_steps=4, checkpoint_interval=2), PhantomDataset(5, 16, seed=1), out, resume=True)
    train(tiny_config(max_steps=4, checkpoint_interval=2), PhantomDataset(5, 16, seed=1), tmp_path / "straight")
    a = load_training_state(out / "state_0000004.pt")["network"]
    b = load_training_state(tmp_path / "straight" / "state_0000004.pt")["network"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.glob(".*.tmp"))


def test_sigterm_stops_wdm_train_with_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "WDMCore"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "wdmcore", "train", *TINY, "--format", "phantoms", "--phantoms", "8",
               "--max-steps", "100000", "--checkpoint-interval", "100000", "--log-interval", "1", "--out", str(out),
               "--progress", "jsonl"]  # fmt: skip
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if json.loads(line).get("done", 0) >= 3:
                child.send_signal(signal.SIGTERM)
                break
        rest = child.stdout.read()
    finally:
        child.wait(timeout=60)
    assert child.returncode == 0
    result = json.loads(rest.strip().splitlines()[-1])
    assert result["event"] == "result" and result["stopped"] is True
    assert Path(result["path"]).is_file() and load_training_state(out / f"state_{result['step']:07d}.pt")


def test_unet128_preset_prepares_any_folder_to_128_cubes(tmp_path):
    from wdmcore.cli.train import build_dataset
    from wdmcore.training import TrainConfig

    data = tmp_path / "data"
    data.mkdir()
    _volume(data / "wide.nii.gz", (60, 50, 20), spacing=(3.0, 3.0, 5.0))
    _volume(data / "small.nii", (10, 12, 14), spacing=(1.0, 1.0, 1.0), seed=1)
    config = TrainConfig(preset="unet-128").resolved()
    options = {"path": str(data), "format": "folder", "sequence": "t1n", "resample": "fit", "spacing": None,
               "crop": "center", "intensity": "mri", "cache": None, "skip_bad_files": False}  # fmt: skip
    dataset = build_dataset(config, options, tmp_path / "run")
    assert len(dataset) == 2
    for i in range(2):
        image, _ = dataset[i]
        assert image.shape == (1, 128, 128, 128) and float(image.min()) >= -1.0 and float(image.max()) <= 1.0


def test_yaml_config(tmp_path, capsys):
    pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text("lr: 0.003\nmax_steps: 2\ndata:\n  format: phantoms\n  phantoms: 4\n")
    out = tmp_path / "run"
    code, _, err = _wdm([*TINY, "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--progress", "none"], capsys)
    assert code == 0, err
    resolved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert (resolved["lr"], resolved["max_steps"], resolved["data"]["phantoms"]) == (0.003, 2, 4)
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    code, _, err = _wdm([*TINY, "--config", str(tmp_path / "bad.yaml"), "--out", str(out)], capsys)
    assert code == 2 and "not valid YAML" in err


def test_progress_from_the_first_second_and_the_first_step(tmp_path, capsys):
    """Bars while headers are read and volumes preprocessed, and a training event after step 1 (not only at the
    log interval)."""
    data = tmp_path / "data"
    data.mkdir()
    _volume(data / "a.nii.gz", (16, 16, 16))
    _volume(data / "b.nii.gz", (16, 16, 16), seed=1)
    common = [*TINY, "--data", str(data), "--max-steps", "2", "--log-interval", "50"]
    code, _, err = _wdm([*common, "--out", str(tmp_path / "bar")], capsys)  # --progress bar is the default
    assert code == 0, err
    assert "reading headers" in err and "preprocessing" in err and "2/2" in err
    assert "1/2 [" in err.split("preprocessing")[-1]  # the training bar moved after the first step
    code, stdout, err = _wdm([*common, "--out", str(tmp_path / "jsonl"), "--progress", "jsonl"], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["done"] for e in events if e["event"] == "progress" and e["task"] == "prepare"] == [1, 2]
    assert [e["done"] for e in events if e["event"] == "progress" and e["task"] == "train"] == [1, 2]


def test_progress_tqdm_is_an_alias_of_bar(tmp_path, capsys):
    from wdmcore.cli.main import build_parser

    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--progress", "tqdm"])
    assert args.progress == "bar"
    assert "--progress tqdm is deprecated; use --progress bar" in capsys.readouterr().err


def test_resume_on_other_data_is_refused_unless_allowed(tmp_path, capsys):
    first, other = tmp_path / "first", tmp_path / "other"
    for folder, seed in ((first, 0), (other, 5)):
        folder.mkdir()
        _volume(folder / "a.nii.gz", (16, 16, 16), seed=seed)
    out = tmp_path / "run"
    quiet = [*TINY, "--out", str(out), "--progress", "none"]
    assert _wdm([*quiet, "--data", str(first), "--max-steps", "1"], capsys)[0] == 0
    code, _, err = _wdm([*quiet, "--resume", "--data", str(other), "--max-steps", "2"], capsys)
    assert code == 2 and err.startswith("wdm: error: ")
    assert f"path {str(first)!r} -> {str(other)!r}" in err and "--allow-new-data" in err
    assert [step for step, _, _ in list_checkpoints(out)] == [1]  # nothing trained, nothing rewritten
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["data"]["path"] == str(first)
    # Resuming without --data uses the run's own data; --allow-new-data continues on the other folder.
    assert _wdm([*quiet, "--resume", "--max-steps", "2"], capsys)[0] == 0
    code, _, err = _wdm([*quiet, "--resume", "--data", str(other), "--max-steps", "3", "--allow-new-data"], capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["data"]["path"] == str(other)


def test_resume_reads_runs_whose_config_says_general():
    from wdmcore.training.config import data_changes

    old = {"path": "/data/a", "format": "general", "spacing": None, "cache": "/tmp/x", "volumes": 4}
    assert data_changes(old, {"path": "/data/a", "format": "folder", "spacing": None, "cache": "/elsewhere"}) == []
    assert data_changes(old, {"path": "/data/a", "format": "brats"}) == ["format 'folder' -> 'brats'"]
    assert data_changes(old, {"path": "/data/a", "spacing": 2.0}) == ["spacing None -> 2.0"]
