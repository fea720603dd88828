"""LIDC DICOM preprocessing on synthetic DICOM series written with SimpleITK."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from wdmcore.cli import preprocess_lidc
from wdmcore.data import discover, preprocess, preprocess_lidc_dicom
from wdmcore.data.preprocess import PreprocessConfig
from wdmcore.errors import DataError

DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def write_series(
    folder: Path,
    hu_ijk,
    spacing,
    origin,
    *,
    patient="LIDC-IDRI-0001",
    uid="1.2.826.0.1.1",
    modality="CT",
) -> Path:
    """One DICOM file per slice, with the tags a series reader needs (position, orientation, spacing)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(hu_ijk, np.int16).transpose(2, 1, 0))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = DIRECTION
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        tags = {
            "0008|0060": modality,
            "0010|0020": patient,
            "0020|000d": "1.2.826.0.1.9",
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{spacing[2]:.6f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def _phantom_hu(shape, seed=0):
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1024, np.int16)
    c = [n // 2 for n in shape]
    sl = tuple(slice(ci - n // 3, ci + n // 3) for ci, n in zip(c, shape, strict=True))
    hu[sl] = rng.integers(-900, 1200, size=hu[sl].shape)
    return hu


def _reference(hu, spacing, crop):
    """The released steps, from the reference facts (section 8)."""
    vol = ndimage.zoom(hu.astype(np.float64), np.asarray(spacing) / 1.0, order=3, mode="nearest")
    start = [(n - crop) // 2 for n in vol.shape]
    vol = vol[tuple(slice(s, s + crop) for s in start)].copy()
    vol[vol < -1000] = -1000
    vol = np.clip(vol, None, np.quantile(vol, 0.999))
    return (vol - vol.min()) / (vol.max() - vol.min()), start


def _snapshot(root: Path):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def test_series_to_1mm_volume_with_real_affine(tmp_path):
    hu = _phantom_hu((20, 18, 16))
    spacing, origin = (2.0, 2.0, 2.5), (-20.0, -18.0, -100.0)
    write_series(tmp_path / "in" / "LIDC-IDRI-0001" / "study" / "s1", hu, spacing, origin)
    before = _snapshot(tmp_path / "in")
    report = preprocess_lidc_dicom(tmp_path / "in", tmp_path / "out", crop_size=32)
    assert _snapshot(tmp_path / "in") == before  # inputs untouched
    assert [r.status for r in report.results] == ["done"]
    out = Path(report.results[0].output)
    assert out == tmp_path / "out" / "LIDC-IDRI-0001" / "1.2.826.0.1.1" / "processed.nii.gz"
    img = nib.load(str(out))
    expected, start = _reference(hu, spacing, 32)
    np.testing.assert_allclose(img.get_fdata(), expected, atol=1e-6)
    assert report.results[0].shape_1mm == (40, 36, 40)

    # Affine: output voxel p is zoomed voxel p + start, i.e. input index (p + start) * (n - 1) / (n' - 1).
    step = (np.array([20, 18, 16]) - 1) / (np.array([40, 36, 40]) - 1)
    p = np.array([3.0, 5.0, 7.0])
    idx_in = (p + start) * step
    world_lps = np.array(origin) + np.array(spacing) * idx_in
    np.testing.assert_allclose(img.affine @ [*p, 1], [-world_lps[0], -world_lps[1], world_lps[2], 1], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 1.0, atol=0.04)
    assert img.affine[0, 0] < 0 and img.affine[1, 1] < 0 and img.affine[2, 2] > 0  # LPS series -> RAS affine

    # Rerun: outputs are kept unless overwrite; the LIDC layout is discovered from the output.
    again = preprocess_lidc_dicom(tmp_path / "in", tmp_path / "out", crop_size=32)
    assert [r.status for r in again.results] == ["exists"]
    assert [
        r.status for r in preprocess_lidc_dicom(tmp_path / "in", tmp_path / "out", crop_size=32, overwrite=True).results
    ] == ["done"]
    cases = discover(tmp_path / "out")
    assert [c.id for c in cases] == ["LIDC-IDRI-0001/1.2.826.0.1.1"] and cases[0].format == "lidc"


def test_small_scan_reported_or_padded_and_series_kept_apart(tmp_path):
    root = tmp_path / "in" / "LIDC-IDRI-0002"
    write_series(
        root / "a",
        _phantom_hu((12, 12, 10), 1),
        (2.0, 2.0, 2.0),
        (0.0, 0.0, 0.0),
        patient="P2",
        uid="1.2.3.1",
    )
    write_series(
        root / "b",
        _phantom_hu((20, 20, 14), 2),
        (2.0, 2.0, 2.5),
        (0.0, 0.0, 0.0),
        patient="P2",
        uid="1.2.3.2",
    )
    write_series(
        root / "c",
        _phantom_hu((8, 8, 4), 3),
        (1.0, 1.0, 1.0),
        (0.0, 0.0, 0.0),
        patient="P2",
        uid="1.2.3.3",
        modality="MR",
    )
    report = preprocess_lidc_dicom(tmp_path / "in", tmp_path / "out", crop_size=32)
    status = {r.series_uid: r for r in report.results}
    assert status["1.2.3.2"].status == "done"
    assert status["1.2.3.1"].status == "skipped" and "smaller than 32 mm" in status["1.2.3.1"].reason
    assert "--pad" in status["1.2.3.1"].reason
    assert status["1.2.3.3"].status == "skipped" and "MR" in status["1.2.3.3"].reason
    assert "2 skipped" in report.to_text() and "1 series written" in report.to_text()

    padded = preprocess_lidc_dicom(tmp_path / "in", tmp_path / "out", crop_size=32, pad=True)
    status = {r.series_uid: r for r in padded.results}
    assert status["1.2.3.1"].status == "done" and status["1.2.3.2"].status == "exists"
    vol = nib.load(status["1.2.3.1"].output).get_fdata()
    assert vol.shape == (32, 32, 32)
    # 23 mm of scan (zoom 12 -> 24 voxels) centred: pad (32 - 24) // 2 = 4 voxels of air (value 0) before.
    assert vol[:4].max() == 0.0 and vol[:, :, :6].max() == 0.0 and vol.max() == 1.0
    outs = sorted(p.parent.name for p in (tmp_path / "out" / "P2").rglob("processed.nii.gz"))
    assert outs == ["1.2.3.1", "1.2.3.2"]  # one folder per series, nothing overwritten
    json_path = padded.save_json(tmp_path / "report.json")
    assert '"done": 2' in json_path.read_text(encoding="utf-8")

    # The 128 LIDC preset needs 256^3 volumes: a 32^3 output is rejected with a clear message.
    with pytest.raises(Exception, match="256"):
        preprocess(status["1.2.3.1"].output, PreprocessConfig(preset="lidc", size=128))


def test_cli_subcommand(tmp_path, capsys):
    write_series(tmp_path / "in", _phantom_hu((20, 20, 14)), (2.0, 2.0, 2.5), (0.0, 0.0, 0.0))
    parser = argparse.ArgumentParser(prog="wdm")
    preprocess_lidc.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "preprocess-lidc",
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            "--crop-size",
            "32",
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert args.handler(args) == 0
    assert "1 series written, 0 skipped" in capsys.readouterr().out
    assert (tmp_path / "r.json").is_file()
    args = parser.parse_args(["preprocess-lidc", str(tmp_path / "in"), str(tmp_path / "out2")])  # 256 mm needed
    assert args.handler(args) == 2
    captured = capsys.readouterr()
    assert "smaller than 256 mm" in captured.out
    assert captured.err.splitlines()[-1].startswith("wdm: error: no series could be used")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM series"):
        preprocess_lidc_dicom(tmp_path / "empty", tmp_path / "out3")
