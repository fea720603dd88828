"""Training under faults: one run per output folder, records.json of the model cache updated under a lock,
SIGTERM to the whole process group (with DataLoader workers) ends with a final checkpoint, a full disk during a
checkpoint leaves the previous one intact, and options that used to end in tracebacks exit 2 with a message."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import tiny_config

from wdmcore import load_model
from wdmcore.cli.main import main
from wdmcore.data.phantoms import PhantomDataset
from wdmcore.errors import DataError
from wdmcore.training import checkpoints as training_checkpoints
from wdmcore.training import list_checkpoints, train

WDMCORE = Path(__file__).parent.parent / "WDMCore"
TINY = ["--format", "phantoms", "--phantoms", "4", "--preset", "unet-128", "--model-channels", "8",
        "--channel-mult", "1,2", "--num-groups", "4", "--num-res-blocks", "1", "--image-size", "16",
        "--batch-size", "2", "--no-tensorboard", "--progress", "none"]  # fmt: skip


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(WDMCORE), "OMP_NUM_THREADS": "1", **extra}


def test_a_second_run_in_the_same_folder_is_refused(tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    with FileLock(out / ".wdm-train.lock"):  # what a running `wdm train --out run` holds
        code = main(["train", *TINY, "--max-steps", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "wdm: error: another training run holds" in err
    assert list_checkpoints(out) == []
    assert main(["train", *TINY, "--max-steps", "1", "--out", str(out)]) == 0  # free again


def test_records_survive_four_processes_writing_at_once(tmp_path):
    cache = tmp_path / "cache" / "models"
    script = (
        "import sys\nfrom pathlib import Path\nfrom wdmcore.hub.cache import set_record\n"
        "for i in range(30):\n    set_record(Path(sys.argv[1]), f'p{sys.argv[2]}_{i}', {'file': 'x', 'sha256': 'y'})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(cache), str(k)], env=_env()) for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    records = json.loads((cache / "records.json").read_text(encoding="utf-8"))["models"]
    assert len(records) == 120


def test_sigterm_to_the_process_group_with_loader_workers_saves_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [*TINY[:-2], "--progress", "jsonl", "--num-workers", "2", "--max-steps", "100000",
            "--checkpoint-interval", "100000", "--log-interval", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "wdmcore.cli", "train", *args], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait for the first training step
        if '"task": "train"' in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGTERM)  # what docker stop and SLURM do: the whole group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "exited unexpectedly" not in stderr
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "result" and events[-1]["stopped"] is True
    (step, model_file, state_file), *_ = list_checkpoints(out)
    assert state_file is not None and load_model(model_file).image_size == 16


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    real_save = training_checkpoints.atomic_torch_save

    def full_at_step_4(obj, path):
        if obj["step"] == 4:
            raise RuntimeError(f"[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: {path}") from (
                OSError(errno.ENOSPC, "No space left on device")
            )
        real_save(obj, path)

    monkeypatch.setattr(training_checkpoints, "atomic_torch_save", full_at_step_4)
    with pytest.raises(DataError, match="step 4.*the disk is full.*previous checkpoint .*model_0000002.safetensors"):
        train(tiny_config(max_steps=6, checkpoint_interval=2), PhantomDataset(4, 16), tmp_path)
    assert [c[0] for c in list_checkpoints(tmp_path)] == [2]
    assert not list(tmp_path.glob(".*.tmp"))
    load_model(tmp_path / "model_0000002.safetensors")


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    files = {"binary": tmp_path / "binary.json", "types": tmp_path / "types.json", "data": tmp_path / "data.json",
             "list": tmp_path / "list.txt", "file": tmp_path / "a_file"}  # fmt: skip
    files["binary"].write_bytes(bytes(range(256)))
    files["types"].write_text(json.dumps({"lr": "fast", "max_steps": 1}))
    files["data"].write_text(json.dumps({"data": [1, 2]}))
    files["list"].write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 8)
    files["file"].write_text("not a folder")
    resume = tmp_path / "resume"
    resume.mkdir()
    (resume / "config.json").write_bytes(b'{"lr": 1e-3, "max_st')
    return files


BAD_OPTIONS = [
    (["sample", "--device", "bogus"], "unknown device 'bogus'"),
    (["sample", "--device", "meta"], "device 'meta' cannot run a model"),
    (["sample", "--seed", str(2**64 - 1), "--num", "2"], "--seed must lie between 0 and"),  # seed + 1 too big
    (["train", *TINY, "--device", "bogus"], "unknown device 'bogus'"),
    (["train", *TINY, "--config", "{binary}"], "is not a text file"),
    (["train", *TINY, "--config", "{types}"], "option 'lr' must be a number, got 'fast'"),
    (["train", *TINY, "--config", "{data}"], "'data' and 'network' entries must be mappings"),
    (["train", *TINY[2:], "--format", "auto", "--data", "{list}"], "is not a text file"),
    (["train", *TINY, "--resume", "--out", "{resume}"], "cannot resume"),
    (["train", *TINY, "--out", "{file}"], "is a file, not a folder"),
]


@pytest.mark.parametrize(("args", "message"), BAD_OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_OPTIONS])
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    files = {**_bad_inputs(tmp_path), "resume": tmp_path / "resume"}
    args = [a.format(**files) if a.startswith("{") else a for a in args]
    if "--out" not in args and args[0] == "train":
        args += ["--out", str(tmp_path / "run")]
    if args[0] == "sample":
        args += ["--model", str(Path(__file__).parent / "nonexistent.safetensors"), "--out", str(tmp_path / "o")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "wdm: error: " in err and message in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a read-only file system")
def test_read_only_out_for_train(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        code = main(["train", *TINY, "--max-steps", "1", "--out", str(folder / "run")])
    finally:
        subprocess.run(["umount", str(folder)], check=False)
    err = capsys.readouterr().err
    assert code == 2 and "wdm: error: " in err and "read-only" in err, err
