"""Several draws of a task (``samples=N``): the mean and the per-voxel standard deviation in the input's grid, the
draws on request, through the Python API, ``wdm synthesize|inpaint|vary --samples`` and the worker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_reliability_worker import worker  # noqa: F401 - the fixture: a real worker process

import wdmcore
from wdmcore.cli.main import main
from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import phantom_affine
from wdmcore.errors import ConfigError
from wdmcore.tasks.generate import resolve_model
from wdmcore.tasks.samples import RunningMoments, collect_draws, draws_per_batch, sample_seeds
from wdmcore.volumes.reading import load_volume
from wdmcore.worker import write_nifti

SIZE = 32
AFFINE = phantom_affine(SIZE)
SOURCES = ("t2", "flair", "pd")


@pytest.fixture(scope="module")
def phantom():
    contrasts, lesion = paired_phantom(SIZE, 4242, 0)  # not the training seed (0)
    return contrasts, lesion


@pytest.fixture(scope="module")
def synth_model():
    return resolve_model("demo_phantom_synthesize_32")


@pytest.fixture(scope="module")
def inpaint_model():
    return resolve_model("demo_phantom_inpaint_32")


# ------------------------------------------------------------------------------------------- the reduction


def test_running_moments_match_the_mean_and_sample_std_of_all_draws():
    rng = np.random.default_rng(3)
    draws = [rng.normal(1e3, 1.0 + i, size=(4, 5, 6)) for i in range(7)]  # a large offset: naive sums lose digits
    moments = RunningMoments()
    for d in draws:
        moments.add(d)
    np.testing.assert_allclose(moments.mean(), np.mean(draws, axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(moments.std(), np.std(draws, axis=0, ddof=1), rtol=1e-9)


def test_collect_draws_keeps_no_draw_unless_asked_and_gives_no_std_for_one_draw():
    def draw(seeds):
        return [np.full((2, 2, 2), float(s)) for s in seeds]

    mean, std, draws = collect_draws(draw, [4, 5, 6], 2, keep=False)
    assert draws is None and mean.dtype == np.float32
    np.testing.assert_allclose(mean, 5.0)
    np.testing.assert_allclose(std, 1.0)
    mean, std, draws = collect_draws(draw, [4], 1, keep=True)
    assert std is None and len(draws) == 1
    np.testing.assert_allclose(mean, 4.0)


@pytest.mark.parametrize("samples", [0, -1, 1.5, True, 1001])
def test_a_sample_count_out_of_range_is_refused(samples):
    with pytest.raises(ConfigError, match="samples"):
        sample_seeds(0, samples)


def test_seeds_near_the_largest_seed_are_refused_before_they_overflow():
    with pytest.raises(ConfigError, match="seed"):
        sample_seeds(2**64 - 2, 3)
    assert sample_seeds(2**64 - 3, 3)[-1] == 2**64 - 1


def test_the_batch_follows_the_free_memory():
    import torch

    assert draws_per_batch(32**3, 16, torch.device("cpu")) == 16  # 32^3 draws: megabytes each
    assert draws_per_batch(10**12, 16, torch.device("cpu")) == 1  # a draw larger than any memory: one at a time


# ------------------------------------------------------------------------------------------- the tasks


def test_synthesis_of_several_draws_is_the_mean_of_the_single_draws(phantom, synth_model):
    contrasts, _ = phantom
    inputs = {s: (contrasts[s], AFFINE) for s in SOURCES}
    result = wdmcore.synthesize(synth_model, inputs, seed=5, samples=3, keep_samples=True, sampler="ddim", steps=3)
    singles = [wdmcore.synthesize(synth_model, inputs, seed=s, sampler="ddim", steps=3).array for s in (5, 6, 7)]
    # Drawn together in one batch, each draw equals the run of its seed alone.
    for kept, single in zip(result.draws, singles, strict=True):
        np.testing.assert_allclose(kept, single, atol=1e-5)
    np.testing.assert_allclose(result.array, np.mean(singles, axis=0), atol=1e-5)
    np.testing.assert_allclose(result.std, np.std(singles, axis=0, ddof=1), atol=1e-5)
    assert result.std.shape == (SIZE,) * 3 and float(result.std.max()) > 0
    assert result.meta["samples"] == 3 and result.meta["seeds"] == [5, 6, 7]
    np.testing.assert_array_equal(result.affine, AFFINE)


def test_one_sample_is_todays_result(phantom, synth_model):
    contrasts, _ = phantom
    inputs = {s: (contrasts[s], AFFINE) for s in SOURCES}
    result = wdmcore.synthesize(synth_model, inputs, seed=2, sampler="ddim", steps=2)
    assert result.std is None and result.draws is None and "samples" not in result.meta


def test_inpainting_draws_vary_inside_the_mask_only(phantom, inpaint_model):
    contrasts, lesion = phantom
    image = contrasts["t1"].astype(np.float64)
    result = wdmcore.inpaint(inpaint_model, (image, AFFINE), (lesion.astype(np.float32), AFFINE), seed=1, samples=3)
    np.testing.assert_array_equal(result.array[~lesion], image[~lesion].astype(np.float32))
    assert float(np.abs(result.std[~lesion]).max()) == 0.0
    assert float(result.std[lesion].mean()) > 0


def test_variations_of_several_draws_come_from_consecutive_seeds(phantom):
    contrasts, _ = phantom
    model = resolve_model("demo_phantom_64")
    image = (contrasts["t1"], AFFINE)
    result = wdmcore.vary(model, image, strength=0.2, seed=3, samples=2, keep_samples=True, steps=10)
    alone = wdmcore.vary(model, image, strength=0.2, seed=4, steps=10)
    np.testing.assert_allclose(result.draws[1], alone.array, atol=1e-4)
    np.testing.assert_allclose(result.std, np.std(result.draws, axis=0, ddof=1), atol=1e-5)


# ------------------------------------------------------------------------------------------- the command


@pytest.fixture()
def synth_files(tmp_path, phantom):
    contrasts, _ = phantom
    return {s: str(write_nifti(tmp_path / f"{s}.nii.gz", contrasts[s], AFFINE)) for s in SOURCES}


def synth_command(files, out, *extra):
    inputs = [arg for s in SOURCES for arg in (f"--{s}", files[s])]
    return ["synthesize", "--model", "demo_phantom_synthesize_32", *inputs, "--out", str(out),
            "--sampler", "ddim", "--steps", "2", "--device", "cpu", "--progress", "none", *extra]  # fmt: skip


def test_the_command_writes_the_mean_the_std_and_the_kept_draws(tmp_path, synth_files):
    out = tmp_path / "t1.nii.gz"
    assert main(synth_command(synth_files, out, "--samples", "3", "--seed", "9", "--keep-samples")) == 0
    names = {"t1.nii.gz", "t1.json", "t1_std.nii.gz", "t1_sample0.nii.gz", "t1_sample1.nii.gz", "t1_sample2.nii.gz"}
    assert names <= {p.name for p in tmp_path.iterdir()}
    meta = json.loads((tmp_path / "t1.json").read_text())
    assert meta["samples"] == 3 and meta["seeds"] == [9, 10, 11] and meta["files"]["std"] == "t1_std.nii.gz"
    draws = [load_volume(tmp_path / f"t1_sample{i}.nii.gz")[0] for i in range(3)]
    np.testing.assert_allclose(load_volume(out)[0], np.mean(draws, axis=0), atol=1e-5)
    std, affine = load_volume(tmp_path / "t1_std.nii.gz")
    np.testing.assert_allclose(std, np.std(draws, axis=0, ddof=1), atol=1e-5)
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)


@pytest.mark.parametrize("existing", ["t1_std.nii.gz", "t1_sample1.nii.gz"])
def test_an_existing_std_or_draw_file_stops_the_command_before_any_work(tmp_path, synth_files, existing, capsys):
    (tmp_path / existing).write_bytes(b"keep me")
    out = tmp_path / "t1.nii.gz"
    assert main(synth_command(synth_files, out, "--samples", "2", "--keep-samples")) == 2
    assert existing in capsys.readouterr().err
    assert (tmp_path / existing).read_bytes() == b"keep me" and not out.exists()


def test_a_std_file_that_would_replace_an_input_is_refused_even_with_overwrite(tmp_path, synth_files, capsys):
    flair = tmp_path / "t1_std.nii.gz"  # an input named as the uncertainty map of --out t1.nii.gz
    flair.write_bytes((tmp_path / "flair.nii.gz").read_bytes())
    before = flair.read_bytes()
    command = synth_command({**synth_files, "flair": str(flair)}, tmp_path / "t1.nii.gz", "--samples", "2")
    assert main([*command, "--overwrite"]) == 2
    assert "--flair" in capsys.readouterr().err
    assert flair.read_bytes() == before and not (tmp_path / "t1.nii.gz").exists()


# ------------------------------------------------------------------------------------------- the worker


def test_the_worker_writes_the_mean_and_its_std_per_volume(worker, tmp_path, phantom):  # noqa: F811
    contrasts, lesion = phantom
    image = str(write_nifti(tmp_path / "t1.nii.gz", contrasts["t1"], AFFINE))
    mask = str(write_nifti(tmp_path / "mask.nii.gz", lesion.astype(np.float32), AFFINE))
    out = tmp_path / "out"
    worker.send({"type": "inpaint", "id": "m1", "model": "demo_phantom_inpaint_32", "image": image, "mask": mask,
                 "seed": 2, "samples": 3, "keep_samples": True, "output_dir": str(out), "name": "filled"})  # fmt: skip
    events = []
    while not events or events[-1]["event"] not in ("done", "error"):
        events.append(worker.next())
    assert events[-1]["event"] == "done", events[-1]
    (result,) = [e for e in events if e["event"] == "result"]
    assert result["meta"]["seeds"] == [2, 3, 4]
    assert result["std_path"].endswith("filled_std.nii.gz") and len(result["sample_paths"]) == 3
    std = load_volume(result["std_path"])[0]
    assert float(std[~lesion].max()) == 0.0 and float(std[lesion].max()) > 0
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.parametrize(
    ("fields", "words"),
    [({"samples": 0}, "'samples'"), ({"samples": "4"}, "'samples'"), ({"keep_samples": "yes"}, "'keep_samples'")],
)
def test_the_worker_refuses_a_wrong_samples_field(worker, tmp_path, fields, words):  # noqa: F811
    worker.send({"type": "vary", "id": "b1", "model": "demo_phantom_64", "image": str(tmp_path / "x.nii.gz"),
                 "output_dir": str(tmp_path), **fields})  # fmt: skip
    event = worker.next()
    while event["event"] != "error":
        event = worker.next()
    assert event["kind"] == "BadRequest" and words in event["message"]
