"""Paired metrics of a result against its reference: SSIM, PSNR and MSE, inside a mask where given.

The definitions follow the BraTS 2023 inpainting challenge's metrics:

* the result and the reference are multiplied by the mask (the whole volume when there is none), then both are
  normalised with the 0.5 and 99.5 percentiles of a normalisation volume (the voided input for inpainting, the
  reference otherwise; the lower one raised to 0 if negative): clipped to them and scaled to [0, 1];
* SSIM: the 2-D SSIM map (Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, reflect padding, data range =
  the larger value range of the two volumes) of every slice along the first array axis — the way a
  [1, X, Y, Z] tensor is treated as X channels of Y x Z images — averaged over the mask's voxels;
* MSE over the mask's voxels; PSNR over them with the reference's value range inside the mask (``psnr``) and with
  a fixed range of 1 (``psnr_01``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InputShapeError

GAUSSIAN_SIZE = 11
GAUSSIAN_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def normalise_with_percentiles(x: np.ndarray, reference: np.ndarray, low=0.5, high=99.5) -> np.ndarray:
    v_min, v_max = np.percentile(reference, [low, high])
    v_min = max(float(v_min), 0.0)
    if v_max <= v_min:
        raise DataError("the normalisation volume has no intensity range between its 0.5 and 99.5 percentiles.")
    return (np.clip(x, v_min, v_max) - v_min) / (v_max - v_min)


def _gaussian_kernel() -> np.ndarray:
    dist = np.arange((1 - GAUSSIAN_SIZE) / 2, (1 + GAUSSIAN_SIZE) / 2, 1.0)
    g = np.exp(-((dist / GAUSSIAN_SIGMA) ** 2) / 2)
    return g / g.sum()


def ssim_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM at every voxel, 2-D over the last two axes (each index of the first axis is one image)."""
    import torch
    import torch.nn.functional as F

    data_range = max(pred.max() - pred.min(), target.max() - target.min())
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float64))[None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float64))[None]
    pad = (GAUSSIAN_SIZE - 1) // 2
    g = torch.from_numpy(_gaussian_kernel())
    kernel = (g[:, None] * g[None, :]).expand(p.shape[1], 1, GAUSSIAN_SIZE, GAUSSIAN_SIZE).contiguous()

    def blur(x):
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), kernel, groups=p.shape[1])

    mu_p, mu_t = blur(p), blur(t)
    var_p = (blur(p * p) - mu_p**2).clamp(min=0)
    var_t = (blur(t * t) - mu_t**2).clamp(min=0)
    cov = blur(p * t) - mu_p * mu_t
    value = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return value[0].numpy()


@dataclass
class PairedMetrics:
    ssim: float
    psnr: float
    psnr_01: float
    mse: float
    voxels: int

    def to_dict(self) -> dict[str, float | int]:
        return {"ssim": self.ssim, "psnr": self.psnr, "psnr_01": self.psnr_01, "mse": self.mse, "voxels": self.voxels}


def paired_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None = None,
    normalization: np.ndarray | None = None,
) -> PairedMetrics:
    """Metrics of ``prediction`` against ``reference`` (same shape) inside ``mask`` (all voxels if None)."""
    prediction = np.asarray(prediction, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if prediction.shape != reference.shape or prediction.ndim != 3:
        raise InputShapeError(f"result {prediction.shape} and reference {reference.shape} must be 3-D of one shape.")
    inside = np.ones(reference.shape, dtype=bool) if mask is None else np.asarray(mask) > 0.5
    if inside.shape != reference.shape:
        raise InputShapeError(f"the mask {inside.shape} does not have the reference's shape {reference.shape}.")
    if not inside.any():
        raise DataError("the mask is empty: there are no voxels to compare.")
    norm = reference if normalization is None else np.asarray(normalization, dtype=np.float64)
    pred = normalise_with_percentiles(prediction * inside, norm)
    ref = normalise_with_percentiles(reference * inside, norm)
    ssim = float(ssim_map(pred, ref)[inside].mean())
    diff = pred[inside] - ref[inside]
    mse = float(np.mean(diff**2))
    span = float(ref[inside].max() - ref[inside].min())
    psnr = 10 * math.log10(span**2 / mse) if mse > 0 and span > 0 else math.inf
    psnr_01 = 10 * math.log10(1.0 / mse) if mse > 0 else math.inf
    return PairedMetrics(ssim=ssim, psnr=psnr, psnr_01=psnr_01, mse=mse, voxels=int(inside.sum()))


def evaluate_folders(
    results: Path, references: Path, masks: Path | None = None, normalizations: Path | None = None
) -> dict:
    """Pair files by name (the same file name in each folder) and report per-case and mean metrics."""
    from ..volumes.reading import load_volume, strip_volume_suffix, volume_suffix

    def files(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder.")
        return {strip_volume_suffix(p.name): p for p in sorted(folder.iterdir()) if volume_suffix(p)}

    res, ref = files(results), files(references)
    extra = {
        "mask": files(masks) if masks else None,
        "normalization": files(normalizations) if normalizations else None,
    }
    names = sorted(set(res) & set(ref))
    if not names:
        raise DataError(f"no file of {results} has a namesake in {references}; name each result like its reference.")
    cases = {}
    for name in names:
        loaded = {}
        for key, table in extra.items():
            if table is not None:
                if name not in table:
                    raise DataError(f"no {key} file named like {res[name].name} in its folder.")
                loaded[key] = load_volume(table[name])[0]
        metrics = paired_metrics(load_volume(res[name])[0], load_volume(ref[name])[0], **loaded)
        cases[name] = metrics.to_dict()
    keys = ("ssim", "psnr", "psnr_01", "mse")
    mean = {k: float(np.mean([c[k] for c in cases.values()])) for k in keys}
    return {"cases": cases, "mean": mean, "count": len(cases), "unpaired_results": sorted(set(res) - set(ref))}
