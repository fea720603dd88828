"""The torch Dataset the trainer reads: preprocessed cubes [1, S, S, S] in [-1, 1] (or [0, 1])."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, DiskFullError, WDMError
from ..events import ProgressCallback, ProgressTracker
from ..volumes.reading import check_usable_header, read_header, reason_without_path
from .cache import PreprocessCache
from .discovery import Case
from .preprocess import (
    BRATS_INPUT_SHAPE,
    LIDC_INPUT_SHAPE,
    PreparedVolume,
    PreprocessConfig,
    finalize,
    general_grid_shape,
    preprocess_01,
)
from .summary import CaseSummary, DatasetSummary, SkippedFile, spacing_warning

log = logging.getLogger(__name__)


class VolumeDataset(Dataset):
    """Preprocessed volumes for training: item ``i`` is ``(image, i)``, image a float32 [1, S, S, S] tensor.

    At construction every file header is checked; cases that cannot be used (unreadable file, not 3-D, wrong
    shape for the preset) are skipped and listed in :attr:`skipped` with the reason. With ``cache_dir`` every
    case is then preprocessed once into the cache (progress events with task "prepare"); cases that fail
    there (e.g. corrupt voxel data) are skipped too, and items are afterwards read memory-mapped. Without a
    cache each item is preprocessed when it is read. Raises :class:`DataError` if no case is usable.

    Works with DataLoader workers (the object holds only paths and the configuration).
    """

    def __init__(
        self,
        cases: Iterable[Case],
        config: PreprocessConfig | None = None,
        cache_dir: str | Path | None = None,
        *,
        progress: ProgressCallback | None = None,
    ):
        self.config = config if config is not None else PreprocessConfig()
        all_cases = list(cases)
        if not all_cases:
            raise DataError("no cases given; discover() a dataset folder or list file first")
        self.skipped: list[SkippedFile] = []
        self._summaries: dict[str, CaseSummary] = {}
        self.cases: list[Case] = []
        grid_shapes: dict[str, tuple[int, int, int]] = {}
        for case in all_cases:
            try:
                header = read_header(case.path)
                shape = check_usable_header(header, case.path)
                self._check_preset_shape(case, shape)
            except WDMError as exc:
                self._skip(case, exc)
                continue
            self.cases.append(case)
            self._summaries[str(case.path)] = CaseSummary(case.id, str(case.path), shape, header.spacing)
            if self.config.preset == "general":
                grid_shapes[case.id] = general_grid_shape(shape, header.affine, self.config)
        if self.config.preset == "general" and self.config.size is None and self.cases:
            self._check_native_grids(grid_shapes)

        self.cache = PreprocessCache(cache_dir) if cache_dir is not None else None
        if self.cache is not None:
            self._fill_cache(progress)
        if not self.cases:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in self.skipped[:5])
            raise DataError(f"none of the {len(all_cases)} case(s) is usable ({reasons})")
        log.info("dataset: %d usable case(s), %d skipped", len(self.cases), len(self.skipped))

    # ------------------------------------------------------------------------------------------ checks

    def _skip(self, case: Case, exc: Exception) -> None:
        reason = reason_without_path(str(exc), case.path)
        log.warning("skipped %s: %s", case.path, reason)
        self.skipped.append(SkippedFile(str(case.path), reason))

    def _check_preset_shape(self, case: Case, shape: tuple[int, int, int]) -> None:
        from ..errors import InputShapeError

        expected = {"brats": BRATS_INPUT_SHAPE, "lidc": LIDC_INPUT_SHAPE}.get(self.config.preset)
        if expected is not None and shape != expected:
            raise InputShapeError(
                f"{case.path}: the {self.config.preset} preset expects shape {expected}, got {shape}; "
                "use preset='general' with a size (and a spacing) for such volumes"
            )

    def _check_native_grids(self, grid_shapes: dict[str, tuple[int, int, int]]) -> None:
        counts = Counter(grid_shapes.values())
        if len(counts) > 1:
            listing = ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in counts.most_common(5))
            raise ConfigError(
                f"the volumes have different shapes after preprocessing ({listing}) and size=None keeps "
                "them; "
                "set size= to crop/pad every volume to one cube (and spacing= to resample them to one voxel "
                "size first)"
            )
        (shape,) = counts
        if len(set(shape)) != 1 or shape[0] % 2:
            raise ConfigError(
                f"the volumes have shape {shape}, which is not an even-sized cube, and size=None keeps it; "
                "set size= (an even number, e.g. 128) to crop/pad them to a cube"
            )

    def _fill_cache(self, progress: ProgressCallback | None) -> None:
        tracker = ProgressTracker(progress, "prepare", total=len(self.cases))
        usable = []
        hits = 0
        for case in self.cases:
            try:
                prepared, hit = self.cache.get_or_prepare(case, self.config)
            except DiskFullError:
                raise  # not the file's fault: skipping it (and every file after it) would lose data silently
            except (WDMError, ValueError, RuntimeError) as exc:  # numpy/torch failures on odd files: skipped too
                self._skip(case, exc)
                self._summaries.pop(str(case.path), None)
                tracker.advance(case=case.id, cached=False)
                continue
            hits += hit
            self._record_source(case, prepared)
            usable.append(case)
            tracker.advance(case=case.id, cached=bool(hit))
        log.info("cache %s: %d hit(s), %d prepared", self.cache.root, hits, len(usable) - hits)
        self.cases = usable

    def _record_source(self, case: Case, prepared: PreparedVolume) -> None:
        s = self._summaries.get(str(case.path))
        if s is not None:
            s.intensity_min = prepared.source.intensity_min
            s.intensity_max = prepared.source.intensity_max

    # ---------------------------------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.cases)

    def prepared01(self, index: int) -> PreparedVolume:
        """Item ``index`` before the final 2x - 1 (memory-mapped when cached)."""
        case = self.cases[index]
        if self.cache is not None:
            prepared, _ = self.cache.get_or_prepare(case, self.config)
            return prepared
        return preprocess_01(case, self.config)

    def prepared(self, index: int) -> PreparedVolume:
        """Item ``index`` as a :class:`PreparedVolume` (array in the configured range, affine, source)."""
        p = self.prepared01(index)
        array = finalize(np.array(p.array, dtype=np.float32), self.config.output_range01)
        return PreparedVolume(array=array, affine=p.affine, source=p.source, config=self.config)

    def affine(self, index: int) -> np.ndarray:
        return self.prepared01(index).affine

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        p = self.prepared01(index)
        array = finalize(np.array(p.array, dtype=np.float32), self.config.output_range01)
        return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0), index

    def summary(self) -> DatasetSummary:
        cases = [self._summaries[str(c.path)] for c in self.cases if str(c.path) in self._summaries]
        return DatasetSummary(
            count=len(self.cases),
            cases=cases,
            skipped=list(self.skipped),
            config=self.config.to_dict(),
            output_shape=(self.config.size,) * 3 if self.config.size else None,
            warnings=spacing_warning(cases, self.config),
        )
