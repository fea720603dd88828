"""Paired metrics (BraTS inpainting definitions): normalisation, SSIM map, MSE/PSNR in a mask, folders, CLI."""

import json
import math

import numpy as np
import pytest

from wdmcore.errors import DataError
from wdmcore.evaluation.paired import evaluate_folders, normalise_with_percentiles, paired_metrics, ssim_map


def _volumes(seed=0, shape=(12, 20, 18)):
    rng = np.random.default_rng(seed)
    reference = rng.random(shape) * 800
    mask = np.zeros(shape)
    mask[3:8, 5:12, 4:10] = 1
    return reference, mask


def test_identical_volumes_score_perfectly():
    reference, mask = _volumes()
    m = paired_metrics(reference, reference, mask)
    assert m.ssim == pytest.approx(1.0) and m.mse == 0 and math.isinf(m.psnr) and m.voxels == int(mask.sum())


def test_mse_and_psnr_follow_their_definitions_inside_the_mask():
    reference, mask = _volumes(1)
    prediction = reference + np.random.default_rng(2).normal(0, 40, reference.shape)
    m = paired_metrics(prediction, reference, mask)
    inside = mask > 0
    pred = normalise_with_percentiles(prediction * inside, reference)
    ref = normalise_with_percentiles(reference * inside, reference)
    mse = np.mean((pred[inside] - ref[inside]) ** 2)
    assert m.mse == pytest.approx(mse)
    assert m.psnr_01 == pytest.approx(-10 * math.log10(mse))
    span = ref[inside].max() - ref[inside].min()
    assert m.psnr == pytest.approx(10 * math.log10(span**2 / mse))
    # Changing voxels outside the mask changes nothing.
    other = prediction.copy()
    other[~inside] = 0
    assert paired_metrics(other, reference, mask).to_dict() == m.to_dict()


def test_ssim_map_is_one_for_equal_images_and_symmetric():
    rng = np.random.default_rng(3)
    a, b = rng.random((4, 16, 16)), rng.random((4, 16, 16))
    np.testing.assert_allclose(ssim_map(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim_map(a, b), ssim_map(b, a), atol=1e-12)
    assert ssim_map(a, b).mean() < 0.5 < ssim_map(a, 0.9 * a + 0.1 * b).mean()


def test_percentile_normalisation_raises_negative_lower_bound_to_zero():
    x = np.linspace(-100, 100, 1001)
    out = normalise_with_percentiles(x, x)
    assert out.min() == 0 and out.max() == 1 and out[500] == 0  # -100..0 all clipped to the raised bound 0


def test_folders_and_cli(tmp_path):
    from wdmcore.cli.main import main
    from wdmcore.volumes.writing import save_nifti

    for folder in ("res", "ref", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        reference, mask = _volumes(i)
        save_nifti(reference.astype(np.float32), np.eye(4), tmp_path / "ref" / f"case{i}.nii.gz")
        save_nifti((reference * 0.9).astype(np.float32), np.eye(4), tmp_path / "res" / f"case{i}.nii.gz")
        save_nifti(mask.astype(np.float32), np.eye(4), tmp_path / "masks" / f"case{i}.nii.gz")
    report = evaluate_folders(tmp_path / "res", tmp_path / "ref", tmp_path / "masks")
    assert report["count"] == 2 and 0 < report["mean"]["mse"] < 0.05
    out = tmp_path / "report.json"
    argv = ["evaluate", "--task", "inpaint", "--fake", str(tmp_path / "res"), "--real", str(tmp_path / "ref")]
    assert main(argv + ["--masks", str(tmp_path / "masks"), "--out", str(out), "--progress", "none"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["mean"] == pytest.approx(report["mean"])
    assert main(argv + ["--out", str(out)]) == 2  # inpainting needs masks
    with pytest.raises(DataError, match="namesake"):
        evaluate_folders(tmp_path / "res", _empty(tmp_path))


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder
