"""What each training step sees: the data order (:class:`StreamBatches`), the timestep and noise of each
sample (:func:`sample_draws`) and the learning rate (:func:`lr_at`).

Every draw depends on the seed and on the stream position only, never on the process count or on how the run
was interrupted: that is what makes a resumed run repeat an uninterrupted one exactly (see :mod:`.loop`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .config import TrainConfig


class StreamBatches:
    """Batch sampler over an endless stream of per-epoch permutations, starting at a given step.

    Yields, for each step from ``start_step`` to ``end_step``, this rank's share (a contiguous slice) of the
    global batch. Each epoch's permutation is ``torch.randperm(n)`` from a generator seeded ``seed + epoch``,
    as in ``DistributedSampler``.
    """

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int, end_step: int, rank=0, world=1):
        if global_batch % world:
            raise ConfigError(f"the batch size {global_batch} must be divisible by the number of processes ({world}).")
        self.n, self.batch, self.seed = n, global_batch, seed
        self.start, self.end, self.rank, self.world = start_step, end_step, rank, world
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if self._perm is None or self._perm[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=generator))
        return int(self._perm[1][offset])

    def positions(self, step: int) -> list[int]:
        per_rank = self.batch // self.world
        first = step * self.batch + self.rank * per_rank
        return list(range(first, first + per_rank))

    def __iter__(self):
        for step in range(self.start, self.end):
            yield [self._index(q) for q in self.positions(step)]

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def sample_draws(seed: int, positions: list[int], image_shape, num_timesteps: int, low_noise_share: float = 0.0):
    """Timesteps [b] and image-space noise [b, 1, S, S, S] of the samples at these stream positions.

    With ``low_noise_share`` > 0 that share of the samples (on average) gets a timestep below 5 % of the schedule;
    the extra draws come after the noise, so a run with share 0 draws exactly what it always did.
    """
    ts, noises = [], []
    low_end = max(1, num_timesteps // 20)
    for q in positions:
        state = np.random.SeedSequence([int(seed), int(q), 0x5744]).generate_state(2, dtype=np.uint64)
        generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
        t = torch.randint(0, num_timesteps, (1,), generator=generator)
        noises.append(torch.randn((1, *image_shape), generator=generator))
        if low_noise_share > 0 and torch.rand((1,), generator=generator).item() < low_noise_share:
            t = torch.randint(0, low_end, (1,), generator=generator)
        ts.append(t)
    return torch.cat(ts), torch.cat(noises)


def lr_at(config: TrainConfig, step: int) -> float:
    """The learning rate of ``step``: linear warm-up over ``lr_warmup_steps``, then constant."""
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    return config.lr
