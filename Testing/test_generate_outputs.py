"""Output geometry from model cards and the files: NIfTI/NRRD written, read back with nibabel and SimpleITK."""

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from wdmcore.errors import ConfigError
from wdmcore.hub import load_catalogue
from wdmcore.tasks.generate import GeneratedVolume
from wdmcore.volumes.writing import card_geometry, ras_to_lps, save_volume, sidecar_path

# An oblique, anisotropic grid: rotation about S by 30 degrees, axes swapped, 0.8/1.2/2.5 mm voxels.
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = np.array([[_C, 0.0, -_S], [_S, 0.0, _C], [0.0, -1.0, 0.0]])
SPACING = np.array([0.8, 1.2, 2.5])
ORIGIN = np.array([-10.0, 25.0, 40.0])
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = DIRECTION * SPACING
OBLIQUE[:3, 3] = ORIGIN


def _volume(shape=(6, 7, 8)) -> GeneratedVolume:
    array = np.random.default_rng(0).random(shape, dtype=np.float32)
    array[1, 2, 3] = 0.0
    array[4, 5, 6] = 1.0
    meta = {"model": "tiny", "sampler": "dpm++2m", "steps": 25, "seed": 7, "geometry_known": True}
    return GeneratedVolume(array=array, affine=OBLIQUE.copy(), seed=7, meta=meta)


def _sitk_ras_affine(image: sitk.Image) -> np.ndarray:
    """Voxel (i, j, k) -> RAS from SimpleITK's LPS spacing, direction and origin."""
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return ras_to_lps(lps)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd"])
def test_write_and_read_back_with_both_libraries(tmp_path, name):
    volume = _volume()
    path = volume.save(tmp_path / name)
    image = sitk.ReadImage(str(path))
    # SimpleITK: (k, j, i) array, LPS geometry.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), volume.array)
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), [10.0, -25.0, 40.0], atol=1e-5)  # RAS -> LPS flips x and y
    lps_direction = np.diag([-1, -1, 1]) @ DIRECTION
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), lps_direction, atol=1e-6)
    np.testing.assert_allclose(_sitk_ras_affine(image), OBLIQUE, atol=1e-5)
    if name != "v.nrrd":
        nifti = nib.load(path)
        np.testing.assert_array_equal(np.asarray(nifti.dataobj), volume.array)
        np.testing.assert_allclose(nifti.affine, OBLIQUE, atol=1e-5)
        np.testing.assert_allclose(nifti.get_qform(), OBLIQUE, atol=1e-5)
        assert nifti.header["sform_code"] == 1 and nifti.get_data_dtype() == np.float32
    else:
        header = path.read_bytes()[:2000].decode("latin-1")
        assert "space: left-posterior-superior" in header and "wdm_seed:=7" in header
    record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    assert record["file"] == name and record["seed"] == 7 and record["model"] == "tiny"
    assert record["geometry_known"] is True and record["shape"] == [6, 7, 8]
    np.testing.assert_allclose(record["affine_ras"], OBLIQUE)
    np.testing.assert_allclose(record["spacing_mm"], SPACING)


def test_int16_nifti_keeps_values_within_its_scaling(tmp_path):
    volume = _volume()
    path = volume.save(tmp_path / "v.nii.gz", dtype="int16")
    nifti = nib.load(path)
    assert nifti.get_data_dtype() == np.int16
    np.testing.assert_allclose(nifti.get_fdata(), volume.array, atol=1.0 / 30000)
    with pytest.raises(ConfigError, match="NRRD"):
        volume.save(tmp_path / "v.nrrd", dtype="int16")
    with pytest.raises(ConfigError, match="file format"):
        volume.save(tmp_path / "v.mha")


def test_a_point_lands_at_the_same_place_in_ras_and_lps():
    lps = ras_to_lps(OBLIQUE)
    voxel = np.array([2.0, 3.0, 4.0, 1.0])
    ras_point, lps_point = OBLIQUE @ voxel, lps @ voxel
    np.testing.assert_allclose(lps_point[:3], [-ras_point[0], -ras_point[1], ras_point[2]])
    np.testing.assert_allclose(ras_to_lps(lps), OBLIQUE)


def test_card_geometry_variants():
    # Complete geometry: spacing, direction and origin from the card.
    card = {"spacing_mm": SPACING.tolist(), "direction": DIRECTION.tolist(), "origin_mm": ORIGIN.tolist()}
    geometry = card_geometry(card, (6, 7, 8))
    np.testing.assert_allclose(geometry.affine, OBLIQUE)
    assert geometry.known
    # What the trainer writes: a nested affine.
    nested = card_geometry({"geometry": {"affine": OBLIQUE.tolist(), "known": True}}, (6, 7, 8))
    np.testing.assert_allclose(nested.affine, OBLIQUE)
    assert nested.known
    # A released checkpoint without a catalogue card: 1 mm, centred, unknown.
    released = card_geometry({"geometry": {"spacing_mm": [1, 1, 1], "known": False}}, (4, 4, 4))
    np.testing.assert_allclose(released.affine, [[1, 0, 0, -1.5], [0, 1, 0, -1.5], [0, 0, 1, -1.5], [0, 0, 0, 1]])
    assert not released.known
    # Nothing at all: still never an identity by accident.
    bare = card_geometry({}, (4, 4, 4))
    assert not bare.known and "1 mm assumed" in bare.notes and not np.allclose(bare.affine, np.eye(4))
    with pytest.raises(ConfigError, match="spacing_mm"):
        card_geometry({"spacing_mm": [1, 2]}, (4, 4, 4))
    with pytest.raises(ConfigError, match="direction"):
        card_geometry({"direction": np.zeros((3, 3)).tolist()}, (4, 4, 4))


def test_brats_outputs_placed_in_a_reference_frame():
    card = load_catalogue().get("brats_unet_128_1200k").card
    brats_affine = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    geometry = card_geometry(card, (128, 128, 128), reference_affine=brats_affine)
    assert geometry.known
    # Output voxel (i, j, k) averages BraTS voxels centred at (2i - 7.5, 2j - 7.5, 2k - 49.5).
    for ijk in ([0, 0, 0], [60, 64, 50], [127, 127, 127]):
        source = 2 * np.array(ijk, dtype=float) + [-7.5, -7.5, -49.5]
        np.testing.assert_allclose(geometry.affine @ [*ijk, 1], brats_affine @ [*source, 1])
    np.testing.assert_allclose(geometry.spacing, [2, 2, 2])
    lidc = load_catalogue().get("lidc-idri_unet_128_1200k").card
    with pytest.raises(ConfigError, match="reference"):
        card_geometry({"spacing_mm": [2, 2, 2]}, (8, 8, 8), reference_affine=np.eye(4))
    assert card_geometry(lidc, (128, 128, 128), reference_affine=np.eye(4)).affine[0, 3] == 0.5


def test_save_volume_creates_folders_and_can_skip_the_sidecar(tmp_path):
    volume = _volume()
    path = save_volume(volume.array, volume.affine, tmp_path / "a" / "b" / "x.nii", sidecar=False)
    assert path.is_file() and not sidecar_path(path).exists()
