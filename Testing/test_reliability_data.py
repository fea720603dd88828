"""Bad files in a training folder: with --skip-bad-files they are skipped with a reason and never shape the
others (not even the `fit` spacing); `wdm summarize` calls usable exactly what training accepts."""

from __future__ import annotations

import numpy as np
import pytest

from wdmcore.cli.main import build_parser
from wdmcore.cli.train import build_dataset, resolve
from wdmcore.data.summary import summarize
from wdmcore.errors import DataError

nib = pytest.importorskip("nibabel")

GOOD = ("good_a.nii.gz", "good_b.nii.gz")
BAD = {
    "huge.nii": "claims 10000x10000x10000 voxels",
    "zero_spacing.nii.gz": "has a zero",
    "nan_affine.nii.gz": "NaN or infinite values",
    "constant.nii.gz": "constant",
    "tiny.nii.gz": "at least 8 voxels",
    "series.nii.gz": "4-D image",
}


def _save(path, data, affine):
    image = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    two_mm = np.diag([2.0, 2.0, 2.0, 1.0])
    for name in GOOD:  # 16^3 at 2 mm: 32 mm, so the fit spacing of a 16^3 run is 2 mm
        _save(root / name, rng.random((16, 16, 16)), two_mm)
    header = nib.Nifti1Header()  # a header alone, claiming 10000^3 voxels
    header.set_data_shape((10000, 10000, 10000))
    header.set_data_dtype(np.float32)
    (root / "huge.nii").write_bytes(header.binaryblock + b"\0" * 4)
    zero = nib.Nifti1Image(rng.random((16, 16, 16)).astype(np.float32), None)
    zero.header.set_sform(np.diag([0.0, 2.0, 2.0, 1.0]), code=1)  # an sform with a zero column
    nib.save(zero, str(root / "zero_spacing.nii.gz"))
    nan_affine = two_mm.copy()
    nan_affine[0, 3] = np.nan
    image = nib.Nifti1Image(rng.random((16, 16, 16)).astype(np.float32), None)
    image.header.set_sform(nan_affine, code=1)
    nib.save(image, str(root / "nan_affine.nii.gz"))
    _save(root / "constant.nii.gz", np.zeros((32, 32, 32)), two_mm)  # the largest extent of all: 64 mm
    _save(root / "tiny.nii.gz", rng.random((4, 5, 7)), np.diag([20.0, 20.0, 20.0, 1.0]))
    _save(root / "series.nii.gz", rng.random((16, 16, 16, 3)), two_mm)
    return root


def _dataset(folder, tmp_path, *extra):
    args = build_parser().parse_args(
        ["train", "--data", str(folder), "--format", "folder", "--image-size", "16", "--channel-mult", "1,2",
         "--out", str(tmp_path / "run"),
         *extra]
    )  # fmt: skip
    config, data = resolve(args)
    return build_dataset(config, data, tmp_path / "run")


def test_skipped_files_never_set_the_fit_spacing(folder, tmp_path):
    dataset = _dataset(folder, tmp_path, "--skip-bad-files")
    assert sorted(c.path.name for c in dataset.cases) == sorted(GOOD)
    assert dataset.config.spacing == pytest.approx((2.0, 2.0, 2.0))
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in dataset.skipped}
    assert sorted(reasons) == sorted(BAD)
    for name, words in BAD.items():
        assert words in reasons[name] and not reasons[name].startswith(str(folder)), (name, reasons[name])
    array = dataset[0][0].numpy()
    assert array.shape == (1, 16, 16, 16) and (array > -1).mean() > 0.9  # the good volume fills the cube


def test_without_skip_every_bad_file_is_listed_once(folder, tmp_path):
    with pytest.raises(DataError) as info:
        _dataset(folder, tmp_path)
    text = str(info.value)
    assert f"{len(BAD)} of {len(BAD) + 2} files cannot be used" in text and "--skip-bad-files" in text
    for name in BAD:
        assert text.count(name) == 1, name


def test_summarize_calls_usable_what_training_accepts(folder, tmp_path):
    summary = summarize(folder)
    assert summary.count == 2 and sorted(s.path.rsplit("/", 1)[1] for s in summary.skipped) == sorted(BAD)
    headers_only = summarize(folder, read_voxels=False)  # all but the constant volume show in the header
    assert sorted(s.path.rsplit("/", 1)[1] for s in headers_only.skipped) == sorted(set(BAD) - {"constant.nii.gz"})
    assert all(not s.reason.startswith(str(folder)) for s in summary.skipped)


def test_spacing_advice_names_the_command_line_option(tmp_path):
    rng = np.random.default_rng(1)
    _save(tmp_path / "a.nii.gz", rng.random((16, 16, 16)), np.diag([1.0, 1.0, 1.0, 1.0]))
    _save(tmp_path / "b.nii.gz", rng.random((16, 16, 16)), np.diag([2.0, 2.0, 2.0, 1.0]))
    (warning,) = summarize(tmp_path).warnings
    assert "--spacing MM" in warning


