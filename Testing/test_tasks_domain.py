"""Tasks at the model's spacing and warnings about inputs: variations resampled into the model's grid and back
(the whole head varies; outside the model's field of view nothing changes, and the user is told), one warning
when a model meets data it was not made for, and a warning for a mask lying in the image's background."""

import numpy as np
import pytest
import torch

import wdmcore
from wdmcore.data.phantoms import generate_phantom, phantom_affine
from wdmcore.models.checkpoints import save_model_file
from wdmcore.networks import NetworkConfig, build_network
from wdmcore.tasks.domain import domain_notes, mask_in_background
from wdmcore.tasks.inputs import read_input
from wdmcore.tasks.model_grid import ModelGrid


def _tiny(tmp_path_factory, card, seed=1):
    torch.manual_seed(seed)
    network = build_network(NetworkConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4))
    for p in network.parameters():
        p.data += 0.05 * torch.randn_like(p)
    path = save_model_file(tmp_path_factory.mktemp("m") / "tiny.safetensors", network, {"image_size": 16, **card})
    return wdmcore.load_model(path)


@pytest.fixture(scope="module")
def mri_2mm(tmp_path_factory):
    return _tiny(tmp_path_factory, {"spacing_mm": [2.0, 2.0, 2.0], "modality": "MRI", "diffusion": {"steps": 100}})


def _warnings(events):
    return [e for e in events if e["event"] == "warning"]


def test_vary_of_a_1mm_head_with_the_3_75mm_demo_model_changes_the_whole_head():
    size = 200  # a 1 mm phantom head (200 mm cube), inside the model's 240 mm field of view ...
    head_image = generate_phantom(size, 5).astype(np.float64)
    # ... and 30 mm of faint texture before and after it along the first axis: 260 mm, 20 of them out of view.
    rng = np.random.default_rng(0)
    image = np.concatenate([0.1 * rng.random((30, size, size)), head_image, 0.1 * rng.random((30, size, size))])
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    events = []
    out = wdmcore.vary("demo_phantom_64", (image, affine), strength=0.3, seed=0, steps=4, on_progress=events.append)
    assert out.array.shape == image.shape and np.array_equal(out.affine, affine)
    change = np.abs(out.array - image)[30:230]
    head = head_image > 0
    # Before, only the central 64^3 input voxels (64 mm of this head) could change. Now every part of the head does:
    # the mean change in each eighth of the head's cube is of the size of the change in the central 64^3 voxels.
    centre = np.zeros(head.shape, dtype=bool)
    centre[68:132, 68:132, 68:132] = True
    central = change[head & centre].mean()
    assert central > 0.01
    half = size // 2
    for octant in np.ndindex(2, 2, 2):
        part = tuple(slice(o * half, (o + 1) * half) for o in octant)
        outer = head[part] & ~centre[part]
        assert change[part][outer].mean() > 0.3 * central, octant
    # The model's grid: its 64 voxels of 3.75 mm along each axis, centred: it sees input voxels 10..249 of the first.
    grid = ModelGrid.centred(wdmcore.load_model("demo_phantom_64"), affine, image.shape)
    np.testing.assert_allclose(grid.ratio, 3.75)
    assert grid.covered() == (slice(10, 250), slice(0, size), slice(0, size))
    assert out.meta["model_grid"].startswith("64 x 64 x 64 voxels of 3.75 mm")
    # Outside the field of view: the input, exactly, and the user is told; the demo model says it is one.
    np.testing.assert_array_equal(out.array[:10], image[:10].astype(np.float32))
    np.testing.assert_array_equal(out.array[250:], image[250:].astype(np.float32))
    assert np.abs(out.array[10:30] - image[10:30]).mean() > 0.001  # the texture in view varies too
    warnings = {w["kind"]: w["message"] for w in _warnings(events)}
    assert sorted(warnings) == ["domain", "field-of-view"]
    assert "demonstration model trained on synthetic phantoms" in warnings["domain"]
    assert "92% of its voxels" in warnings["field-of-view"] and "left unchanged" in warnings["field-of-view"]


