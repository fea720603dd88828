"""Paired phantoms: several contrasts of one anatomy, lesion-like masks inside the brain."""

import numpy as np

from wdmcore.data.contrasts import CONTRASTS, paired_phantom
from wdmcore.data.phantoms import TISSUE_BLOB, TISSUE_BRAIN, generate_phantom, generate_tissue_labels, item_rng


def test_labels_share_the_anatomy_of_the_intensity_phantom():
    phantom = generate_phantom(24, item_rng(3, 7))
    labels = generate_tissue_labels(24, item_rng(3, 7))
    assert np.array_equal(phantom > 0, labels > 0)
    for tissue in np.unique(labels):
        assert len(np.unique(phantom[labels == tissue])) == 1  # one intensity per tissue class


def test_contrasts_and_masks_are_reproducible_and_plausible():
    contrasts, mask = paired_phantom(24, 0, 5)
    again, mask_again = paired_phantom(24, 0, 5)
    assert set(contrasts) == set(CONTRASTS) and np.array_equal(mask, mask_again)
    assert all(np.array_equal(contrasts[k], again[k]) for k in contrasts)
    labels = generate_tissue_labels(24, item_rng(0, 5))
    assert mask.any() and np.all((labels[mask] == TISSUE_BRAIN) | (labels[mask] == TISSUE_BLOB))
    # Same anatomy, different contrast: the CSF is dark in t1 and bright in t2.
    csf = labels == 2
    assert contrasts["t1"][csf].mean() < 0.3 < 0.8 < contrasts["t2"][csf].mean()
    assert all(v.min() >= 0 and v.max() <= 1 and v.dtype == np.float32 for v in contrasts.values())