# -- a full cache disk is not a bad file -------------------------------------------------------------------------


def _cache_files(cache):
    return sorted(p.name for p in cache.iterdir())


def _assert_cache_consistent(cache):
    names = _cache_files(cache)
    assert not [n for n in names if ".tmp-" in n], names  # no half-written entry left behind
    keys = {n.rsplit(".", 1)[0] for n in names}
    assert names == sorted(f"{k}.{ext}" for k in keys for ext in ("json", "npy")), names
    for key in keys:
        assert np.load(cache / f"{key}.npy").shape == (16, 16, 16)


@pytest.fixture(params=["ENOSPC", "EDQUOT"])
def disk_full_after_one_volume(request, monkeypatch):
    """The cache's writes: the first volume is written, the second fails half-way (a full disk or quota)."""
    import errno

    import wdmcore.data.cache as cache_module

    real_save, calls = cache_module.np.save, []

    def save_until_full(f, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"\x93NUMPY" + b"\0" * 100)
            raise OSError(getattr(errno, request.param), "No space left on device")
        return real_save(f, array, *args, **kwargs)

    monkeypatch.setattr(cache_module.np, "save", save_until_full)


def test_a_full_cache_disk_stops_the_run_instead_of_skipping_files(folder, tmp_path, disk_full_after_one_volume):
    from wdmcore.errors import DiskFullError

    cache = tmp_path / "cache"
    with pytest.raises(DiskFullError, match="the disk is full") as info:
        _dataset(folder, tmp_path, "--skip-bad-files", "--cache", str(cache))
    assert "--cache DIR" in str(info.value)
    _assert_cache_consistent(cache)
    assert len(_cache_files(cache)) == 2  # the first volume stays cached; nothing of the second


def test_wdm_train_on_a_full_cache_disk_exits_2_and_skips_nothing(folder, tmp_path, disk_full_after_one_volume, capsys):
    from wdmcore.cli.main import main

    out = tmp_path / "run"
    argv = ["train", "--data", str(folder), "--format", "folder", "--image-size", "16", "--channel-mult", "1,2",
            "--out", str(out), "--skip-bad-files", "--max-steps", "1", "--progress", "none"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "wdm: error: " in err and "the disk is full" in err and "good_b" not in err
    assert not list(out.rglob("*.safetensors"))


def test_training_on_a_really_full_cache_disk(folder, tmp_path, capsys):
    import os
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        (mount / "filler").write_bytes(b"\0" * (200 * 1024 - 28 * 1024))  # room for one 16^3 entry, not two
        cache = mount / "cache"
        from wdmcore.cli.main import main

        argv = ["train", "--data", str(folder), "--format", "folder", "--image-size", "16", "--channel-mult", "1,2",
                "--out", str(tmp_path / "run"), "--cache", str(cache), "--skip-bad-files", "--max-steps", "1",
                "--progress", "none"]  # fmt: skip
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "wdm: error: " in err and "the disk is full" in err, err
        assert "cannot be used" not in err and "skipped" not in err
        _assert_cache_consistent(cache)
        assert len(_cache_files(cache)) == 2
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# -- what is passed over is said ----------------------------------------------------------------------------------


def test_summarize_lists_the_files_it_does_not_read(tmp_path, capsys):
    import json

    from wdmcore.cli.main import main

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    rng = np.random.default_rng(4)
    _save(data / "good.nii.gz", rng.random((16, 16, 16)), np.eye(4))
    nib.save(nib.MGHImage(rng.random((16, 16, 16)).astype(np.float32), np.eye(4)), str(data / "sub" / "brain.mgz"))
    (data / "notes.txt").write_text("acquired 2024\n")
    assert main(["summarize", str(data), "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "1 image file(s) in a format wdm does not read" in out
    assert f"{data / 'sub' / 'brain.mgz'}: a FreeSurfer MGZ volume" in out and "mri_convert" in out
    assert "other files, not volumes: 1 (.txt 1)" in out
    assert main(["summarize", str(data), "--progress", "none", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["path"] for s in listed["not_read"]] == [str(data / "sub" / "brain.mgz")]
    assert main(["summarize", str(data / "sub" / "brain.mgz"), "--progress", "none"]) == 2
    assert "FreeSurfer MGZ volume" in capsys.readouterr().err


def test_preprocess_lidc_on_a_folder_without_dicom_prints_only_the_error(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import wdmcore

    pytest.importorskip("SimpleITK")
    empty, other = tmp_path / "empty", tmp_path / "other" / "sub"
    empty.mkdir()
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("not DICOM\n")
    env = {**os.environ, "PYTHONPATH": str(Path(wdmcore.__file__).resolve().parents[1])}
    script = "import sys\nfrom wdmcore.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    for folder in (empty, other.parent):
        done = subprocess.run([sys.executable, "-c", script, "preprocess-lidc", str(folder), str(tmp_path / "out")],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"wdm: error: {folder}: no DICOM series found (searched all subfolders); check the path"
        ], done.stderr
