"""Feature statistics, the Fréchet distance (FID) and the kernel distance (KID), all in float64.

FID follows WDM's protocol: mean and unbiased covariance (``N - 1``) of the feature vectors of each set, then

    FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

The trace of the matrix square root is computed from eigenvalues: ``S_a^(1/2) S_b S_a^(1/2)`` is symmetric
positive semi-definite and has the same eigenvalues as ``S_a S_b``, so ``tr((S_a S_b)^(1/2))`` is the sum of
the square roots of its eigenvalues (negative round-off clipped to 0). This is the quantity that
``scipy.linalg.sqrtm`` approximates in the released code (and in MONAI's ``FIDMetric``), without its
eps-retry and imaginary-part heuristics; on singular covariances (fewer vectors than dimensions, the normal
case with 2048-d features) the two agree to ~1e-7 relative.

KID is the unbiased estimate of the squared maximum mean discrepancy with the cubic polynomial kernel
``k(x, y) = (x.y / d + 1)^3`` (Bińkowski et al. 2018), averaged over random subsets. Unlike FID it has no
bias that depends on N, so it stays meaningful for the small sets where FID does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputShapeError, WDMError

logger = logging.getLogger(__name__)

#: The released FID used exactly this many volumes per set; smaller sets give a biased (larger) FID.
FID_RECOMMENDED_N = 1000


class SmallSampleWarning(UserWarning):
    """A metric was computed on fewer volumes than its protocol asks for."""


def small_sample_message(n_real: int, n_fake: int) -> str | None:
    n = min(n_real, n_fake)
    if n >= FID_RECOMMENDED_N:
        return None
    return (
        f"FID computed on {n_real} real and {n_fake} generated volumes; the paper's protocol uses "
        f"{FID_RECOMMENDED_N} of each. FID is biased upwards for small N and not comparable with the "
        "paper's table; compare KID instead, or generate more volumes."
    )


def _as_features(features: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise InputShapeError(f"{what}: expected a feature matrix [N, D], got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise WDMError(
            f"{what}: the feature matrix contains NaN or infinite values. Check the input volumes "
            "(they should be finite and in [0, 1])."
        )
    return array


@dataclass
class FeatureStatistics:
    """Mean, covariance and count of a set of feature vectors (the features themselves are kept for KID)."""

    mean: np.ndarray
    cov: np.ndarray
    count: int
    features: np.ndarray | None = None
    meta: dict | None = None

    @classmethod
    def from_features(cls, features: np.ndarray, keep_features: bool = True) -> FeatureStatistics:
        """Statistics of exactly the rows given (float64; covariance with ``N - 1``)."""
        feats = _as_features(features, "feature statistics")
        if feats.shape[0] < 2:
            raise InputShapeError(
                f"At least 2 feature vectors are needed for a covariance, got {feats.shape[0]}. Evaluate more volumes."
            )
        return cls(
            mean=feats.mean(axis=0),
            cov=np.cov(feats, rowvar=False),
            count=feats.shape[0],
            features=feats if keep_features else None,
        )

    def save(self, path: str | Path, config: dict) -> None:
        """Write an ``.npz`` file holding the statistics, ``config``, its hash and ``meta``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            mean=self.mean,
            cov=self.cov,
            count=np.int64(self.count),
            features=self.features if self.features is not None else np.zeros((0, self.mean.shape[0])),
            config_json=np.array(json.dumps(config, sort_keys=True)),
            config_hash=np.array(config_hash(config)),
            meta_json=np.array(json.dumps(self.meta or {}, sort_keys=True)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, config: dict | None = None) -> FeatureStatistics | None:
        """Statistics written by :meth:`save`; ``None`` if missing, unreadable or made with another config."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if config is not None and str(data["config_hash"]) != config_hash(config):
                    logger.info("Statistics cache %s was made with another configuration; recomputing", path)
                    return None
                features = data["features"]
                stats = cls(
                    mean=data["mean"],
                    cov=data["cov"],
                    count=int(data["count"]),
                    features=features if features.shape[0] else None,
                    meta=json.loads(str(data["meta_json"])),
                )
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("Ignoring unreadable statistics cache %s (%s)", path, exc)
            return None
        return stats


def config_hash(config: dict) -> str:
    """SHA-256 of the canonical JSON of ``config``."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """``tr((S_a S_b)^(1/2))`` for symmetric positive semi-definite ``S_a``, ``S_b`` (float64)."""
    root_a = _sqrt_psd(np.asarray(sigma_a, dtype=np.float64))
    inner = root_a @ np.asarray(sigma_b, dtype=np.float64) @ root_a
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu_a, sigma_a) and N(mu_b, sigma_b) (float64)."""
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, dtype=np.float64), np.asarray(sigma_b, dtype=np.float64)
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise InputShapeError(
            f"Fréchet distance needs means [D] and covariances [D, D] of one D; got {mu_a.shape}, "
            f"{sigma_a.shape}, {mu_b.shape}, {sigma_b.shape}."
        )
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt_product(sigma_a, sigma_b)
    return float(value)


