"""VolumeDataset, the memory-mapped cache, the summary and the errors users meet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wdmcore.data import (
    DatasetSummary,
    PreprocessConfig,
    VolumeDataset,
    cache_key,
    discover,
    preprocess,
    summarize,
)
from wdmcore.errors import ConfigError, DataError

CFG = PreprocessConfig(size=16)


def _save(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i, shape in enumerate([(20, 18, 12), (16, 16, 16), (14, 22, 16), (18, 18, 18)]):
        _save(
            root / f"vol{i}.nii.gz",
            rng.gamma(2.0, 50.0, size=shape),
            spacing=(1.0, 1.0, 1.0 + i % 2),
        )
    return root


def test_items_shape_range_and_equal_to_preprocess(folder):
    cases = discover(folder)
    ds = VolumeDataset(cases, CFG)
    assert len(ds) == 4 and ds.skipped == []
    image, index = ds[2]
    assert image.shape == (1, 16, 16, 16) and image.dtype == torch.float32 and index == 2
    assert image.min() >= -1 and image.max() <= 1
    np.testing.assert_array_equal(image[0].numpy(), preprocess(cases[2], CFG).array)
    np.testing.assert_allclose(ds.affine(2), preprocess(cases[2], CFG).affine)
    ev = VolumeDataset(cases, PreprocessConfig(size=16, output_range01=True))
    np.testing.assert_array_equal(ev[2][0] * 2 - 1, image)


def test_cache_memmap_hits_and_invalidation(folder, tmp_path):
    cache = tmp_path / "cache"
    events = []
    cases = discover(folder)
    ds = VolumeDataset(cases, CFG, cache_dir=cache, progress=events.append)
    assert [e["cached"] for e in events] == [False] * 4 and events[-1]["done"] == 4
    assert len(list(cache.glob("*.npy"))) == 4 and len(list(cache.glob("*.json"))) == 4
    assert not list(cache.glob("*.tmp-*"))
    prepared = ds.prepared01(1)
    assert isinstance(prepared.array, np.memmap)
    uncached = VolumeDataset(cases, CFG)
    for i in range(4):
        np.testing.assert_array_equal(ds[i][0], uncached[i][0])

    events.clear()
    VolumeDataset(cases, CFG, cache_dir=cache, progress=events.append)
    assert [e["cached"] for e in events] == [True] * 4
    # The [0, 1] entries are shared between training and evaluation configurations.
    events.clear()
    ev = VolumeDataset(
        cases,
        PreprocessConfig(size=16, output_range01=True),
        cache_dir=cache,
        progress=events.append,
    )
    assert all(e["cached"] for e in events)
    np.testing.assert_array_equal(ev[0][0] * 2 - 1, ds[0][0])

    # Changing the file or the preprocessing changes the key.
    key = cache_key(cases[0].path, CFG)
    assert cache_key(cases[0].path, PreprocessConfig(size=32)) != key
    assert cache_key(cases[0].path, PreprocessConfig(size=16, intensity="ct")) != key
    st = cases[0].path.stat()
    os.utime(cases[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(cases[0].path, CFG) != key
    meta = json.loads(next(cache.glob("*.json")).read_text(encoding="utf-8"))
    assert set(meta) >= {"affine", "source", "config"}


def test_dataloader_with_workers(folder, tmp_path):
    ds = VolumeDataset(discover(folder), CFG, cache_dir=tmp_path / "cache")
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=2)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [torch.Size([2, 1, 16, 16, 16])] * 2
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(4))
    torch.testing.assert_close(batches[1][0][1], ds[3][0])


def test_corrupt_and_wrong_files_are_skipped_with_reasons(folder, tmp_path):
    (folder / "broken.nii.gz").write_bytes(b"not a nifti at all")
    # A valid header whose gzip payload is cut: only reading the voxels finds it.
    good = (folder / "vol1.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    _save(folder / "flat.nii.gz", np.ones((8, 8)))
    _save(folder / "series4d.nii.gz", np.ones((8, 8, 8, 2)))
    cases = discover(folder)
    ds = VolumeDataset(cases, CFG, cache_dir=tmp_path / "cache")
    assert len(ds) == 4
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert set(reasons) == {
        "broken.nii.gz",
        "truncated.nii.gz",
        "flat.nii.gz",
        "series4d.nii.gz",
    }
    assert "2-D" in reasons["flat.nii.gz"] and "4-D" in reasons["series4d.nii.gz"]
    assert "voxel data" in reasons["truncated.nii.gz"] or "header" in reasons["truncated.nii.gz"]
    text = str(ds.summary())
    assert "4 usable volume(s), 4 skipped" in text and "broken.nii.gz" in text

    full = summarize(folder, CFG)
    assert full.count == 4 and len(full.skipped) == 4

    with pytest.raises(DataError, match="none of the 2 case"):
        VolumeDataset([c for c in cases if c.path.name in ("broken.nii.gz", "flat.nii.gz")], CFG)
    with pytest.raises(DataError, match="no cases"):
        VolumeDataset([], CFG)


def test_summary_numbers_text_and_json(folder, tmp_path):
    s = summarize(discover(folder), CFG)
    assert s.count == 4
    assert s.shapes == {"20x18x12": 1, "16x16x16": 1, "14x22x16": 1, "18x18x18": 1}
    assert s.spacings == {"1x1x1": 2, "1x1x2": 2}
    lows, highs = zip(*[(c.intensity_min, c.intensity_max) for c in s.cases], strict=True)
    assert s.intensity_range == (min(lows), max(highs))
    data = nib.load(str(folder / "vol1.nii.gz")).get_fdata()
    assert s.cases[1].intensity_max == pytest.approx(data.max(), rel=1e-6)
    assert any("spacing=" in w for w in s.warnings)  # mixed voxel sizes without resampling
    assert s.output_shape == (16, 16, 16)
    path = s.save_json(tmp_path / "summary.json")
    loaded = DatasetSummary.load_json(path)
    assert loaded.shapes == s.shapes and loaded.count == 4 and loaded.intensity_range == s.intensity_range
    assert json.loads(path.read_text(encoding="utf-8"))["spacings"] == {"1x1x1": 2, "1x1x2": 2}
    assert "source shapes: " in s.to_text() and "intensity range" in s.to_text()
    cached = VolumeDataset(discover(folder), CFG, cache_dir=tmp_path / "c").summary()
    assert cached.intensity_range == pytest.approx(s.intensity_range)
    resampled = summarize(discover(folder), PreprocessConfig(size=16, spacing=1.0))
    assert resampled.warnings == []


def test_mixed_sizes_need_size_or_spacing(folder, tmp_path):
    with pytest.raises(ConfigError, match=r"different shapes.*size=.*spacing="):
        VolumeDataset(discover(folder), PreprocessConfig(size=None))
    same = tmp_path / "same"
    _save(same / "a.nii.gz", np.random.default_rng(1).random((8, 8, 8)))
    _save(
        same / "b.nii.gz",
        np.random.default_rng(2).random((16, 16, 16)),
        spacing=(0.5, 0.5, 0.5),
    )
    # After resampling to 1 mm both are 8^3 cubes: size=None is then fine.
    ds = VolumeDataset(discover(same), PreprocessConfig(size=None, spacing=1.0))
    assert ds[1][0].shape == (1, 8, 8, 8)
    _save(tmp_path / "odd" / "a.nii.gz", np.random.default_rng(1).random((9, 9, 9)))
    with pytest.raises(ConfigError, match="even-sized cube"):
        VolumeDataset(discover(tmp_path / "odd"), PreprocessConfig(size=None))
    with pytest.raises(ConfigError, match="odd"):
        PreprocessConfig(size=15)
