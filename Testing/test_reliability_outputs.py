"""Outputs never destroy the user's files and never leave the chosen folder: `wdm synthesize`, `wdm inpaint`,
`wdm vary` refuse an --out that is one of their inputs (the same file through `..`, a relative spelling, a
symbolic or a hard link, or a preview named like an input), an existing volume, sidecar or preview without
--overwrite, and an unknown format, all before the model is loaded; `wdm sample --prefix` and the worker's
``name`` must be plain file names; the worker refuses outputs that are its inputs or existing files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_generate import tiny_model
from test_reliability_worker import worker  # noqa: F401 - the fixture: a real worker process

from wdmcore.cli.main import main
from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import phantom_affine
from wdmcore.volumes.reading import load_volume
from wdmcore.volumes.writing import save_nifti

SIZE = 32
PRECIOUS = b"precious bytes of the user"
TASK_FUNCTIONS = {"synthesize": "wdmcore.tasks.synthesize.synthesize", "inpaint": "wdmcore.tasks.inpaint.inpaint",
                  "vary": "wdmcore.tasks.vary.vary"}  # fmt: skip


def write_inputs(folder: Path) -> dict[str, Path]:
    """Paired phantom contrasts (t1, t2, flair, pd) and a lesion mask, 32^3, written as NIfTI files."""
    folder.mkdir(parents=True, exist_ok=True)
    contrasts, lesion = paired_phantom(SIZE, 4, 0)
    affine = phantom_affine(SIZE)
    paths = {name: save_nifti(array, affine, folder / f"{name}.nii.gz") for name, array in contrasts.items()}
    paths["mask"] = save_nifti(lesion.astype(np.float32), affine, folder / "mask.nii.gz")
    return paths


@pytest.fixture
def inputs(tmp_path):
    return write_inputs(tmp_path / "inputs")


def task_argv(command: str, inputs: dict[str, Path], out, *extra: str, model: str | None = None) -> list[str]:
    """A short, real run of ``command`` on the phantom inputs (the bundled demo models, few steps)."""
    if command == "synthesize":
        args = ["--model", model or "demo_phantom_synthesize_32", "--t2", str(inputs["t2"]), "--flair",
                str(inputs["flair"]), "--pd", str(inputs["pd"]), "--sampler", "ddim", "--steps", "2"]  # fmt: skip
    elif command == "inpaint":
        args = ["--model", model or "demo_phantom_inpaint_32", "--image", str(inputs["t1"]),
                "--mask", str(inputs["mask"])]  # fmt: skip
    else:
        args = ["--model", model or "demo_phantom_64", "--image", str(inputs["t1"]), "--strength", "0.1",
                "--steps", "10"]  # fmt: skip
    return [command, *args, "--out", str(out), "--device", "cpu", "--progress", "none", *extra]


@pytest.fixture
def model_never_runs(monkeypatch):
    """Make every task function fail the test if it is reached: the refusals must come before any model load."""
    reached = []

    def spy(*args, **kwargs):
        reached.append(args)
        raise AssertionError("the task (and its model load) was reached")

    for target in TASK_FUNCTIONS.values():
        monkeypatch.setattr(target, spy)
    return reached


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (links as their target's bytes) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- outputs that are inputs


def _spell(spelling: str, target: Path, tmp_path: Path, monkeypatch) -> Path:
    """An --out that names ``target`` in another way."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    if spelling == "dotdot":
        return target.parent / "sub" / ".." / "." / target.name
    if spelling == "relative":
        monkeypatch.chdir(elsewhere)
        return Path(os.path.relpath(target, elsewhere))
    if spelling == "symlink":
        (elsewhere / "link.nii.gz").symlink_to(target)
        return elsewhere / "link.nii.gz"
    assert spelling == "hardlink"
    os.link(target, elsewhere / "hard.nii.gz")
    return elsewhere / "hard.nii.gz"


@pytest.mark.parametrize("spelling", ["dotdot", "relative", "symlink", "hardlink"])
@pytest.mark.parametrize(
    ("command", "target"),
    [("synthesize", "t2"), ("synthesize", "pd"), ("inpaint", "t1"), ("inpaint", "mask"), ("vary", "t1")],  # fmt: skip
)
def test_an_output_that_is_an_input_is_refused(command, target, spelling, inputs, tmp_path, monkeypatch, capsys,
                                               model_never_runs):  # fmt: skip
    (tmp_path / "inputs" / "sub").mkdir()
    before = snapshot(tmp_path / "inputs")
    out = _spell(spelling, inputs[target], tmp_path, monkeypatch)
    assert main(task_argv(command, inputs, out, "--overwrite")) == 2  # not even --overwrite replaces an input
    err = capsys.readouterr().err
    assert err.startswith("wdm: error: ") and "is the input" in err and "nothing was done" in err, err
    assert snapshot(tmp_path / "inputs") == before and model_never_runs == []


