"""Volume files that lie: headers that claim more voxels than the file holds, files cut by a few bytes and
complex-valued voxels are refused by the one reader every command uses, before any large array is allocated."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import wdmcore
from wdmcore.errors import DataError

nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")

WDMCORE = Path(wdmcore.__file__).resolve().parents[1]  # children import the wdmcore these tests import
PAYLOAD = 4096  # what a hostile file really holds after its header


def _nifti_header(shape, dtype) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4  # the 4-byte extension flag: the voxels start at 352


def _nrrd_header(shape, nrrd_type: str, encoding: str) -> bytes:
    return (
        f"NRRD0004\ntype: {nrrd_type}\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(map(str, shape))}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\n"
        f"endian: little\nencoding: {encoding}\nspace origin: (0,0,0)\n\n"
    ).encode()


def write_lying_file(path: Path, shape, dtype) -> Path:
    """A file whose header claims ``shape`` voxels of ``dtype`` but which holds only PAYLOAD bytes of data."""
    payload = np.random.default_rng(0).bytes(PAYLOAD)
    nrrd_type = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]
    name = path.name
    if name.endswith(".nii"):
        path.write_bytes(_nifti_header(shape, dtype) + payload)
    elif name.endswith(".nii.gz"):
        path.write_bytes(gzip.compress(_nifti_header(shape, dtype) + payload))
    elif name.endswith("gz.nrrd"):
        path.write_bytes(_nrrd_header(shape, nrrd_type, "gzip") + gzip.compress(payload))
    elif name.endswith(".nrrd"):
        path.write_bytes(_nrrd_header(shape, nrrd_type, "raw") + payload)
    else:
        raise ValueError(name)
    return path


# Runs a command in a child and reports that child's peak memory. A process forked from pytest starts with
# pytest's own peak (Linux keeps it across exec), so the measured command is forked from this small launcher.
PEAK_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def run_measured(args: list[str]) -> tuple[int, str, float]:
    """(exit status, output, peak resident memory in MB) of ``python ARGS`` run in a child process."""
    env = {**os.environ, "PYTHONPATH": str(WDMCORE)}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_LAUNCHER, sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a bound on a hang, not a timing
    )
    output, _, peak = done.stdout.rpartition("peak_kb ")
    return done.returncode, output + done.stderr, int(peak) / 1024


def _child_read(path: Path) -> tuple[int, str, float]:
    script = (
        "import sys\nfrom wdmcore.volumes.reading import load_volume\nfrom wdmcore.errors import DataError\n"
        "try:\n    load_volume(sys.argv[1])\nexcept DataError as exc:\n    print(exc)\n    sys.exit(2)\n"
    )
    return run_measured(["-c", script, str(path)])


HOSTILE = [
    ("lie.nii", (1024, 1024, 1024), np.float32),
    ("lie.nii.gz", (1024, 1024, 1024), np.float32),
    ("lie.nrrd", (1024, 1024, 1024), np.float32),
    ("lie.gz.nrrd", (1024, 1024, 1024), np.float32),
    ("lie64.nii", (512, 512, 512), np.float64),
    ("lie64.nii.gz", (512, 512, 512), np.float64),
    ("lie64.nrrd", (512, 512, 512), np.float64),
    ("lie64.gz.nrrd", (512, 512, 512), np.float64),
]


@pytest.mark.parametrize("name,shape,dtype", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_small_file_claiming_a_huge_volume_is_refused_before_allocating(tmp_path, name, shape, dtype):
    path = write_lying_file(tmp_path / name, shape, dtype)
    code, output, peak_mb = _child_read(path)
    assert code == 2, output
    assert str(path) in output and f"claims {'x'.join(map(str, shape))} voxels" in output
    assert "the file is truncated or its header is wrong" in output
    # The claims are 1 to 4 GB; a reader that allocated first would peak there (torch and numpy alone: ~100 MB).
    assert peak_mb < 400, f"peak {peak_mb:.0f} MB"


def test_compressed_data_are_counted_not_trusted(tmp_path):
    # 64^3 float32 (1 MB) in 4 KB of incompressible data: within what deflate could expand, short when counted.
    for name in ("short.nii.gz", "short.gz.nrrd"):
        path = write_lying_file(tmp_path / name, (64, 64, 64), np.float32)
        from wdmcore.volumes.reading import load_volume

        with pytest.raises(DataError, match=r"claims 64x64x64 voxels .* compressed data hold only 4,096 bytes"):
            load_volume(path)


def _truthful_files(folder: Path) -> tuple[dict[str, Path], np.ndarray]:
    array = np.random.default_rng(1).random((20, 21, 22)).astype(np.float32)
    files = {}
    for name in ("v.nii", "v.nii.gz"):
        files[name] = folder / name
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(files[name]))
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    for name, compress in (("v.nrrd", False), ("vz.nrrd", True), ("v.mha", False), ("vz.mha", True)):
        files[name] = folder / name
        sitk.WriteImage(image, str(files[name]), useCompression=compress)
    return files, array


def test_truthful_files_load_and_files_cut_by_a_few_bytes_are_refused(tmp_path):
    from wdmcore.volumes.reading import load_volume

    files, array = _truthful_files(tmp_path)
    for name, path in files.items():
        loaded, _ = load_volume(path, np.float32)
        np.testing.assert_array_equal(loaded, array, err_msg=name)
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(path.read_bytes()[:-3])
        with pytest.raises(DataError, match="the file is truncated or its header is wrong") as info:
            load_volume(cut)
        assert str(cut) in str(info.value)


def test_a_detached_header_is_held_against_its_data_file(tmp_path):
    from wdmcore.volumes.reading import load_volume

    array = np.random.default_rng(5).random((12, 13, 14)).astype(np.float32)
    for suffix in (".nhdr", ".mhd"):
        folder = tmp_path / suffix[1:]
        folder.mkdir()
        header = folder / f"v{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(array.transpose(2, 1, 0)), str(header))
        np.testing.assert_array_equal(load_volume(header, np.float32)[0], array)
        (data,) = [p for p in folder.iterdir() if p != header]
        data.write_bytes(data.read_bytes()[:-3])
        with pytest.raises(DataError, match="holds only 8,733 bytes of voxel data"):
            load_volume(header)
        data.unlink()
        with pytest.raises(DataError, match=data.name.replace(".", r"\.")):  # ITK or the size check names it
            load_volume(header)


def test_a_volume_larger_than_the_free_memory_is_refused_before_reading(tmp_path, monkeypatch):
    import wdmcore.volumes.reading as reading

    files, _ = _truthful_files(tmp_path)
    monkeypatch.setattr(reading, "available_memory_bytes", lambda: 100_000)
    with pytest.raises(DataError, match=r"needs about 110,880 bytes of memory, but only 100,000 bytes is free"):
        reading.load_volume(files["v.nii"])  # 20x21x22 float32 stored + float64 read = 12 bytes a voxel
    with pytest.raises(DataError, match=r"needs about 147,840 bytes of memory"):
        reading.load_volume(files["v.nii.gz"])  # and the decompressed file kept for the reader: 16 bytes a voxel
    with pytest.raises(DataError, match=r"needs about 110,880 bytes of memory"):
        reading.load_volume(files["vz.nrrd"])


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="reads /proc/meminfo")
def test_the_free_memory_is_known_on_this_machine():
    from wdmcore.volumes.reading import available_memory_bytes

    free = available_memory_bytes()
    assert free is not None and 0 < free < 1 << 50


def _complex_files(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(2)
    files = {}
    for name, dtype in (("c64.nii.gz", np.complex64), ("c128.nii", np.complex128)):
        data = (rng.random((16, 16, 16)) + 1j * rng.random((16, 16, 16))).astype(dtype)
        files[name] = folder / name
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(files[name]))
    data = (rng.random((16, 16, 16)) + 1j * rng.random((16, 16, 16))).astype(np.complex64)
    files["c.nrrd"] = folder / "c.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(data), str(files["c.nrrd"]))
    return files


def test_complex_voxels_are_refused_by_every_reader(tmp_path):
    from wdmcore.evaluation.volumes import NiftiReader
    from wdmcore.tasks.inputs import read_input
    from wdmcore.volumes.reading import load_volume

    for name, path in _complex_files(tmp_path).items():
        for read in (load_volume, NiftiReader(), lambda p: read_input(str(p), "image")):
            with pytest.raises(DataError, match="complex-valued voxels") as info:
                read(path)
            assert str(path) in str(info.value), name
    with pytest.raises(DataError, match="complex values"):
        read_input(np.ones((8, 8, 8), np.complex64), "image")


def test_training_skips_complex_and_lying_files_with_the_reason(tmp_path):
    from wdmcore.data import PreprocessConfig, VolumeDataset, discover
    from wdmcore.data.summary import summarize

    data = tmp_path / "data"
    data.mkdir()
    complex_files = _complex_files(data)
    nib.save(nib.Nifti1Image(np.random.default_rng(3).random((16, 16, 16)).astype(np.float32), np.eye(4)),
             str(data / "good.nii.gz"))  # fmt: skip
    write_lying_file(data / "lie.nii", (1024, 1024, 1024), np.float32)
    write_lying_file(data / "short.nii.gz", (64, 64, 64), np.float32)
    dataset = VolumeDataset(discover(data), PreprocessConfig(preset="general", size=16), cache_dir=tmp_path / "c")
    assert [c.path.name for c in dataset.cases] == ["good.nii.gz"]
    reasons = {Path(s.path).name: s.reason for s in dataset.skipped}
    for name in complex_files:
        assert "complex-valued voxels" in reasons[name], reasons
    assert "the file holds only 4,096 bytes" in reasons["lie.nii"]
    assert "compressed data hold only 4,096 bytes" in reasons["short.nii.gz"]
    summary = summarize(data)
    assert summary.count == 1 and {Path(s.path).name for s in summary.skipped} == set(reasons)


def test_wdm_vary_refuses_a_lying_image_before_allocating(tmp_path):
    import torch

    from wdmcore.models.checkpoints import save_model_file
    from wdmcore.networks import NetworkConfig, build_network

    torch.manual_seed(0)
    network = build_network(NetworkConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4))
    model = save_model_file(tmp_path / "u.safetensors", network, {"image_size": 16, "diffusion": {"steps": 100}})
    image = write_lying_file(tmp_path / "lie.nii.gz", (1024, 1024, 1024), np.float32)
    script = "import sys\nfrom wdmcore.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    argv = ["vary", "--model", str(model), "--image", str(image), "--strength", "0.2", "--steps", "2",
            "--device", "cpu", "--progress", "none", "--out", str(tmp_path / "v.nii.gz")]  # fmt: skip
    code, output, peak_mb = run_measured(["-c", script, *argv])
    assert code == 2, output
    assert "wdm: error: " in output and "claims 1024x1024x1024 voxels" in output
    assert peak_mb < 1024, f"peak {peak_mb:.0f} MB"
    assert not (tmp_path / "v.nii.gz").exists()
