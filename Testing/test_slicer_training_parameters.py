"""Training settings of the Slicer module: checks, the `wdm train` command lines, persistence, run folders."""

from __future__ import annotations

import json

import pytest
import slicer_support  # noqa: F401 - puts the module folders on sys.path
from test_slicer_parameters import DictSettings
from WaveletDiffusionTrainingLib import runfolder
from WaveletDiffusionTrainingLib.parameters import TrainingParameters, load_settings, save_settings

from wdmcore.cli.train import add_parser


def valid(**fields) -> TrainingParameters:
    return TrainingParameters(**{"data_path": "/data", "output_dir": "/runs/a", **fields})


def test_defaults_are_the_recipe_with_previews():
    params = valid().validate()
    assert (params.preset, params.lr, params.max_steps, params.ema_rate) == ("unet-128", 1e-5, 100_000, 0.9999)
    assert params.preview_interval == params.checkpoint_interval == 5000


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("data_path", "", "folder of training volumes"), ("output_dir", "", "output folder"),
     ("preset", "unet-64", "unknown preset"), ("image_size", 100, "multiple of 16"),
     ("max_steps", 0, "number of steps"), ("lr", 0.0, "learning rate"), ("lr", float("nan"), "learning rate"),
     ("lr", float("inf"), r"the learning rate must be a number in \(0, 1\], got inf"), ("batch_size", -1, "batch size"),
     ("precision", "fp16", "precision"),
     ("device", "gpu", "device"), ("ema_rate", 1.0, "EMA"), ("checkpoint_interval", 0, "checkpoint"),
     ("preview_interval", -1, "preview"), ("num_workers", -2, "workers"), ("data_format", "dicom", "format"),
     ("sequence", "flair", "sequence"), ("intensity", "pet", "intensity")],
)  # fmt: skip
def test_invalid_values_say_what_to_change(field, value, message):
    with pytest.raises(ValueError, match=message):
        valid(**{field: value}).validate()


def test_scene_volumes_need_no_folder_and_any_cuda_index_is_a_device():
    valid(data_source="nodes", data_path="").validate()
    valid(device="cuda:7").validate()


def parse(args):
    """The command lines are parsed by the real `wdm train` parser: every option exists and has its value."""
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *args])


def test_train_args_carry_every_setting():
    params = valid(data_format="brats", sequence="t2f", image_size=64, batch_size=3, lr=2e-4, precision="bf16",
                   device="cuda:1", ema_rate=0.999, checkpoint_interval=100, preview_interval=50, num_workers=2,
                   skip_bad_files=True, max_steps=1000, extra_args=["--model-channels", "32"])  # fmt: skip
    args = parse(params.train_args())
    assert str(args.out) == "/runs/a" and args.progress == "jsonl" and args.preset == "unet-128"
    assert str(args.data_path) == "/data" and args.data_format == "brats" and args.data_sequence == "t2f"
    assert args.data_skip_bad_files is True and args.net_model_channels == 32
    assert (args.train_image_size, args.train_batch_size, args.train_lr) == (64, 3, 2e-4)
    assert (args.train_precision, args.train_device, args.train_ema_rate) == ("bf16", "cuda:1", 0.999)
    assert (args.train_checkpoint_interval, args.train_preview_interval, args.train_num_workers) == (100, 50, 2)
    assert args.train_max_steps == 1000
    # 0 = the preset's / recipe's: the options are left out so that wdm train picks them.
    defaults = parse(valid().train_args())
    assert not hasattr(defaults, "train_image_size") and not hasattr(defaults, "train_batch_size")
    assert not hasattr(defaults, "data_skip_bad_files")


def test_exported_scene_volumes_replace_the_data_options():
    args = parse(valid(data_source="nodes").train_args("/runs/a/scene_volumes", "folder"))
    assert str(args.data_path) == "/runs/a/scene_volumes" and args.data_format == "folder"
    assert not hasattr(args, "data_sequence")


def test_resume_passes_only_what_a_resumed_run_may_change():
    from wdmcore.training.loop import _RESUME_FREE

    args = parse(valid(max_steps=7, lr=1.0, preset="unet-256").resume_args())
    assert args.resume is True and str(args.out) == "/runs/a"
    given = {k[len("train_") :] for k in vars(args) if k.startswith("train_")}
    assert given and given <= _RESUME_FREE, given - _RESUME_FREE
    assert not hasattr(args, "preset") and not hasattr(args, "data_path") and args.train_max_steps == 7


def test_last_choices_round_trip_and_bad_values_are_ignored():
    settings = DictSettings()
    chosen = valid(data_path="/d/brats", output_dir="/r/x", preset="wavunet-256", lr=3e-4, device="cuda:0",
                   max_steps=1234, preview_interval=0, data_source="nodes")  # fmt: skip
    save_settings(settings, chosen)
    restored = load_settings(settings)
    for name in ("data_path", "output_dir", "preset", "lr", "device", "max_steps", "preview_interval", "data_source"):
        assert getattr(restored, name) == getattr(chosen, name), name
    stored = json.loads(settings.data["WaveletDiffusion/Train/last"])
    settings.setValue("WaveletDiffusion/Train/last", json.dumps({**stored, "preset": "nope", "lr": "fast"}))
    restored = load_settings(settings)
    assert restored.preset == "unet-128" and restored.lr == 1e-5 and restored.max_steps == 1234
    settings.setValue("WaveletDiffusion/Train/last", "not json")
    assert load_settings(settings) == TrainingParameters()


def test_run_folder_checkpoints_resumable_state_and_history(tmp_path):
    assert runfolder.checkpoints(tmp_path / "missing") == [] and runfolder.latest_model(tmp_path) is None
    for step in (2, 4, 6):
        (tmp_path / f"model_{step:07d}.safetensors").write_bytes(b"m")
    for step in (2, 4):
        (tmp_path / f"state_{step:07d}.pt").write_bytes(b"s")
    (tmp_path / ".model_0000008.safetensors.abc.tmp").write_bytes(b"partial")
    assert [c.step for c in runfolder.checkpoints(tmp_path)] == [2, 4, 6]
    assert runfolder.latest_model(tmp_path).name == "model_0000006.safetensors"
    assert runfolder.resumable(tmp_path).step == 4  # the state of step 6 was never written
    events = [{"event": "start", "step": 0}, *[{"event": "progress", "task": "train", "done": s, "loss": 1 / s}
              for s in (1, 2, 3, 4, 5)], {"event": "progress", "task": "prepare", "done": 1, "total": 2},
              {"event": "start", "step": 4}, *[{"event": "progress", "task": "train", "done": s, "loss": 10.0 * s}
              for s in (5, 6)]]  # fmt: skip
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + '\n{"event": "progr')
    history = runfolder.loss_history(tmp_path)
    assert [s for s, _ in history] == [1, 2, 3, 4, 5, 6]
    assert history[3] == (4, 0.25) and history[4] == (5, 50.0)  # step 5 of the resumed session replaced
    (tmp_path / "config.json").write_text('{"lr": 0.5}')
    assert runfolder.read_config(tmp_path) == {"lr": 0.5}