def frechet_distance_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance of the Gaussians fitted to two feature sets, computed through the features.

    With ``A = (X_a - mu_a) / sqrt(N_a - 1)`` (so ``S_a = A^T A``) and ``B`` likewise, the non-zero
    eigenvalues of ``S_a S_b`` are the squared singular values of ``A B^T`` [N_a, N_b], so
    ``tr((S_a S_b)^(1/2))`` is its nuclear norm. Exact, and much cheaper than D x D eigen-decompositions
    when N < D (1000 volumes against 2048-d features in the paper's protocol).
    """
    xa = _as_features(features_a, "Fréchet distance (first set)")
    xb = _as_features(features_b, "Fréchet distance (second set)")
    if xa.shape[1] != xb.shape[1] or min(xa.shape[0], xb.shape[0]) < 2:
        raise InputShapeError(
            f"Fréchet distance needs two sets of at least 2 vectors of one size, got {xa.shape} and {xb.shape}."
        )
    mu_a, mu_b = xa.mean(axis=0), xb.mean(axis=0)
    a = (xa - mu_a) / np.sqrt(xa.shape[0] - 1)
    b = (xb - mu_b) / np.sqrt(xb.shape[0] - 1)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * nuclear)


def fid_from_statistics(real: FeatureStatistics, fake: FeatureStatistics, warn: bool = True) -> float:
    """FID between two sets of statistics; warns (:class:`SmallSampleWarning`) below 1000 volumes per set.

    When both sets keep their features and are smaller than the feature dimension, the cheaper exact
    feature-space formula (:func:`frechet_distance_from_features`) is used; otherwise the covariance one.
    """
    if warn and (message := small_sample_message(real.count, fake.count)):
        warnings.warn(message, SmallSampleWarning, stacklevel=2)
        logger.warning(message)
    dim = real.mean.shape[0]
    if real.features is not None and fake.features is not None and max(real.count, fake.count) < dim:
        return frechet_distance_from_features(real.features, fake.features)
    return frechet_distance(real.mean, real.cov, fake.mean, fake.cov)


def fid_from_features(real: np.ndarray, fake: np.ndarray, warn: bool = True) -> float:
    """FID between two feature matrices [N_real, D] and [N_fake, D]; uses exactly the rows given."""
    return fid_from_statistics(FeatureStatistics.from_features(real), FeatureStatistics.from_features(fake), warn=warn)


@dataclass
class KIDResult:
    mean: float
    std: float
    subsets: int
    subset_size: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "subsets": self.subsets, "subset_size": self.subset_size}


def _polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, coef0: float) -> np.ndarray:
    base = x @ y.T / x.shape[1] + coef0
    return base * base * base if degree == 3 else base**degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between samples ``x`` [m, D] and ``y`` [n, D], kernel ``(x.y / D + coef0)^degree``."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise InputShapeError(f"The unbiased MMD needs at least 2 samples per set, got {m} and {n}.")
    k_xx = _polynomial_kernel(x, x, degree, coef0)
    k_yy = _polynomial_kernel(y, y, degree, coef0)
    k_xy = _polynomial_kernel(x, y, degree, coef0)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> KIDResult:
    """KID: unbiased polynomial-kernel MMD^2 averaged over ``subsets`` random subsets of each set.

    ``subset_size`` is reduced to the smaller set size when needed. When both sets are exactly that size,
    every subset would be the whole set, so the estimate is computed once (std 0).
    """
    real = _as_features(real, "KID real features")
    fake = _as_features(fake, "KID generated features")
    if real.shape[1] != fake.shape[1]:
        raise InputShapeError(f"KID: feature sizes differ ({real.shape[1]} vs {fake.shape[1]}).")
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise InputShapeError(
            f"KID needs at least 2 volumes per set, got {real.shape[0]} real and {fake.shape[0]} generated."
        )
    if size == real.shape[0] == fake.shape[0]:
        value = mmd2_unbiased(real, fake)
        return KIDResult(mean=value, std=0.0, subsets=1, subset_size=size)
    rng = np.random.default_rng(seed)
    values = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        idx_r = rng.choice(real.shape[0], size, replace=False)
        idx_f = rng.choice(fake.shape[0], size, replace=False)
        values[i] = mmd2_unbiased(real[idx_r], fake[idx_f])
    return KIDResult(mean=float(values.mean()), std=float(values.std()), subsets=subsets, subset_size=size)