def test_vary_leaves_the_image_outside_the_models_field_of_view_unchanged_and_says_so(mri_2mm):
    shape = (48, 20, 18)  # 1 mm voxels: 48 mm along the first axis, the model sees 16 x 2 = 32 mm
    rng = np.random.default_rng(3)
    image = 100 + 20 * rng.random(shape)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    events = []
    out = wdmcore.vary(mri_2mm, (image, affine), strength=0.6, seed=1, sampler="ancestral", steps=5,
                       on_progress=events.append)  # fmt: skip
    # Model voxel centres at input 8.5, 10.5, ..., 38.5: its voxels cover the input voxels 8..39.
    np.testing.assert_array_equal(out.array[:8], image[:8].astype(np.float32))
    np.testing.assert_array_equal(out.array[40:], image[40:].astype(np.float32))
    changed = np.abs(out.array[8:40] - image[8:40])
    assert changed[:4].mean() > 0.5 and changed[-4:].mean() > 0.5 and changed.min(axis=(1, 2)).max() > 0
    (warning,) = _warnings(events)
    assert warning["kind"] == "field-of-view" and "67% of its voxels" in warning["message"]
    assert "16 x 16 x 16 voxels of 2 mm (32 x 32 x 32 mm)" in warning["message"]
    assert "left unchanged" in warning["message"]


def test_model_grid_copies_exactly_at_the_input_spacing_and_interpolates_linearly_otherwise(mri_2mm):
    i, j, k = np.indices((40, 30, 20), dtype=np.float64)
    image = 3 * i - 2 * j + 5 * k + 7  # linear: linear interpolation there and back is exact
    same = ModelGrid.centred(mri_2mm, np.diag([2.0, 2.0, 2.0, 1.0]), image.shape)
    assert np.array_equal(same.ratio, np.ones(3)) and same.covered() == (slice(12, 28), slice(7, 23), slice(2, 18))
    np.testing.assert_array_equal(same.sample(image), image[12:28, 7:23, 2:18])
    np.testing.assert_array_equal(same.back(same.sample(image)), image[same.covered()])
    i, j, k = np.indices((70, 40, 20), dtype=np.float64)
    image = 3 * i - 2 * j + 5 * k + 7
    fine = ModelGrid.centred(mri_2mm, np.diag([0.5, 1.0, 4.0, 1.0]), image.shape)  # 4, 2, 0.5 voxels per model voxel
    np.testing.assert_allclose(fine.ratio, [4.0, 2.0, 0.5])
    sampled = fine.sample(image)
    assert sampled.shape == (16, 16, 16)
    np.testing.assert_allclose(sampled[1:, 0, 0] - sampled[:-1, 0, 0], 3 * 4.0)  # the model's voxels are 2 mm apart
    box = fine.covered()
    back = fine.back(sampled)
    assert back.shape == image[box].shape
    # Between the model's outermost voxel centres the round trip is exact (linear); beyond them, its edge values.
    between = np.ix_(*[np.abs((np.arange(b.start, b.stop) - fine.start[a]) / fine.ratio[a] - 7.5) <= 7.5
                       for a, b in enumerate(box)])  # fmt: skip
    np.testing.assert_allclose(back[between], image[box][between], atol=1e-9)


def test_domain_notes_say_when_a_model_meets_data_it_was_not_made_for(mri_2mm):
    rng = np.random.default_rng(0)
    mri = 400 * rng.random((20, 20, 20))
    at_2mm = np.diag([2.0, 2.0, 2.0, 1.0])
    assert domain_notes(mri_2mm, [read_input((mri, at_2mm), "image")], at_model_spacing=False) == []
    # Voxels 3.75 times finer than the card's, on the input's own voxels (synthesis, fastWDM3D): another scale.
    fine = read_input((mri, np.diag([0.8, 0.8, 0.8, 1.0])), "t2")
    (note,) = domain_notes(mri_2mm, [fine], at_model_spacing=False)
    assert "0.8 mm and the model's 2 mm" in note and "resample the image to 2 mm" in note
    assert domain_notes(mri_2mm, [fine], at_model_spacing=True) == []  # resampled into the model's grid: fine
    coarse = read_input((mri, np.diag([2.0, 2.0, 5.0, 1.0])), "image")
    (note,) = domain_notes(mri_2mm, [coarse], at_model_spacing=True)
    assert "2 x 2 x 5 mm" in note and "blurrier" in note
    # A CT in Hounsfield units given to an MRI model.
    ct = np.full((20, 20, 20), -1000.0)
    ct[5:15, 5:15, 5:15] = 40 + 30 * rng.random((10, 10, 10))
    (note,) = domain_notes(mri_2mm, [read_input((ct, at_2mm), "image")], at_model_spacing=True)
    assert "looks like CT in Hounsfield units" in note and "made for MRI" in note
    # The demo models say what they are even on the phantoms they were made for.
    demo = wdmcore.load_model("demo_phantom_inpaint_32")
    phantom = read_input((generate_phantom(32, 1), phantom_affine(32)), "image")
    (note,) = domain_notes(demo, [phantom], at_model_spacing=False)
    assert note.startswith("demo_phantom_inpaint_32 is a demonstration model trained on synthetic phantoms")


