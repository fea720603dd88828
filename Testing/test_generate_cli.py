"""`wdm sample`: files, sidecars, JSON-lines events, previews; the no-argument demo run."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from test_generate import tiny_model

import wdmcore
from wdmcore.cli.main import main
from wdmcore.tasks.generate import DEFAULT_SAMPLER, DEFAULT_STEPS, PREVIEW_SAMPLER, PREVIEW_STEPS, generate

DEMO_ASSET = Path(wdmcore.__file__).parent / "assets" / "demo_phantom_64.safetensors"
AFFINE = [[3.75, 0, 0, -118.125], [0, 3.75, 0, -118.125], [0, 0, 3.75, -118.125], [0, 0, 0, 1]]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    card = {"geometry": {"affine": AFFINE, "spacing_mm": [3.75] * 3, "known": True}}
    return tiny_model(card=card).save(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_sample_writes_nifti_with_geometry_and_jsonl_events(tmp_path, model_file, capsys):
    out = tmp_path / "out"
    code = main(
        ["sample", "--model", str(model_file), "--num", "2", "--seed", "5", "--steps", "3", "--batch-size", "2"]
        + ["--out", str(out), "--progress", "jsonl", "--preview-every", "2"]
    )
    assert code == 0
    events = _events(capsys.readouterr().out)
    kinds = [e["event"] for e in events]
    assert kinds.count("progress") == 3 and kinds.count("result") == 2 and kinds.count("preview") == 4
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [2, 4, 6] and progress[-1]["total"] == 6
    results = [e for e in events if e["event"] == "result"]
    assert [e["seed"] for e in results] == [5, 6]
    for result in results:
        path = Path(result["path"])
        assert path.name == f"sample_seed{result['seed']:04d}.nii.gz" and path.parent == out.resolve()
        image = nib.load(path)
        np.testing.assert_allclose(image.affine, AFFINE)
        assert image.shape == (16, 16, 16) and image.get_fdata().min() >= 0 and image.get_fdata().max() <= 1
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text(encoding="utf-8"))
        assert sidecar["sampler"] == DEFAULT_SAMPLER and sidecar["steps"] == 3 and sidecar["seed"] == result["seed"]
        assert sidecar["geometry_known"] is True and sidecar["model"] == "tiny"
    # The files hold exactly what the Python API returns for the same seeds.
    again = generate(str(model_file), 1, seed=6, steps=3)[0]
    np.testing.assert_allclose(nib.load(results[1]["path"]).get_fdata(), again.array, atol=1e-6)
    previews = sorted(p.name for p in (out / "previews").iterdir())
    assert previews == ["sample_preview_seed0005.nii", "sample_preview_seed0006.nii"]


def test_sample_nrrd_and_errors(tmp_path, model_file, capsys):
    code = main(["sample", "--model", str(model_file), "--steps", "2", "--sampler", "unipc"]
                + ["--out", str(tmp_path), "--format", "nrrd", "--progress", "none", "--seed", "3"])  # fmt: skip
    assert code == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "sample_seed0003.nrrd"
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetOrigin(), [118.125, 118.125, -118.125])  # LPS
    np.testing.assert_allclose(image.GetSpacing(), [3.75] * 3)
    assert json.loads((tmp_path / "sample_seed0003.json").read_text(encoding="utf-8"))["sampler"] == "unipc"

    code = main(["sample", "--model", str(tmp_path / "nope.safetensors"), "--progress", "jsonl"])
    error = _events(capsys.readouterr().out)[-1]
    assert code == 2 and error["event"] == "error" and "not found" in error["message"]
    with pytest.raises(SystemExit):
        main(["sample", "--sampler", "euler"])


@pytest.mark.skipif(not DEMO_ASSET.is_file(), reason=f"the bundled demo model {DEMO_ASSET.name} is not in this tree")
def test_sample_without_arguments_writes_one_demo_volume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sample"]) == 0
    files = sorted(p.name for p in (tmp_path / "wdm_samples").iterdir())
    assert files == ["sample_seed0000.json", "sample_seed0000.nii.gz"]
    sidecar = json.loads((tmp_path / "wdm_samples" / "sample_seed0000.json").read_text(encoding="utf-8"))
    assert sidecar["model"] and sidecar["sampler"] == DEFAULT_SAMPLER
    assert sidecar["steps"] == DEFAULT_STEPS[DEFAULT_SAMPLER]
    assert sidecar["device"] == "cpu" or sidecar["device"].startswith("cuda")  # --device auto
    image = nib.load(tmp_path / "wdm_samples" / "sample_seed0000.nii.gz")
    assert image.shape == (64, 64, 64) and not np.allclose(image.affine, np.eye(4))


def test_the_default_output_folder_is_ignored_by_git():
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    # `wdm sample` without --out (and scripts/demo.sh) writes into ./wdm_samples.
    result = subprocess.run(["git", "check-ignore", "-q", "wdm_samples/sample_seed0000.nii.gz"], cwd=root)
    assert result.returncode == 0


def test_demo_script_runs_twice_and_replaces_only_its_own_output(tmp_path):
    # scripts/demo.sh is the README's first command: a second run must succeed (it replaces its own output), and
    # with a user's own --out it keeps the rule of `wdm sample` (existing files are refused).
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = Path(__file__).resolve().parents[1] / "scripts" / "demo.sh"
    env = {**os.environ, "WDM_VENV": sys.prefix, "WDM_SKIP_SETUP": "1", "WDM_DEMO_OUT": str(tmp_path / "demo")}
    if not (Path(sys.prefix) / "bin" / "wdm").exists():
        pytest.skip("the wdm command is not installed in this environment")
    args = ["bash", str(script), "--steps", "2", "--progress", "none"]
    for _ in range(2):
        run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert "phantom model" in run.stderr
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["sample_seed0000.json", "sample_seed0000.nii.gz"]
    own = tmp_path / "own"
    own.mkdir()
    (own / "sample_seed0000.nii.gz").write_bytes(b"keep me")
    run = subprocess.run([*args, "--out", str(own)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "already exist" in run.stderr
    assert (own / "sample_seed0000.nii.gz").read_bytes() == b"keep me"


def test_sample_at_the_preview_quality_runs_its_calls(tmp_path, model_file, capsys):
    out = tmp_path / "preview"
    preview = ["sample", "--model", str(model_file), "--quality", "preview"]
    assert main([*preview, "--out", str(out), "--progress", "none"]) == 0
    sidecar = json.loads((out / "sample_seed0000.json").read_text(encoding="utf-8"))
    assert (sidecar["sampler"], sidecar["steps"]) == (PREVIEW_SAMPLER, PREVIEW_STEPS)
    # --steps still wins; a quality that is not a level, or a preview of another sampler, is refused.
    assert main(["sample", "--model", str(model_file), "--quality", "preview", "--steps", "3", "--out", str(out / "3"),
                 "--progress", "none"]) == 0  # fmt: skip
    assert json.loads((out / "3" / "sample_seed0000.json").read_text(encoding="utf-8"))["steps"] == 3
    assert main(["sample", "--model", str(model_file), "--quality", "preview", "--sampler", "ddim", "--out",
                 str(out / "ddim")]) == 2  # fmt: skip
    assert "preview quality" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--quality", "best"])
