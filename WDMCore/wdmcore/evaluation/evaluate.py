"""Evaluation of a generated set against a real set: FID and KID on MedicalNet features, MS-SSIM diversity.

Without the MedicalNet weights (``extractor=None``) only what needs no features is computed: the MS-SSIM
diversity of the generated set; the report lists FID and KID under ``not_computed`` with the reason.

Protocol (WDM, Friedrich et al. 2024): real volumes go through the training preprocessing without its final
``2x - 1`` (values in [0, 1]); generated volumes are used as saved; every volume passes one at a time, without
resizing or z-scoring, through MedicalNet's ResNet-50; FID compares the float64 mean and covariance of the
2048-d features. MS-SSIM is the mean over pairs of generated volumes.

The real set's statistics (mean, covariance, count and the features, which KID needs) are cached under a
key made of the feature network (hash of the weights, dtype), the reader's configuration and the real files'
names, sizes and modification times; a second evaluation against the same real set embeds only the
generated volumes.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputShapeError, WDMError
from ..events import ProgressCallback, ProgressTracker
from ..version import __version__
from .fid import (
    FID_RECOMMENDED_N,
    FeatureStatistics,
    KIDResult,
    SmallSampleWarning,
    config_hash,
    fid_from_statistics,
    kernel_inception_distance,
    small_sample_message,
)
from .medicalnet import NETWORK_NAME, MedicalNetFeatureExtractor
from .ms_ssim import MSSSIMResult, MSSSIMSettings, ms_ssim_diversity, require_ms_ssim
from .volumes import NiftiReader, VolumeReader, reader_config

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


@dataclass
class SetSummary:
    """What was read from one set of volumes."""

    count: int
    shapes: list[list[int]]
    value_min: float
    value_max: float
    source: str = ""

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "count": self.count,
            "shapes": self.shapes,
            "value_range": [self.value_min, self.value_max],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SetSummary:
        return cls(
            count=int(data["count"]),
            shapes=[list(s) for s in data["shapes"]],
            value_min=float(data["value_range"][0]),
            value_max=float(data["value_range"][1]),
            source=str(data.get("source", "")),
        )


def embed_volumes(
    paths: Sequence[Path],
    extractor: MedicalNetFeatureExtractor,
    read: VolumeReader,
    progress: ProgressCallback | None = None,
    task: str = "embed",
) -> tuple[np.ndarray, SetSummary]:
    """Features [N, 2048] (float64) of exactly the N volumes given, read one at a time, plus what was seen."""
    tracker = ProgressTracker(progress, task, total=len(paths))
    rows: list[np.ndarray] = []
    shapes: list[list[int]] = []
    lo, hi = math.inf, -math.inf
    for path in paths:
        volume = read(Path(path))
        if list(volume.shape) not in shapes:
            shapes.append(list(volume.shape))
        lo, hi = min(lo, float(np.min(volume))), max(hi, float(np.max(volume)))
        rows.append(extractor.features(volume))
        tracker.advance()
    features = np.stack(rows) if rows else np.zeros((0, 2048))
    return features, SetSummary(count=len(rows), shapes=shapes, value_min=lo, value_max=hi)


def summarize_volumes(
    paths: Sequence[Path], read: VolumeReader, progress: ProgressCallback | None = None, task: str = "read"
) -> SetSummary:
    """Shapes and value range of the volumes, read one at a time (what is checked when nothing is embedded)."""
    tracker = ProgressTracker(progress, task, total=len(paths))
    shapes: list[list[int]] = []
    lo, hi = math.inf, -math.inf
    for path in paths:
        volume = read(Path(path))
        if list(volume.shape) not in shapes:
            shapes.append(list(volume.shape))
        lo, hi = min(lo, float(np.min(volume))), max(hi, float(np.max(volume)))
        tracker.advance()
    return SetSummary(count=len(paths), shapes=shapes, value_min=lo, value_max=hi)


def real_statistics_key(paths: Sequence[Path], extractor: MedicalNetFeatureExtractor, read: VolumeReader) -> dict:
    """The configuration that determines the real-set statistics (hashed into the cache key)."""
    files = []
    for path in paths:
        stat = Path(path).stat()
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return {
        "cache_format": CACHE_FORMAT_VERSION,
        "features": extractor.config,
        "preprocessing": reader_config(read),
        "files": files,
    }


def real_statistics(
    paths: Sequence[Path],
    extractor: MedicalNetFeatureExtractor,
    read: VolumeReader,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[FeatureStatistics, SetSummary, str]:
    """Statistics of the real set, from the cache when it holds them for this exact configuration.

    Returns ``(statistics, summary, cache_status)``; on a cache hit the summary is the stored one. The status
    is ``"hit"``, ``"miss"`` (computed and stored) or ``"disabled"``.
    """
    if cache_dir is None:
        features, summary = embed_volumes(paths, extractor, read, progress, task="embed-real")
        return FeatureStatistics.from_features(features), summary, "disabled"
    key = real_statistics_key(paths, extractor, read)
    cache_file = Path(cache_dir) / f"real-{config_hash(key)[:24]}.npz"
    cached = FeatureStatistics.load(cache_file, key)
    usable = cached is not None and cached.features is not None and "summary" in (cached.meta or {})
    if usable and cached.count == len(paths):
        logger.info("Real-set statistics read from %s (%d volumes)", cache_file, cached.count)
        return cached, SetSummary.from_dict(cached.meta["summary"]), "hit"
    features, summary = embed_volumes(paths, extractor, read, progress, task="embed-real")
    stats = FeatureStatistics.from_features(features)
    stats.meta = {"summary": summary.to_dict()}
    try:
        stats.save(cache_file, key)
        logger.info("Real-set statistics stored in %s", cache_file)
    except OSError as exc:
        logger.warning("Could not store real-set statistics in %s (%s); continuing without cache", cache_file, exc)
    return stats, summary, "miss"


@dataclass
class EvaluationReport:
    """Everything one evaluation measured, with the protocol it followed and its caveats."""

    fid: float | None
    kid: KIDResult | None
    n_real: int
    n_fake: int
    real: SetSummary | None
    fake: SetSummary
    ms_ssim: MSSSIMResult | None
    feature_config: dict | None
    cache_status: str
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)  # metric -> why

    def to_dict(self) -> dict:
        return {
            "wdmcore_version": __version__,
            "fid": None
            if self.fid is None
            else {
                "value": self.fid,
                "n_real": self.n_real,
                "n_fake": self.n_fake,
                "protocol": (f"{NETWORK_NAME}; float64 mean/covariance (N-1); paper: {FID_RECOMMENDED_N} per set"),
                "comparable_with_paper": min(self.n_real, self.n_fake) >= FID_RECOMMENDED_N,
            },
            "kid": None if self.kid is None else {**self.kid.to_dict(), "kernel": "(x.y/2048 + 1)^3, unbiased MMD^2"},
            "ms_ssim": None if self.ms_ssim is None else self.ms_ssim.to_dict(),
            "not_computed": dict(self.not_computed),
            "real": None if self.real is None else self.real.to_dict(),
            "fake": self.fake.to_dict(),
            "features": self.feature_config,
            "real_statistics_cache": self.cache_status,
            "warnings": list(self.warnings),
            "timings_s": dict(self.timings_s),
        }

    def format_table(self) -> str:
        rows = []
        if self.fid is not None:
            rows.append(("FID (MedicalNet)", f"{self.fid:.4f}", f"N real {self.n_real}, N generated {self.n_fake}"))
        if self.kid is not None:
            detail = f"std {self.kid.std:.6f}, {self.kid.subsets} subsets of {self.kid.subset_size}"
            rows.append(("KID (MedicalNet)", f"{self.kid.mean:.6f}", detail))
        if self.ms_ssim is not None:
            m = self.ms_ssim
            detail = f"{m.pairs} pairs ({m.mode}), setting {m.settings.name}"
            rows.append(("MS-SSIM (generated)", f"{m.mean:.4f}", detail))
        width = [max(len(r[i]) for r in rows + [("metric", "value", "details")]) for i in range(3)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(("metric", "value", "details"), width, strict=True))]
        lines.append("  ".join("-" * w for w in width))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows]
        lines += [f"not computed: {metric}: {why}" for metric, why in self.not_computed.items()]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _range_warning(summary: SetSummary, what: str) -> str | None:
    if summary.value_min < -0.05 or summary.value_max > 1.05:
        return (
            f"{what} volumes span [{summary.value_min:.3g}, {summary.value_max:.3g}], not [0, 1]: the "
            "protocol compares volumes in [0, 1] (generated samples after (x + 1) / 2, real volumes "
            "preprocessed without the final 2x - 1). Rescale them, or the features are not comparable."
        )
    return None


def evaluate(
    real: Sequence[Path],
    fake: Sequence[Path],
    extractor: MedicalNetFeatureExtractor | None,
    real_reader: VolumeReader | None = None,
    fake_reader: VolumeReader | None = None,
    cache_dir: str | Path | None = None,
    ms_ssim_pairs: int | str | None = "all",
    ms_ssim_reduced: bool = False,
    seed: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    progress: ProgressCallback | None = None,
    device: str | None = None,
) -> EvaluationReport:
    """Evaluate generated volumes ``fake`` against real volumes ``real`` (lists of files).

    Args:
        extractor: the MedicalNet feature network (its device is used for MS-SSIM as well), or None: then
            FID and KID are not computed (the report's ``not_computed`` says so) and ``real`` is not read.
        real_reader: path -> volume in [0, 1] for the real files (training preprocessing without 2x - 1);
            default :class:`NiftiReader` (files already preprocessed).
        fake_reader: the same for generated files; default :class:`NiftiReader` (as saved, as released).
        cache_dir: folder for the real-set statistics cache; ``None`` disables it.
        ms_ssim_pairs: ``"all"``, a number of random pairs, or ``None`` to skip MS-SSIM.
        ms_ssim_reduced: allow the reduced MS-SSIM setting for volumes smaller than 112 voxels per side.
        seed: seeds the random MS-SSIM pairs and the KID subsets.
        progress: callback receiving the progress events (tasks ``embed-real``, ``embed-fake``, ``ms-ssim``;
            ``read-fake`` without an extractor).
        device: where MS-SSIM runs without an extractor (default CPU).
    """
    real_reader = real_reader or NiftiReader()
    fake_reader = fake_reader or NiftiReader()
    # Everything that can be known before reading a volume fails now: a missing package, too few volumes.
    if ms_ssim_pairs is not None:
        require_ms_ssim()
    measures = ([] if ms_ssim_pairs is None else ["MS-SSIM diversity"]) + ([] if extractor is None else ["FID"])
    if measures and len(fake) < 2:
        raise InputShapeError(too_few_volumes(" and ".join(measures), fake, generated=True))
    if extractor is not None and len(real) < 2:
        raise InputShapeError(too_few_volumes("FID", real, generated=False))
    if ms_ssim_pairs is not None and not ms_ssim_reduced and fake:
        # Fail before the (long) embedding rather than after it.
        shape = fake_reader(Path(fake[0])).shape
        released = MSSSIMSettings()
        if min(shape) < released.min_size:
            raise InputShapeError(
                f"The generated volumes are {tuple(shape)}; MS-SSIM with the released setting needs at least "
                f"{released.min_size} voxels per side. Ask for the reduced setting (--ms-ssim-reduced; not "
                "comparable with the paper) or skip MS-SSIM (--ms-ssim-pairs none)."
            )
    timings: dict[str, float] = {}
    notes: list[str] = []
    if extractor is None:
        return _without_features(
            fake, fake_reader, ms_ssim_pairs, ms_ssim_reduced, seed, progress, device or "cpu", timings, notes
        )

    start = time.perf_counter()
    real_stats, real_summary, cache_status = real_statistics(real, extractor, real_reader, cache_dir, progress)
    timings["embed_real"] = time.perf_counter() - start

    start = time.perf_counter()
    fake_features, fake_summary = embed_volumes(fake, extractor, fake_reader, progress, task="embed-fake")
    fake_stats = FeatureStatistics.from_features(fake_features)
    timings["embed_fake"] = time.perf_counter() - start

    small_sample = small_sample_message(real_stats.count, fake_stats.count)
    if small_sample:
        notes.append(small_sample)
    for summary, what in ((real_summary, "Real"), (fake_summary, "Generated")):
        if message := _range_warning(summary, what):
            notes.append(message)
            logger.warning(message)
    if sorted(real_summary.shapes) != sorted(fake_summary.shapes):
        message = (
            f"Real volumes have shapes {real_summary.shapes} and generated ones {fake_summary.shapes}; the "
            "protocol compares volumes of the same size (e.g. 128^3 against 128^3)."
        )
        notes.append(message)
        logger.warning(message)

    fid = fid_from_statistics(real_stats, fake_stats, warn=False)  # warned once, below
    kid = kernel_inception_distance(
        real_stats.features, fake_features, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )

    ms = _ms_ssim(fake, fake_reader, ms_ssim_pairs, ms_ssim_reduced, seed, extractor.device, progress, timings, notes)

    if small_sample:
        warnings.warn(small_sample, SmallSampleWarning, stacklevel=2)
        logger.warning(small_sample)
    return EvaluationReport(
        fid=fid,
        kid=kid,
        n_real=real_stats.count,
        n_fake=fake_stats.count,
        real=real_summary,
        fake=fake_summary,
        ms_ssim=ms,
        feature_config=extractor.config,
        cache_status=cache_status,
        warnings=notes,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )


def too_few_volumes(what: str, files: Sequence[str | Path], generated: bool) -> str:
    """The error for a set of fewer than 2 volumes, with the command that makes more."""
    got = f"got {len(files)}" + (f" in {Path(files[0]).parent}" if files else "")
    if not generated:
        return f"{what} needs at least 2 real volumes, {got}: give --real a folder with more (1000 in the paper)."
    folder = Path(files[0]).parent if files else Path("wdm_samples")
    more = folder.with_name(f"{folder.name}_4") if folder.name else Path("wdm_samples_4")
    model = _model_of(files[0]) if files else None
    sample = f"wdm sample{f' --model {model}' if model else ''} --num 4 --out {more}"
    return (
        f"{what} needs at least 2 generated volumes, {got}: generate more, e.g. `{sample}`, then evaluate them "
        f"with `--fake {more}`" + ("" if what == "FID" else "; or skip MS-SSIM with `--ms-ssim-pairs none`") + "."
    )


def _model_of(volume: str | Path) -> str | None:
    """The model named in the JSON sidecar `wdm sample` wrote beside ``volume``, when it is a model name."""
    import json

    from ..loading import is_model_name
    from ..volumes.writing import sidecar_path

    try:
        model = json.loads(sidecar_path(volume).read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError, WDMError):  # no sidecar, or not one of ours
        return None
    return model if isinstance(model, str) and model != "unnamed" and is_model_name(model) else None


NO_FEATURES = "needs the MedicalNet weights (--medicalnet resnet_50_23dataset.pth; see docs/evaluation.md)"


def _ms_ssim(fake, read, pairs, reduced, seed, device, progress, timings, notes) -> MSSSIMResult | None:
    if pairs is None:
        return None
    start = time.perf_counter()
    ms = ms_ssim_diversity(
        list(fake), read=read, pairs=pairs, seed=seed, reduced=reduced, device=device, progress=progress
    )
    timings["ms_ssim"] = time.perf_counter() - start
    if ms.settings.name != "released":
        notes.append(
            f"MS-SSIM used the {ms.settings.name} setting because the volumes are smaller than "
            f"{MSSSIMSettings().min_size} voxels per side; it is not comparable with the paper's."
        )
    return ms


def _without_features(fake, read, pairs, reduced, seed, progress, device, timings, notes) -> EvaluationReport:
    """The report of an evaluation without the feature network: MS-SSIM and what the files hold."""
    start = time.perf_counter()
    fake_summary = summarize_volumes(fake, read, progress, task="read-fake")
    timings["read_fake"] = time.perf_counter() - start
    if message := _range_warning(fake_summary, "Generated"):
        notes.append(message)
        logger.warning(message)
    ms = _ms_ssim(fake, read, pairs, reduced, seed, device, progress, timings, notes)
    return EvaluationReport(
        fid=None,
        kid=None,
        n_real=0,
        n_fake=fake_summary.count,
        real=None,
        fake=fake_summary,
        ms_ssim=ms,
        feature_config=None,
        cache_status="not used",
        warnings=notes,
        timings_s={k: round(v, 3) for k, v in timings.items()},
        not_computed={"FID": NO_FEATURES, "KID": NO_FEATURES},
    )
