"""The released BraTS/LIDC presets (bit-exact) and the general pipeline (geometry and intensities)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from wdmcore.data import PreprocessConfig, load_volume, preprocess
from wdmcore.data.discovery import Case
from wdmcore.errors import ConfigError, DataError, InputShapeError

BRATS_AFFINE = np.array(
    [
        [-1.0, 0.0, 0.0, 120.0],
        [0.0, -1.0, 0.0, 119.0],
        [0.0, 0.0, 1.0, -77.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _save(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture(scope="module")
def brats_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    rng = np.random.default_rng(0)
    # Known answer: a constant cube of 100 in a zero volume (0.7 % of the voxels, so q0.999 = 100).
    cube = np.zeros((240, 240, 155), np.int16)
    cube[100:140, 100:140, 60:100] = 100
    # Realistic: a noisy "head" with outliers, so the quantile clip matters.
    head = np.zeros((240, 240, 155), np.float32)
    head[40:200, 30:210, 20:140] = rng.gamma(4.0, 100.0, size=(160, 180, 120))
    head[120, 120, 70] = 1e5
    return _save(root / "cube-t1n.nii.gz", cube, BRATS_AFFINE), _save(root / "head-t1n.nii.gz", head, BRATS_AFFINE)


def _released_brats(path: Path, size: int) -> np.ndarray:
    """The released steps, written out from the reference facts (section 8)."""
    img = nib.load(str(path)).get_fdata()
    clipped = np.clip(img, np.quantile(img, 0.001), np.quantile(img, 0.999))
    norm = (clipped - np.min(clipped)) / (np.max(clipped) - np.min(clipped))
    out = torch.zeros(256, 256, 256)
    out[8:-8, 8:-8, 50:-51] = torch.tensor(norm)
    if size == 128:
        out = torch.nn.AvgPool3d(2)(out[None, None])[0, 0]
    return (2 * out - 1).numpy()


def test_brats_known_answer_and_geometry(brats_files):
    cube_path, _ = brats_files
    p = preprocess(cube_path, PreprocessConfig(preset="brats", size=128))
    expected = -np.ones((128, 128, 128), np.float32)
    expected[54:74, 54:74, 55:75] = 1.0  # input [100:140,100:140,60:100] + (8,8,50), halved
    np.testing.assert_array_equal(p.array, expected)
    assert p.array.dtype == np.float32
    # Output voxel q of the 128 grid is the mean of 256-grid voxels 2q, 2q+1: input index 2q + 0.5 - offset.
    q = np.array([54.0, 60.0, 55.0, 1.0])
    world_in = BRATS_AFFINE @ np.array([2 * 54 + 0.5 - 8, 2 * 60 + 0.5 - 8, 2 * 55 + 0.5 - 50, 1.0])
    np.testing.assert_allclose(p.affine @ q, world_in)
    np.testing.assert_allclose(p.spacing, (2.0, 2.0, 2.0))
    assert p.source.shape == (240, 240, 155) and p.source.clip_high == 100.0

    p256 = preprocess(cube_path, PreprocessConfig(preset="brats", size=256, output_range01=True))
    assert p256.array.shape == (256,) * 3
    assert p256.array[108:148, 108:148, 110:150].min() == 1.0 and p256.array.sum() == 40 * 40 * 40
    np.testing.assert_allclose(p256.affine @ [8, 8, 50, 1], BRATS_AFFINE @ [0, 0, 0, 1])


@pytest.mark.parametrize("size", [128, 256])
def test_brats_matches_released_steps_bit_exactly(brats_files, size):
    _, head = brats_files
    ours = preprocess(Case("head", head, "brats"), PreprocessConfig(preset="brats", size=size))
    np.testing.assert_array_equal(ours.array, _released_brats(head, size))
    assert ours.source.clip_high < 1e5  # the outlier was clipped


def test_brats_range01_is_training_output_without_last_step(brats_files):
    _, head = brats_files
    train = preprocess(head, PreprocessConfig(preset="brats", size=128))
    evaluate = preprocess(head, PreprocessConfig(preset="brats", size=128, output_range01=True))
    np.testing.assert_array_equal(train.array, evaluate.array * np.float32(2) - np.float32(1))
    assert evaluate.array.min() == 0.0 and evaluate.array.max() <= 1.0


def test_brats_wrong_shape(tmp_path):
    path = _save(tmp_path / "x-t1n.nii.gz", np.ones((10, 10, 10), np.float32))
    with pytest.raises(InputShapeError, match=r"240, 240, 155.*preset='general'"):
        preprocess(path, PreprocessConfig(preset="brats"))


def test_lidc_preset_pools_and_rescales(tmp_path):
    rng = np.random.default_rng(1)
    vol = np.kron(rng.random((32, 32, 32)), np.ones((8, 8, 8))) + np.arange(256)[:, None, None] * 1e-4
    vol = (vol / vol.max()).astype(np.float32)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = (-128, -140, -300)
    path = _save(tmp_path / "processed.nii", vol, aff)  # uncompressed: fast to write and read
    p = preprocess(path, PreprocessConfig(preset="lidc", size=128))
    ref = vol.astype(np.float64).reshape(128, 2, 128, 2, 128, 2).mean(axis=(1, 3, 5)) * 2 - 1
    np.testing.assert_allclose(p.array, ref, atol=2e-7)
    np.testing.assert_allclose(p.affine @ [0, 0, 0, 1], aff @ [0.5, 0.5, 0.5, 1])
    p256 = preprocess(path, PreprocessConfig(preset="lidc", size=256, output_range01=True))
    np.testing.assert_array_equal(p256.array, vol)

    hu = _save(tmp_path / "raw.nii", (vol * 2000 - 1000).astype(np.float32))
    with pytest.raises(DataError, match="preprocess-lidc"):
        preprocess(hu, PreprocessConfig(preset="lidc", size=128))


def _world_value_map(path: Path, prepared, tol=1e-5):
    """Every output voxel's value equals the input value at the same world position (no interpolation)."""
    data, affine = load_volume(path)
    out_idx = np.stack(np.meshgrid(*[np.arange(n) for n in prepared.array.shape], indexing="ij"), -1)
    out_idx = out_idx.reshape(-1, 3)
    world = prepared.affine[:3, :3] @ out_idx.T + prepared.affine[:3, 3:4]
    src = np.linalg.solve(affine[:3, :3], world - affine[:3, 3:4]).T
    src_r = np.round(src).astype(int)
    assert np.abs(src - src_r).max() < tol
    inside = np.all((src_r >= 0) & (src_r < np.array(data.shape)), axis=1)
    got = prepared.array.reshape(-1)
    np.testing.assert_allclose(got[inside], data[tuple(src_r[inside].T)], atol=1e-6)
    np.testing.assert_array_equal(got[~inside], 0.0)
    return inside


