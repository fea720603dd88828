"""MS-SSIM diversity of a set of volumes, computed with MONAI's ``MultiScaleSSIMMetric``.

WDM reports the mean MS-SSIM over all pairs of generated samples (lower = more diverse). Released setting:
3-D, data range 1, Gaussian kernel of size 7 and sigma 1.5, k1 0.01, k2 0.03, five scales with the weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333). MONAI requires every side to be at least ``kernel * (scales - 1)^2``
= 112 voxels for that setting (128^3 samples pass). Smaller volumes either raise :class:`InputShapeError` or,
when asked for, use a *reduced* setting: the most scales (at most 5) that fit with kernel 7, with the leading
weights renormalised to sum to 1. A reduced value is not comparable with the paper's and is labelled as such.

SSIM is symmetric in its two arguments, so the mean over the N(N-1) ordered pairs of the released code equals
the mean over the N(N-1)/2 unordered pairs computed here (half the work). For large N, ``pairs=K`` draws K
distinct unordered pairs with a seeded generator.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputShapeError
from ..events import ProgressCallback, ProgressTracker
from .dependencies import import_optional
from .medicalnet import resolve_device
from .volumes import VolumeReader

RELEASED_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_NEEDS = "MS-SSIM (MONAI's MultiScaleSSIMMetric)"


def require_ms_ssim() -> None:
    """Fail now, with the install command, when MS-SSIM's package is missing (before any volume is read)."""
    import_optional("monai.metrics", MS_SSIM_NEEDS)


@dataclass(frozen=True)
class MSSSIMSettings:
    """Parameters of MONAI's ``MultiScaleSSIMMetric`` (3-D). The defaults are WDM's released setting."""

    kernel_size: int = 7
    kernel_sigma: float = 1.5
    weights: tuple[float, ...] = RELEASED_WEIGHTS
    data_range: float = 1.0
    k1: float = 0.01
    k2: float = 0.03
    name: str = "released"

    @property
    def scales(self) -> int:
        return len(self.weights)

    @property
    def min_size(self) -> int:
        """Smallest side this setting accepts: MONAI's check, and a full kernel at the coarsest scale."""
        monai_rule = self.kernel_size * max(1, self.scales - 1) ** 2
        valid_rule = self.kernel_size * 2 ** (self.scales - 1)
        return max(monai_rule, valid_rule)

    @classmethod
    def reduced(cls, shape: Sequence[int], kernel_size: int = 7) -> MSSSIMSettings:
        """The released setting if ``shape`` allows it, else the most scales that fit (weights renormalised).

        Raises :class:`InputShapeError` if not even one scale (plain SSIM) fits.
        """
        side = min(shape)
        for scales in range(len(RELEASED_WEIGHTS), 0, -1):
            head = RELEASED_WEIGHTS[:scales]
            total = sum(head)
            weights = RELEASED_WEIGHTS if scales == len(RELEASED_WEIGHTS) else tuple(w / total for w in head)
            name = "released" if scales == len(RELEASED_WEIGHTS) else f"reduced-{scales}-scales"
            candidate = cls(kernel_size=kernel_size, weights=weights, name=name)
            if side >= candidate.min_size:
                return candidate
        raise InputShapeError(
            f"Volumes of shape {tuple(shape)} are too small for MS-SSIM with kernel {kernel_size}: every "
            f"side must be at least {kernel_size} voxels."
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["weights"] = list(self.weights)
        out["scales"] = self.scales
        out["min_size"] = self.min_size
        return out


def ms_ssim(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    settings: MSSSIMSettings | None = None,
    device: str | torch.device | None = "cpu",
) -> torch.Tensor:
    """MS-SSIM of volume pairs: ``a`` and ``b`` are [D, H, W] or [B, 1, D, H, W]; returns [B] (float32)."""
    MultiScaleSSIMMetric = import_optional("monai.metrics", MS_SSIM_NEEDS).MultiScaleSSIMMetric  # noqa: N806

    settings = settings or MSSSIMSettings()
    dev = resolve_device(device)
    x = torch.as_tensor(a)
    y = torch.as_tensor(b)
    if x.dim() == 3:
        x, y = x[None, None], y[None, None]
    if x.dim() != 5 or x.shape[1] != 1 or x.shape != y.shape:
        raise InputShapeError(
            f"MS-SSIM compares volumes of one shape, [D, H, W] or [B, 1, D, H, W]; got {tuple(x.shape)} and "
            f"{tuple(y.shape)}."
        )
    if min(x.shape[2:]) < settings.min_size:
        raise InputShapeError(
            f"MS-SSIM with the {settings.name} setting ({settings.scales} scales, "
            f"kernel {settings.kernel_size}) "
            f"needs at least {settings.min_size} voxels per side; the volumes are {tuple(x.shape[2:])}. "
            "Evaluate volumes of the model's full size (e.g. 128^3) or ask for the reduced setting "
            "(--ms-ssim-reduced, or MSSSIMSettings.reduced(shape)); reduced values are not comparable with "
            "the paper's."
        )
    metric = MultiScaleSSIMMetric(
        spatial_dims=3,
        data_range=settings.data_range,
        kernel_size=settings.kernel_size,
        kernel_sigma=settings.kernel_sigma,
        k1=settings.k1,
        k2=settings.k2,
        weights=settings.weights,
        reduction="none",
    )
    with torch.no_grad():
        values = metric(y_pred=x.to(dev, torch.float32), y=y.to(dev, torch.float32))
    return values.reshape(-1).cpu()


def pair_count(n: int) -> int:
    return n * (n - 1) // 2


def _pair_from_index(k: int, n: int) -> tuple[int, int]:
    """Unordered pair number ``k`` in the row-major order (0,1), (0,2), ..., (1,2), ... of ``n`` items."""
    b = 2 * n - 1
    i = int((b - math.sqrt(b * b - 8 * k)) // 2)
    # correct floating-point rounding at row boundaries
    while i > 0 and i * (2 * n - i - 1) // 2 > k:
        i -= 1
    while (i + 1) * (2 * n - i - 2) // 2 <= k:
        i += 1
    j = k - i * (2 * n - i - 1) // 2 + i + 1
    return i, j


def select_pairs(n: int, pairs: int | str = "all", seed: int = 0) -> list[tuple[int, int]]:
    """Unordered index pairs (i < j) of ``n`` volumes: all, or ``pairs`` distinct ones drawn with ``seed``.

    Asking for at least as many pairs as exist gives all pairs. The result is sorted, so that consecutive
    pairs share their first volume.
    """
    total = pair_count(n)
    if n < 2:
        raise InputShapeError(f"MS-SSIM diversity needs at least 2 volumes, got {n}.")
    if pairs == "all":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if isinstance(pairs, str) or int(pairs) < 1:
        raise ConfigError(f"pairs must be 'all' or a positive number of pairs, got {pairs!r}.")
    if int(pairs) >= total:
        return select_pairs(n, "all")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=int(pairs), replace=False))
    return [_pair_from_index(int(k), n) for k in chosen]