def test_the_cli_prints_one_warning_line_on_stderr(tmp_path, mri_2mm, capsys):
    from wdmcore.cli.main import main
    from wdmcore.volumes.writing import save_nifti

    ct = np.full((16, 16, 16), -1000.0, dtype=np.float32)
    ct[4:12, 4:12, 4:12] = 50
    image = save_nifti(ct, np.diag([2.0, 2.0, 2.0, 1.0]), tmp_path / "ct.nii.gz")
    model = mri_2mm.save(tmp_path / "mri.safetensors")
    argv = ["vary", "--model", str(model), "--image", str(image), "--strength", "0.2", "--sampler", "ancestral",
            "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "v.nii.gz")]  # fmt: skip
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(lines) == 1 and "looks like CT" in lines[0], lines


def test_a_mask_lying_in_the_background_is_filled_with_a_warning(mri_2mm):
    image = np.zeros((24, 24, 24))
    image[6:18, 6:18, 6:18] = 50 + np.random.default_rng(1).random((12, 12, 12))
    in_air = np.zeros(image.shape)
    in_air[1:4, 1:4, 19:22] = 1
    on_object = np.zeros(image.shape)
    on_object[9:13, 9:13, 9:13] = 1
    voided = image.copy()
    voided[on_object > 0] = 0  # a voided lesion: background values inside, tissue around it
    assert mask_in_background(image, in_air > 0)
    assert not mask_in_background(image, on_object > 0) and not mask_in_background(voided, on_object > 0)
    at_2mm = np.diag([2.0, 2.0, 2.0, 1.0])
    said = {}
    for name, mask in (("in air", in_air), ("on the object", on_object)):
        events = []
        out = wdmcore.inpaint(mri_2mm, (image, at_2mm), (mask, at_2mm), steps=2, resample=1,
                              on_progress=events.append)  # fmt: skip
        said[name] = [w["message"] for w in _warnings(events) if w["kind"] == "mask-in-background"]
        np.testing.assert_array_equal(out.array[mask == 0], image[mask == 0].astype(np.float32))
    assert said["on the object"] == [] and len(said["in air"]) == 1
    assert "lies in the image's background" in said["in air"][0]


def test_vary_of_an_image_much_smaller_than_the_models_window(mri_2mm):
    image = np.zeros((13, 13, 13))  # 13 mm of 1 mm voxels in the model's 32 mm window
    # A small object: 0.4 % of the image but one voxel (0.02 %) of the model's grid, whose quantiles alone would
    # make the image look constant.
    image[5:7, 5:7, 5:7] = 80
    events = []
    out = wdmcore.vary(mri_2mm, (image, np.eye(4)), strength=0.5, seed=0, sampler="ancestral", steps=4,
                       on_progress=events.append)  # fmt: skip
    assert out.array.shape == image.shape and np.isfinite(out.array).all()
    (warning,) = _warnings(events)
    assert "the image covers 13 x 13 x 13 mm of the model's 32 x 32 x 32 mm window" in warning["message"]


def test_repaint_of_an_image_much_smaller_than_the_models_window(mri_2mm):
    image = np.zeros((13, 13, 13))  # as above: one voxel of the model's grid holds the object
    image[5:7, 5:7, 5:7] = 80
    mask = np.zeros(image.shape)
    mask[6, 6, 6] = 1
    out = wdmcore.inpaint(mri_2mm, (image, np.eye(4)), (mask, np.eye(4)), steps=2, resample=1)
    assert np.isfinite(out.array).all()
    np.testing.assert_array_equal(out.array[mask == 0], image[mask == 0].astype(np.float32))