def test_general_reorients_to_ras_keeping_world_positions(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.random((12, 10, 8)).astype(np.float32)
    data[0, 0, 0], data[-1, -1, -1] = 0.0, 1.0
    # Array axis 0 runs posterior (-A), axis 1 runs right, axis 2 runs inferior; 1.5/2/3 mm voxels.
    affine = np.array([[0, 2.0, 0, -10], [-1.5, 0, 0, 20], [0, 0, -3.0, 30], [0, 0, 0, 1]])
    path = _save(tmp_path / "v.nii.gz", data, affine)
    cfg = PreprocessConfig(size=None, intensity="ct", hu_window=(0.0, 1.0), output_range01=True)
    p = preprocess(path, cfg)
    assert p.array.shape == (10, 12, 8)
    assert np.all(np.diag(p.affine)[:3] > 0) and np.count_nonzero(p.affine[:3, :3]) == 3
    np.testing.assert_allclose(p.spacing, (2.0, 1.5, 3.0))
    assert _world_value_map(path, p).all()


def test_general_center_crop_and_pad(tmp_path):
    data = np.random.default_rng(3).random((40, 20, 31)).astype(np.float32)
    path = _save(tmp_path / "v.nii.gz", data)
    cfg = PreprocessConfig(size=32, intensity="ct", hu_window=(0.0, 1.0), output_range01=True)
    p = preprocess(path, cfg)
    assert p.array.shape == (32, 32, 32)
    # start (40-32)//2 = 4, (20-32)//2 = -6, (31-32)//2 = -1
    np.testing.assert_allclose(p.affine[:3, 3], (4, -6, -1))
    np.testing.assert_array_equal(p.array[:, 6:26, 1:32], data[4:36, :, :])
    assert p.array[:, :6].max() == 0 and p.array[:, 26:].max() == 0 and p.array[:, :, 0].max() == 0
    inside = _world_value_map(path, p)
    assert inside.sum() == 32 * 20 * 31


def test_general_foreground_crop_centres_the_object(tmp_path):
    data = np.zeros((64, 64, 64), np.float32)
    data[40:56, 5:15, 30:40] = 1.0
    data += np.float32(0.01)  # faint background below the threshold
    path = _save(tmp_path / "v.nii.gz", data)
    cfg = PreprocessConfig(
        size=32,
        crop="foreground",
        intensity="ct",
        hu_window=(0.0, 1.0),
        output_range01=True,
    )
    p = preprocess(path, cfg)
    np.testing.assert_allclose(p.affine[:3, 3], ((40 + 56 - 32) // 2, (5 + 15 - 32) // 2, (30 + 40 - 32) // 2))
    assert (p.array > 0.5).sum() == 16 * 10 * 10
    centre = np.argwhere(p.array > 0.5).mean(axis=0)
    np.testing.assert_allclose(centre, (15.5, 15.5, 15.5), atol=0.51)


def test_general_resampling_to_double_spacing_is_block_mean(tmp_path):
    data = np.random.default_rng(4).random((32, 32, 16)).astype(np.float32)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    path = _save(tmp_path / "v.nii.gz", data, aff)
    cfg = PreprocessConfig(
        size=None,
        spacing=(2.0, 2.0, 4.0),
        intensity="ct",
        hu_window=(0, 1),
        output_range01=True,
    )
    p = preprocess(path, cfg)
    np.testing.assert_allclose(p.array, data.reshape(16, 2, 16, 2, 8, 2).mean(axis=(1, 3, 5)), atol=1e-6)
    np.testing.assert_allclose(p.spacing, (2.0, 2.0, 4.0))
    np.testing.assert_allclose(p.affine @ [0, 0, 0, 1], aff @ [0.5, 0.5, 0.5, 1])


def test_general_intensity_modes(tmp_path):
    data = np.linspace(0, 999, 1000, dtype=np.float32).reshape(10, 10, 10)
    path = _save(tmp_path / "v.nii.gz", data)
    p = preprocess(path, PreprocessConfig(size=None, percentiles=(1.0, 99.0), output_range01=True))
    lo, hi = np.percentile(data, (1.0, 99.0))
    np.testing.assert_allclose(p.array, (np.clip(data, lo, hi) - lo) / (hi - lo), atol=1e-6)
    assert p.source.clip_low == pytest.approx(lo) and p.source.intensity_max == 999.0

    ct = np.array([-3000, -1000, 0, 1000, 3000] * 2, np.float32).reshape(10, 1, 1) * np.ones((1, 2, 2), np.float32)
    path = _save(tmp_path / "ct.nii.gz", ct)
    p = preprocess(path, PreprocessConfig(size=None, intensity="ct", hu_window=(-1000, 1000)))
    np.testing.assert_allclose(p.array[:5, 0, 0], [-1, -1, 0, 1, 1])


def test_nrrd_and_nifti_agree_on_array_and_affine(tmp_path):
    arr_kji = np.random.default_rng(5).random((6, 7, 8)).astype(np.float32)
    img = sitk.GetImageFromArray(arr_kji)
    img.SetSpacing((0.8, 1.2, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "v.nrrd"))
    sitk.WriteImage(img, str(tmp_path / "v.nii.gz"))
    a_nrrd, aff_nrrd = load_volume(tmp_path / "v.nrrd")
    a_nii, aff_nii = load_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(a_nrrd, arr_kji.transpose(2, 1, 0))
    np.testing.assert_allclose(a_nii, a_nrrd)
    np.testing.assert_allclose(aff_nrrd, aff_nii, atol=1e-5)
    # voxel (1, 0, 0) is one 0.8 mm step along the first direction column (0, -1, 0) in LPS -> (0, +0.8, 0) RAS
    np.testing.assert_allclose(aff_nrrd @ [1, 0, 0, 1] - aff_nrrd @ [0, 0, 0, 1], [0, 0.8, 0, 0], atol=1e-6)
    np.testing.assert_allclose(aff_nrrd[:3, 3], (-10.0, 20.0, 30.0))


def test_shape_and_file_errors(tmp_path):
    flat = _save(tmp_path / "flat.nii.gz", np.ones((16, 16), np.float32))
    slab = _save(tmp_path / "slab.nii.gz", np.ones((16, 16, 1), np.float32))
    four = _save(tmp_path / "four.nii.gz", np.ones((8, 8, 8, 3), np.float32))
    for path, what in ((flat, "2-D"), (slab, "2-D"), (four, "4-D")):
        with pytest.raises(InputShapeError, match=f"{path.name}.*{what}"):
            preprocess(path, PreprocessConfig(size=16))
    squeezable = _save(
        tmp_path / "sq.nii.gz",
        np.ones((8, 8, 8, 1), np.float32) * np.arange(8)[:, None, None, None],
    )
    assert preprocess(squeezable, PreprocessConfig(size=8)).array.shape == (8, 8, 8)
    corrupt = tmp_path / "bad.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(DataError, match="bad.nii.gz"):
        preprocess(corrupt, PreprocessConfig(size=8))
    const = _save(tmp_path / "const.nii.gz", np.ones((8, 8, 8), np.float32))
    with pytest.raises(DataError, match="constant"):
        preprocess(const, PreprocessConfig(size=8))


def test_config_validation():
    with pytest.raises(ConfigError, match="odd"):
        PreprocessConfig(size=127)
    with pytest.raises(ConfigError, match="128"):
        PreprocessConfig(preset="brats", size=64)
    with pytest.raises(ConfigError, match="general"):
        PreprocessConfig(preset="lidc", spacing=1.0)
    with pytest.raises(ConfigError, match="crop"):
        PreprocessConfig(crop="random")
    with pytest.raises(ConfigError, match="percentiles"):
        PreprocessConfig(percentiles=(99, 1))
    assert PreprocessConfig(spacing=1.5).spacing == (1.5, 1.5, 1.5)