class _VolumeStore:
    """Volumes by index: all in memory when they fit in ``budget_bytes``, else the most recently used ones."""

    def __init__(self, items: Sequence[Path | np.ndarray | torch.Tensor], read: VolumeReader | None, budget_bytes):
        self.items = items
        self.read = read
        self.budget = budget_bytes
        self.cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.capacity: int | None = None

    def __getitem__(self, index: int) -> torch.Tensor:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        item = self.items[index]
        if isinstance(item, (str, Path)):
            if self.read is None:
                raise ConfigError("Volumes given as paths need a reader (e.g. NiftiReader()).")
            item = self.read(Path(item))
        volume = torch.as_tensor(np.asarray(item, dtype=np.float32) if not isinstance(item, torch.Tensor) else item)
        if self.capacity is None:
            self.capacity = max(2, self.budget // max(1, volume.numel() * 4))
        self.cache[index] = volume
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return volume


@dataclass
class MSSSIMResult:
    mean: float
    std: float
    min: float
    max: float
    pairs: int
    mode: str
    seed: int | None
    settings: MSSSIMSettings

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "pairs": self.pairs,
            "mode": self.mode,
            "seed": self.seed,
            "settings": self.settings.to_dict(),
        }


def ms_ssim_diversity(
    volumes: Sequence[Path | np.ndarray | torch.Tensor],
    read: VolumeReader | None = None,
    pairs: int | str = "all",
    seed: int = 0,
    settings: MSSSIMSettings | None = None,
    reduced: bool = False,
    device: str | torch.device | None = "cpu",
    batch_size: int = 1,
    progress: ProgressCallback | None = None,
    memory_budget_bytes: int = 2 << 30,
) -> MSSSIMResult:
    """Mean MS-SSIM over pairs of ``volumes`` (paths read with ``read``, or arrays [D, H, W] in [0, 1]).

    Args:
        pairs: ``"all"`` (as released; every unordered pair) or the number of distinct random pairs.
        seed: seed of the random pairs (ignored for ``"all"``).
        settings: MS-SSIM parameters; default the released ones (or the reduced ones if ``reduced``).
        reduced: for volumes smaller than the released setting allows, use :meth:`MSSSIMSettings.reduced`.
        batch_size: pairs per metric call (more is faster on a GPU, costs memory).
        progress: callback for ``progress`` events (task ``"ms-ssim"``).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    dev = resolve_device(device)
    index_pairs = select_pairs(len(volumes), pairs, seed)
    store = _VolumeStore(volumes, read, memory_budget_bytes)
    shape = tuple(store[0].shape)
    if settings is None:
        settings = MSSSIMSettings.reduced(shape) if reduced else MSSSIMSettings()
    tracker = ProgressTracker(progress, "ms-ssim", total=len(index_pairs))
    values: list[torch.Tensor] = []
    for start in range(0, len(index_pairs), batch_size):
        chunk = index_pairs[start : start + batch_size]
        left, right = [], []
        for i, j in chunk:
            a, b = store[i], store[j]
            if tuple(a.shape) != shape or tuple(b.shape) != shape:
                bad = i if tuple(a.shape) != shape else j
                raise InputShapeError(
                    f"MS-SSIM needs volumes of one shape: volume {bad} is {tuple(store[bad].shape)}, "
                    f"the first is {shape}. Evaluate one model's samples at a time."
                )
            left.append(a)
            right.append(b)
        batch_a = torch.stack(left)[:, None]
        batch_b = torch.stack(right)[:, None]
        values.append(ms_ssim(batch_a, batch_b, settings, dev))
        tracker.advance(len(chunk))
    result = torch.cat(values).double()
    mode = "all" if len(index_pairs) == pair_count(len(volumes)) else "random"
    return MSSSIMResult(
        mean=float(result.mean()),
        std=float(result.std()) if result.numel() > 1 else 0.0,
        min=float(result.min()),
        max=float(result.max()),
        pairs=len(index_pairs),
        mode=mode,
        seed=seed if mode == "random" else None,
        settings=settings,
    )
