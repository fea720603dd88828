"""Procedural head phantoms: determinism, range, the documented distribution and its statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wdmcore.data import PhantomDataset, generate_phantom, phantom_batch
from wdmcore.data import phantoms as ph
from wdmcore.errors import ConfigError


def test_deterministic_range_and_background():
    a = generate_phantom(32, 7)
    assert a.shape == (32, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, generate_phantom(32, np.random.default_rng(7)))
    np.testing.assert_array_equal(a, generate_phantom(32, seed=7))
    assert not np.array_equal(a, generate_phantom(32, 8))
    assert a.min() == 0.0 and a.max() <= 1.0
    # Corners are outside the head; the centre is inside it.
    assert a[0, 0, 0] == a[-1, -1, -1] == 0.0 and a[16, 16, 16] > 0.05
    fg = a[a > 0]
    assert fg.min() >= ph.CSF_INTENSITY[0] - 1e-6  # every head voxel is at least CSF-bright


def test_same_object_at_every_size():
    small = generate_phantom(32, 3)
    large = generate_phantom(64, 3).reshape(32, 2, 32, 2, 32, 2).mean(axis=(1, 3, 5))
    other = generate_phantom(32, 4)
    # Only boundary voxels differ (partial volume); another seed is a different object.
    same = np.abs(small - large).mean()
    assert same < 0.03 and np.abs(small - other).mean() > 2 * same
    assert abs((small > 0).mean() - (generate_phantom(64, 3) > 0).mean()) < 0.01


def test_foreground_fraction_matches_the_documented_distribution():
    expected = ph.expected_foreground_fraction()
    assert expected == pytest.approx(np.pi / 6 * 0.73 * 0.85 * 0.75)
    fractions = np.array([(generate_phantom(48, s) > 0).mean() for s in range(40)])
    # Std of one phantom's fraction is about 6.5 % of the mean; 40 draws give ~1 % standard error.
    assert fractions.mean() == pytest.approx(expected, rel=0.035)
    assert fractions.min() > 0.17 and fractions.max() < 0.32


def test_tissue_intensities_follow_the_documented_ranges():
    vol = generate_phantom(64, 11)
    values = np.unique(vol[vol > 0])
    assert 3 <= len(values) <= 4 + ph.BLOB_COUNT[1]  # skull, CSF, brain, blobs (ventricles share CSF)
    centre = vol[28:36, 28:36, 28:36]
    assert ((centre >= ph.BRAIN_INTENSITY[0] - 1e-6) | (centre <= ph.CSF_INTENSITY[1] + 1e-6) | (centre >= 0.65)).all()
    assert vol.max() >= ph.SKULL_INTENSITY[0] - 1e-6


def test_batch_dataset_and_loader_agree():
    batch = phantom_batch(3, 16, seed=5)
    assert batch.shape == (3, 16, 16, 16)
    ds = PhantomDataset(3, 16, seed=5)
    x, i = ds[1]
    assert x.shape == (1, 16, 16, 16) and x.dtype == torch.float32 and i == 1
    np.testing.assert_array_equal(x[0].numpy(), batch[1] * 2 - 1)
    assert x.min() == -1.0 and x.max() <= 1.0
    loaded = next(iter(DataLoader(ds, batch_size=3, num_workers=2)))
    torch.testing.assert_close(loaded[0][:, 0], torch.from_numpy(batch) * 2 - 1)
    assert PhantomDataset(2, 16, seed=5, output_range01=True)[0][0].min() == 0.0
    np.testing.assert_allclose(ds.affine @ [8, 8, 8, 1], [7.5, 7.5, 7.5, 1])
    with pytest.raises(ConfigError, match="odd"):
        PhantomDataset(2, 15)


def test_statistics_separate_phantoms_from_noise():
    size = 24
    ref = ph.reference_statistics(size, n=12)
    assert ref.histogram.sum() == pytest.approx(1.0)
    assert ref.foreground_fraction == pytest.approx(ph.expected_foreground_fraction(), rel=0.08)
    fresh = ph.volume_statistics(phantom_batch(8, size, seed=99))
    rng = np.random.default_rng(0)
    noise = ph.volume_statistics(rng.random((8, size, size, size)))
    blurred = ph.volume_statistics(
        np.clip(
            phantom_batch(8, size, seed=99) + rng.normal(0, 0.3, (8, size, size, size)),
            0,
            1,
        )
    )
    d_fresh, d_noise, d_blur = (
        fresh.distance(ref),
        noise.distance(ref),
        blurred.distance(ref),
    )
    assert d_fresh < 0.05 and d_noise > 0.5
    assert d_fresh < d_blur < d_noise
    # Tensors in [N, 1, S, S, S] layout work as well.
    t = torch.from_numpy(phantom_batch(2, size, seed=1))[:, None]
    assert ph.intensity_histogram(t, bins=10).shape == (10,)
    assert ph.histogram_distance([1, 0, 0], [0, 0, 1]) == pytest.approx(2 / 3)
