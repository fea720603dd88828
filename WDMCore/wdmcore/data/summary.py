"""What a dataset holds: counts, shapes, spacings, intensity ranges and the files that were skipped."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, WDMError
from ..events import ProgressCallback, ProgressTracker
from ..volumes.reading import (
    affine_spacing,
    check_usable_header,
    check_usable_voxels,
    load_volume,
    read_header,
    reason_without_path,
)
from .discovery import Case, discover, files_passed_over
from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

MAX_LISTED = 20  # files in another format listed one by one in the text report


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class CaseSummary:
    """One usable case: its source geometry and (when the voxels were read) its raw intensity range."""

    id: str
    path: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    intensity_min: float | None = None
    intensity_max: float | None = None


def _fmt_shape(shape) -> str:
    return "x".join(str(int(n)) for n in shape)


def _fmt_spacing(spacing) -> str:
    return "x".join(f"{float(s):.4g}" for s in spacing)


@dataclass
class DatasetSummary:
    """Summary of a dataset. ``str(summary)`` is a readable report; :meth:`save_json` writes it as JSON."""

    count: int
    cases: list[CaseSummary] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    config: dict[str, Any] | None = None
    output_shape: tuple[int, int, int] | None = None
    warnings: list[str] = field(default_factory=list)
    # Files below the folder that are not volumes wdm reads: image files in other formats (with what to do),
    # and a count of the other files by ending.
    not_read: list[SkippedFile] = field(default_factory=list)
    other_files: dict[str, int] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, int]:
        """Source shapes ("240x240x155") and how many cases have each."""
        return dict(Counter(_fmt_shape(c.shape) for c in self.cases).most_common())

    @property
    def spacings(self) -> dict[str, int]:
        """Source voxel sizes in mm ("1x1x1") and how many cases have each."""
        return dict(Counter(_fmt_spacing(c.spacing) for c in self.cases).most_common())

    @property
    def intensity_range(self) -> tuple[float, float] | None:
        """(lowest minimum, highest maximum) of the raw intensities, when they were read."""
        lows = [c.intensity_min for c in self.cases if c.intensity_min is not None]
        highs = [c.intensity_max for c in self.cases if c.intensity_max is not None]
        return (min(lows), max(highs)) if lows else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = self.shapes
        d["spacings"] = self.spacings
        d["intensity_range"] = self.intensity_range
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSummary:
        return cls(
            count=d["count"],
            cases=[
                CaseSummary(**{**c, "shape": tuple(c["shape"]), "spacing": tuple(c["spacing"])})
                for c in d.get("cases", [])
            ],
            skipped=[SkippedFile(**s) for s in d.get("skipped", [])],
            config=d.get("config"),
            output_shape=tuple(d["output_shape"]) if d.get("output_shape") else None,
            warnings=list(d.get("warnings", [])),
            not_read=[SkippedFile(**s) for s in d.get("not_read", [])],
            other_files=dict(d.get("other_files", {})),
        )

    @classmethod
    def load_json(cls, path: str | Path) -> DatasetSummary:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_text(self) -> str:
        first = f"{self.count} usable volume(s), {len(self.skipped)} skipped"
        if self.not_read:
            first += f", {len(self.not_read)} image file(s) in a format wdm does not read"
        lines = [first]
        if self.config:
            cfg = ", ".join(f"{k}={v}" for k, v in self.config.items())
            lines.append(f"preprocessing: {cfg}")
        if self.output_shape:
            lines.append(f"output shape: {_fmt_shape(self.output_shape)}")
        if self.cases:
            lines.append("source shapes: " + ", ".join(f"{k} ({v})" for k, v in self.shapes.items()))
            lines.append("source spacings (mm): " + ", ".join(f"{k} ({v})" for k, v in self.spacings.items()))
        rng = self.intensity_range
        if rng is not None:
            lines.append(f"intensity range: [{rng[0]:.6g}, {rng[1]:.6g}]")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        if self.skipped:
            lines.append("skipped:")
            lines.extend(f"  {s.path}: {s.reason}" for s in self.skipped)
        if self.not_read:
            lines.append("not read (not a volume format wdm reads):")
            lines.extend(f"  {s.path}: {s.reason}" for s in self.not_read[:MAX_LISTED])
            if len(self.not_read) > MAX_LISTED:
                lines.append(f"  (+{len(self.not_read) - MAX_LISTED} more; --json lists them all)")
        if self.other_files:
            endings = ", ".join(f"{ending} {n}" for ending, n in self.other_files.items())
            lines.append(f"other files, not volumes: {sum(self.other_files.values())} ({endings})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def spacing_warning(cases: list[CaseSummary], config: PreprocessConfig | None) -> list[str]:
    """A warning when voxel sizes differ and nothing resamples them to a common spacing."""
    if config is not None and (config.preset != "general" or config.spacing is not None):
        return []
    spacings = {tuple(round(s, 3) for s in c.spacing) for c in cases}
    if len(spacings) > 1:
        return [
            f"voxel sizes differ ({len(spacings)} distinct), so equal cubes cover different physical "
            "extents; "
            "pass --spacing MM to `wdm train` (spacing= in the Python API) to resample to one voxel size"
        ]
    return []


def summarize(
    source: str | Path | list[Case] | Any,
    config: PreprocessConfig | None = None,
    *,
    read_voxels: bool = True,
    progress: ProgressCallback | None = None,
) -> DatasetSummary:
    """Summarize a dataset folder or list file, a list of cases, or a :class:`VolumeDataset`.

    With ``read_voxels`` every volume is read to get its intensity range (and to find corrupt files);
    otherwise only headers are read. Unusable files are listed in ``skipped`` with the reason. A
    ``VolumeDataset`` is summarized from what it already knows (its headers and cache).
    """
    summary_of = getattr(source, "summary", None)
    if callable(summary_of):
        return summary_of()
    cases = discover(source) if isinstance(source, str | Path) else list(source)
    tracker = ProgressTracker(progress, "summarize", total=len(cases))
    good: list[CaseSummary] = []
    skipped: list[SkippedFile] = []
    for case in cases:
        try:
            # The checks training applies (check_usable_header, check_usable_voxels): what is called usable here
            # is what `wdm train` accepts.
            header = read_header(case.path)
            shape = check_usable_header(header, case.path)
            if read_voxels:
                data, affine = load_volume(case.path, np.float32)
                try:
                    check_usable_voxels(data)
                except DataError as exc:
                    raise DataError(f"{case.path}: {exc}") from None
                good.append(
                    CaseSummary(
                        case.id,
                        str(case.path),
                        tuple(int(n) for n in data.shape),
                        affine_spacing(affine),
                        float(data.min()),
                        float(data.max()),
                    )
                )
                del data
            else:
                good.append(CaseSummary(case.id, str(case.path), shape, header.spacing))
        except WDMError as exc:
            reason = reason_without_path(str(exc), case.path)
            log.info("skipped %s: %s", case.path, reason)  # listed in the summary; a warning would say it twice
            skipped.append(SkippedFile(str(case.path), reason))
        tracker.advance()
    return DatasetSummary(
        count=len(good),
        cases=good,
        skipped=skipped,
        config=config.to_dict() if config is not None else None,
        output_shape=(config.size,) * 3 if config is not None and config.size else None,
        warnings=spacing_warning(good, config),
    )


# -- `wdm summarize` -------------------------------------------------------------------------------------------


def summarize_path(
    path: str | Path,
    format: str = "auto",
    sequence: str = "t1n",
    *,
    read_voxels: bool = True,
    progress: ProgressCallback | None = None,
) -> tuple[str, DatasetSummary]:
    """(detected layout, summary) of a dataset path, found the way ``wdm train`` finds it."""
    from .discovery import detect_format

    layout = format
    if layout == "auto":
        layout = detect_format(path)
    cases = discover(path, format=layout, sequence=sequence)
    summary = summarize(cases, read_voxels=read_voxels, progress=progress)
    images, summary.other_files = files_passed_over(path)
    summary.not_read = [SkippedFile(str(f), reason) for f, reason in images]
    return layout, summary