@pytest.mark.parametrize("command", ["synthesize", "inpaint", "vary"])
def test_a_preview_named_like_an_input_is_refused(command, tmp_path, capsys, model_never_runs):
    # The preview of --out scan.nii.gz is scan_preview.nii: here that is the image (or the first contrast).
    inputs = write_inputs(tmp_path / "inputs")
    renamed = {"t1": "scan_preview.nii", "t2": "scan_preview.nii"}
    for name, new in renamed.items():
        if (command == "synthesize") == (name == "t2"):
            inputs[name] = inputs[name].rename(inputs[name].with_name(new))
    before = snapshot(tmp_path / "inputs")
    argv = task_argv(command, inputs, tmp_path / "inputs" / "scan.nii.gz", "--overwrite")
    argv[argv.index("--progress") + 1] = "jsonl"
    assert main([*argv, "--preview-every", "1"]) == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert error["event"] == "error" and "scan_preview.nii is the input" in error["message"], error
    assert snapshot(tmp_path / "inputs") == before and model_never_runs == []


# ------------------------------------------------------------------------------------- existing outputs


@pytest.mark.parametrize("existing", ["result.nii.gz", "result.json", "result_preview.nii"])
@pytest.mark.parametrize("command", ["synthesize", "inpaint", "vary"])
def test_an_existing_output_needs_overwrite(command, existing, inputs, tmp_path, capsys, model_never_runs):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / existing).write_bytes(PRECIOUS)
    argv = task_argv(command, inputs, out_dir / "result.nii.gz", "--preview-every", "1")
    argv[argv.index("--progress") + 1] = "jsonl"
    assert main(argv) == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert error["event"] == "error" and "already exist" in error["message"] and "--overwrite" in error["message"]
    assert existing in error["message"]
    assert snapshot(out_dir) == {existing: PRECIOUS} and model_never_runs == []


@pytest.mark.parametrize("command", ["synthesize", "inpaint", "vary"])
def test_overwrite_replaces_the_volume_its_sidecar_and_preview(command, inputs, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    names = ["result.nii.gz", "result.json", "result_preview.nii"]
    for name in names:
        (out_dir / name).write_bytes(PRECIOUS)
    before = snapshot(tmp_path / "inputs")
    argv = task_argv(command, inputs, out_dir / "result.nii.gz", "--overwrite", "--preview-every", "1")
    argv[argv.index("--progress") + 1] = "jsonl"
    assert main(argv) == 0, capsys.readouterr()
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names)  # no temporary file left
    array, affine = load_volume(out_dir / "result.nii.gz")
    assert array.shape == (SIZE,) * 3 and np.allclose(affine, phantom_affine(SIZE), atol=1e-5)
    assert json.loads((out_dir / "result.json").read_text())["file"] == "result.nii.gz"
    assert load_volume(out_dir / "result_preview.nii")[0].shape == (SIZE,) * 3
    assert snapshot(tmp_path / "inputs") == before


# ------------------------------------------------------------------------------------------ format, folder


@pytest.mark.parametrize("command", ["synthesize", "inpaint", "vary"])
@pytest.mark.parametrize(("out", "message"), [("x.png", "cannot tell the file format"),
                                              ("file/x.nii.gz", "is a file, not a folder"),
                                              ("folder.nii.gz", "is a folder")])  # fmt: skip
