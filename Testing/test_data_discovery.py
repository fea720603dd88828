"""Discovery of BraTS, LIDC, any folder of volumes and list files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from wdmcore.data import detect_format, discover
from wdmcore.errors import ConfigError, DataError


def _nifti(path: Path, shape=(4, 4, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
    return path


def _brats(root: Path, case: str, seqs=("t1n", "t1c", "t2w", "t2f")) -> None:
    for s in seqs:
        _nifti(root / case / f"{case}-{s}.nii.gz")


def test_brats_layout_default_sequence_and_missing_sequence(tmp_path):
    _brats(tmp_path, "BraTS-GLI-00000-000")
    _brats(tmp_path, "BraTS-GLI-00002-000")
    _brats(tmp_path, "BraTS-GLI-00001-000", seqs=("t1n", "t2w"))
    _nifti(tmp_path / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz")
    assert detect_format(tmp_path) == "brats"
    cases = discover(tmp_path)
    assert [c.id for c in cases] == [
        "BraTS-GLI-00000-000",
        "BraTS-GLI-00001-000",
        "BraTS-GLI-00002-000",
    ]
    assert all(c.path.name.endswith("-t1n.nii.gz") and c.format == "brats" for c in cases)
    assert all(c.sequence == "t1n" for c in cases)
    t1c = discover(tmp_path, sequence="t1c")
    assert [c.id for c in t1c] == [
        "BraTS-GLI-00000-000",
        "BraTS-GLI-00002-000",
    ]  # 00001 has no t1c
    with pytest.raises(ConfigError, match="sequence"):
        discover(tmp_path, sequence="flair")


def test_lidc_layout(tmp_path):
    _nifti(tmp_path / "LIDC-IDRI-0001" / "1.2.3" / "processed.nii.gz")
    _nifti(tmp_path / "LIDC-IDRI-0001" / "1.2.4" / "processed.nii.gz")
    _nifti(tmp_path / "LIDC-IDRI-0002" / "processed.nii.gz")
    assert detect_format(tmp_path) == "lidc"
    cases = discover(tmp_path)
    assert [c.id for c in cases] == [
        "LIDC-IDRI-0001/1.2.3",
        "LIDC-IDRI-0001/1.2.4",
        "LIDC-IDRI-0002",
    ]
    assert {c.format for c in cases} == {"lidc"}


def test_folder_layout_recursive_all_formats_hidden_ignored(tmp_path):
    _nifti(tmp_path / "a.nii")
    _nifti(tmp_path / "sub" / "b.nii.gz")
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    for name in ("c.nrrd", "sub/deeper/d.mha", "e.mhd"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(tmp_path / name))
    _nifti(tmp_path / ".hidden" / "x.nii.gz")
    _nifti(tmp_path / ".y.nii.gz")
    (tmp_path / "notes.txt").write_text("not a volume")
    assert detect_format(tmp_path) == "folder"
    cases = discover(tmp_path)
    assert sorted(c.id for c in cases) == ["a", "c", "e", "sub/b", "sub/deeper/d"]
    assert {c.format for c in cases} == {"folder"}
    # "general", the layout's name in configurations of older versions, still reads the same cases.
    assert discover(tmp_path, format="general") == cases
    assert not any(c.path.suffix == ".raw" for c in cases)  # .mhd data files are not cases


def test_list_file_relative_comments_and_missing(tmp_path):
    a = _nifti(tmp_path / "vols" / "a.nii.gz")
    b = _nifti(tmp_path / "elsewhere" / "b.nii.gz")
    lst = tmp_path / "vols" / "train.txt"
    lst.write_text(f"# training volumes\na.nii.gz\n\n{b}\n")
    cases = discover(lst)
    assert [c.path for c in cases] == [a.resolve(), b]
    assert detect_format(lst) == "list"
    lst.write_text("a.nii.gz\nmissing.nii.gz\n")
    with pytest.raises(DataError, match=r"line 2: missing\.nii\.gz"):
        discover(lst)


def test_single_file_and_errors(tmp_path):
    a = _nifti(tmp_path / "a.nii.gz")
    assert [c.path for c in discover(a)] == [a]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no volumes found"):
        discover(empty)
    with pytest.raises(DataError, match="no such file"):
        discover(tmp_path / "nope")
    with pytest.raises(ConfigError, match="unknown dataset format"):
        discover(tmp_path, format="png")
    with pytest.raises(DataError, match="processed.nii.gz"):
        discover(tmp_path, format="lidc")
