import json
import subprocess
import sys
import textwrap

import pytest
import torch

from wdmcore.cli.main import main
from wdmcore.networks import build_network, preset_config


def test_inspect_reports_preset_and_parameters(tmp_path, capsys):
    torch.save(build_network(preset_config("unet-128")).state_dict(), tmp_path / "m.pt")
    assert main(["inspect", str(tmp_path / "m.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "unet-128" and info["parameters"] == 57_914_824 and info["image_size"] == 128


def test_errors_are_one_clear_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("nope")
    assert main(["inspect", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error:") and "not a PyTorch checkpoint" in err and "Traceback" not in err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "wdm 0.1.0" in capsys.readouterr().out


def test_unexpected_errors_are_one_jsonl_error_event_with_the_traceback(tmp_path, capsys, monkeypatch):
    """A program reading `--progress jsonl` (the Slicer modules) gets a structured error even for a bug."""
    import wdmcore.training as command  # `wdm train` imports train() from there when it runs

    def broken(*args, **kwargs):
        raise RuntimeError("something deep inside broke\nsecond line")

    monkeypatch.setattr(command, "train", broken)
    args = ["train", "--format", "phantoms", "--phantoms", "2", "--preset", "unet-128", "--model-channels", "8",
            "--channel-mult", "1,2", "--num-groups", "4", "--num-res-blocks", "1", "--image-size", "16",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*args, "--progress", "jsonl"]) == 1
    captured = capsys.readouterr()
    error = json.loads(captured.out.strip().splitlines()[-1])
    assert error["event"] == "error" and error["kind"] == "RuntimeError"
    assert error["message"] == "unexpected error: something deep inside broke"
    assert "Traceback" in error["detail"] and "Traceback" in captured.err
    # On a terminal a bug keeps its traceback.
    with pytest.raises(RuntimeError):
        main([*args, "--progress", "none"])


def test_device_out_of_memory_is_reported_with_what_to_do(tmp_path, capsys, monkeypatch):
    import wdmcore.training as command

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(command, "train", out_of_memory)
    args = ["train", "--format", "phantoms", "--phantoms", "2", "--preset", "unet-128", "--model-channels", "8",
            "--channel-mult", "1,2", "--num-groups", "4", "--num-res-blocks", "1", "--image-size", "16",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*args, "--progress", "jsonl"]) == 3
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert error["kind"] == "OutOfMemory" and "smaller batch size" in error["message"]
    assert "Tried to allocate 2.00 GiB" in error["message"]
    assert main([*args, "--progress", "none"]) == 3
    assert capsys.readouterr().err.startswith("wdm: error: out of memory")


def test_summarize_reports_layout_cases_and_unusable_files(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(np.arange(720, dtype=np.float32).reshape(8, 9, 10), np.diag([2.0, 2, 3, 1])),
             str(data / "a.nii.gz"))  # fmt: skip
    nib.save(nib.Nifti1Image(np.ones((5, 5), np.float32), np.eye(4)), str(data / "flat.nii.gz"))
    assert main(["summarize", str(data), "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["done"] for e in events if e["event"] == "progress"] == [1, 2]
    result = events[-1]
    assert result["event"] == "result" and result["format"] == "folder"
    summary = result["summary"]
    assert summary["count"] == 1 and summary["shapes"] == {"8x9x10": 1} and summary["spacings"] == {"2x2x3": 1}
    assert summary["intensity_range"] == [0.0, 719.0]
    assert [s["path"] for s in summary["skipped"]] == [str(data / "flat.nii.gz")]
    assert "1 usable volume(s), 1 skipped" in result["text"]
    assert main(["summarize", str(data), "--headers-only"]) == 0  # --progress bar, the default
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("layout: folder\n") and "intensity range" not in out
    assert "summarize" in captured.err and "2/2" in captured.err  # the bar, on stderr
    assert main(["summarize", str(tmp_path / "missing"), "--progress", "jsonl"]) == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert error["event"] == "error" and error["kind"] == "DataError" and "no such file or folder" in error["message"]


# -- start-up time and the shared vocabulary ---------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_building_the_parser_and_every_help_imports_neither_torch_nor_numpy():
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        import wdmcore.cli.main as m
        parser = m.build_parser()
        texts = []
        commands = ["sample", "train", "evaluate", "models", "download", "import-model", "inspect",
                    "preprocess-lidc", "summarize", "synthesize", "inpaint", "vary", "example-data", "distill"]
        for command in [None, *commands]:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                parser.parse_args(["--help"] if command is None else [command, "--help"])
            texts.append(out.getvalue())
        print("torch" in sys.modules, "numpy" in sys.modules, sum("``" in t for t in texts), len(texts))
        """
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "0", "15"]  # 14 commands + `wdm --help`, no RST markup


def test_wdm_help_and_version_exit_0_without_torch():
    for flag in ("--help", "--version"):
        result = subprocess.run(
            [sys.executable, "-c", f"import sys, wdmcore.cli.main as m; sys.argv = ['wdm', '{flag}']; "
             "code = 0\ntry:\n    m.main()\nexcept SystemExit as e:\n    code = e.code\n"
             "print('torch' in sys.modules, code)"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.stdout.split()[-2:] == ["False", "0"], result.stderr


def test_the_vocabulary_is_what_the_engine_offers():
    from wdmcore import hub, vocabulary
    from wdmcore.backends.torch_call import AUTOCAST
    from wdmcore.cli import evaluate as evaluate_command
    from wdmcore.evaluation import volumes as evaluation_volumes
    from wdmcore.networks import PRESETS
    from wdmcore.samplers import SAMPLERS
    from wdmcore.volumes.writing import FORMATS

    assert tuple(SAMPLERS) == vocabulary.SAMPLER_NAMES
    assert vocabulary.DEFAULT_SAMPLER in SAMPLERS and set(vocabulary.DEFAULT_STEPS) == set(SAMPLERS)
    assert ("auto", *AUTOCAST) == vocabulary.PRECISION_NAMES
    assert vocabulary.PRESET_NAMES == tuple(PRESETS) == hub.KNOWN_PRESETS
    assert vocabulary.OUTPUT_FORMATS == FORMATS
    assert evaluate_command.FORMATS == evaluation_volumes.FORMATS
    assert {s.lstrip(".") for s in evaluation_volumes.VOLUME_SUFFIXES} >= set(FORMATS)  # evaluate reads them all


@pytest.mark.parametrize("command", ["sample", "train", "evaluate", "summarize", "download", "preprocess-lidc"])
def test_every_long_command_takes_the_same_progress_values(command):
    from wdmcore.cli.main import build_parser

    required = {"sample": [], "train": ["--out", "x"], "evaluate": ["--fake", "x"], "summarize": ["x"],
                "download": ["x"], "preprocess-lidc": ["in", "out"]}[command]  # fmt: skip
    parser = build_parser()
    assert parser.parse_args([command, *required]).progress == "bar"
    for mode in ("bar", "jsonl", "none"):
        assert parser.parse_args([command, *required, "--progress", mode]).progress == mode
    with pytest.raises(SystemExit):
        parser.parse_args([command, *required, "--progress", "fancy"])


def test_one_cache_root_moved_by_one_variable(tmp_path, monkeypatch):
    from wdmcore import hub, paths
    from wdmcore.cli.evaluate import default_cache_dir

    monkeypatch.setenv("WDM_CACHE_DIR", str(tmp_path / "cache"))
    assert hub.cache_dir() == tmp_path / "cache" / "models"
    assert default_cache_dir() == tmp_path / "cache" / "evaluation-stats"
    monkeypatch.delenv("WDM_CACHE_DIR")
    assert paths.cache_root().name == "wdmcore" and hub.cache_dir().parent == paths.cache_root()
    assert default_cache_dir().parent == paths.cache_root()


def test_preprocess_lidc_errors_in_the_common_format(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["preprocess-lidc", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("wdm: error: ") and "no DICOM series" in captured.err


# -- models by name ---------------------------------------------------------------------------------------


def test_catalogue_names_work_in_inspect_and_load_model(capsys):
    import wdmcore
    from wdmcore.errors import ConfigError

    assert main(["inspect", "demo_phantom_64"]) == 0
    out = capsys.readouterr().out
    assert out.count("preset:") == 1 and "preset: none (the file carries its network)" in out
    assert "parameters, a custom network, image size 64^3" in out
    assert "demo_phantom_64" in out and "preset: None" not in out
    model = wdmcore.load_model("demo_phantom_64")
    assert model.image_size == 64 and model.card["name"] == "demo_phantom_64"
    with pytest.raises(ConfigError, match=r"unknown model 'no_such_model'\. Known models: .*demo_phantom_64.*import"):
        wdmcore.load_model("no_such_model")
    assert main(["inspect", "no_such_model"]) == 2
    assert capsys.readouterr().err.startswith("wdm: error: unknown model 'no_such_model'")