def test_an_unusable_out_fails_before_the_model(command, out, message, inputs, tmp_path, capsys, model_never_runs):
    (tmp_path / "file").write_text("a file where a folder should be")
    (tmp_path / "folder.nii.gz").mkdir()
    # A model that does not exist: the output's error must come first, before any look-up of the model.
    assert main(task_argv(command, inputs, tmp_path / out, model="no_such_model")) == 2
    err = capsys.readouterr().err
    assert message in err and "no_such_model" not in err, err
    assert model_never_runs == [] and not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------ sample --prefix


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model().save(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.mark.parametrize("prefix", ["../escape", "a/b", "..", "a\\b", "ABSOLUTE"])
def test_sample_prefix_must_be_a_plain_name(prefix, tmp_path, model_file, capsys, monkeypatch):
    reached = []
    monkeypatch.setattr("wdmcore.tasks.generate.generate", lambda *a, **k: reached.append(1))
    prefix = str(tmp_path / "abs" / "x") if prefix == "ABSOLUTE" else prefix
    out = tmp_path / "out"
    code = main(["sample", "--model", str(model_file), "--steps", "1", "--out", str(out), "--prefix", prefix,
                 "--progress", "none", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--prefix" in err and "not a plain file name" in err, err
    assert reached == [] and sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere


def test_sample_refuses_an_existing_preview_without_overwrite(tmp_path, model_file, capsys):
    previews = tmp_path / "previews"
    previews.mkdir()
    (previews / "sample_preview_seed0000.nii").write_bytes(PRECIOUS)
    argv = ["sample", "--model", str(model_file), "--steps", "2", "--out", str(tmp_path), "--progress", "jsonl",
            "--preview-every", "1", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    assert "sample_preview_seed0000.nii" in capsys.readouterr().out
    assert snapshot(tmp_path) == {"previews/sample_preview_seed0000.nii": PRECIOUS}
    assert main([*argv, "--overwrite"]) == 0
    assert (previews / "sample_preview_seed0000.nii").read_bytes() != PRECIOUS


# ------------------------------------------------------------------------------------------------- worker


def run(worker, request):  # noqa: F811
    """Send ``request`` and collect its events until it ends."""
    worker.send(request)
    events = []
    while not events or not (events[-1]["event"] in ("done", "error", "cancelled") and events[-1].get("id") == "j"):
        events.append(worker.next())
    return events


def _worker_request(task: str, inputs: dict[str, Path], **fields) -> dict:
    if task == "synthesize":
        request = {"model": "demo_phantom_synthesize_32", "inputs": {n: str(inputs[n]) for n in ("t2", "flair", "pd")},
                   "sampler": "ddim", "steps": 2}  # fmt: skip
    elif task == "inpaint":
        request = {"model": "demo_phantom_inpaint_32", "image": str(inputs["t1"]), "mask": str(inputs["mask"])}
    else:
        request = {"model": "demo_phantom_64", "image": str(inputs["t1"]), "strength": 0.1, "steps": 10}
    return {"type": task, "id": "j", **request, **fields}


def test_worker_names_must_be_plain_and_outputs_never_inputs(worker, tmp_path):  # noqa: F811
    inputs = write_inputs(tmp_path / "inputs")
    (tmp_path / "linked").symlink_to(tmp_path / "inputs")
    os.link(inputs["t1"], tmp_path / "hard.nii.gz")
    before = snapshot(tmp_path / "inputs")
    out = str(tmp_path / "out")
    refused = [
        (_worker_request("vary", inputs, output_dir=out, name="../escape"), "not a plain file name"),
        (_worker_request("inpaint", inputs, output_dir=out, name="a/b"), "not a plain file name"),
        (_worker_request("synthesize", inputs, output_dir=out, name=str(tmp_path / "abs")), "not a plain file name"),
        (_worker_request("vary", inputs, output_dir=out, name=".."), "not a plain file name"),
        ({"type": "generate", "id": "j", "model": "demo_phantom_64", "output_dir": out, "name": "../up"},
         "not a plain file name"),
        (_worker_request("vary", inputs, output_dir=str(tmp_path / "inputs"), name="t1", overwrite=True),
         "is the input 'image'"),
        (_worker_request("inpaint", inputs, output_dir=str(tmp_path / "linked"), name="mask", overwrite=True),
         "is the input 'mask'"),
        (_worker_request("synthesize", inputs, output_dir=str(tmp_path / "inputs" / ".." / "inputs"), name="flair"),
         "is the input input 'flair'"),
        (_worker_request("inpaint", inputs, output_dir=str(tmp_path), name="hard", overwrite=True),
         "is the input 'image'"),
    ]  # fmt: skip
    for request, message in refused:
        events = run(worker, request)
        error = events[-1]
        assert error["event"] == "error" and message in error["message"], (request, error)
        assert not [e for e in events if e["event"] in ("result", "loaded")]
        worker.send({"type": "ping", "id": "alive"})
        assert worker.next("pong")["id"] == "alive"
    assert snapshot(tmp_path / "inputs") == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.nii.gz", "inputs", "linked"]


def test_worker_refuses_existing_outputs_unless_the_request_says_overwrite(worker, tmp_path):  # noqa: F811
    inputs = write_inputs(tmp_path / "inputs")
    out = tmp_path / "out"
    out.mkdir()
    (out / "filled.nii.gz").write_bytes(PRECIOUS)
    request = _worker_request("inpaint", inputs, output_dir=str(out), name="filled")
    error = run(worker, request)[-1]
    assert error["event"] == "error" and "already exist" in error["message"] and '"overwrite": true' in error["message"]
    assert (out / "filled.nii.gz").read_bytes() == PRECIOUS
    (out / "preview.npy").write_bytes(PRECIOUS)  # the preview file is an output too
    error = run(worker, {**request, "name": "other", "preview_every": 1})[-1]
    assert error["event"] == "error" and "preview.npy" in error["message"], error
    done = run(worker, {**request, "overwrite": True})[-1]
    assert done["event"] == "done", done
    assert load_volume(out / "filled.nii.gz")[0].shape == (SIZE,) * 3
    assert sorted(p.name for p in out.iterdir()) == ["filled.nii.gz", "preview.npy"]  # no temporary file left
