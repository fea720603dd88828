"""The loss of one training step, as the loop calls it: ``objective(model, item, positions, device)``.

The loop owns everything around the step (data order, optimiser, EMA, checkpoints, resume, processes, events,
stop); an objective turns one batch into ``(loss, per-band losses [8])``. Its random draws must depend only on the
seed and the batch's stream ``positions`` (see :func:`.schedule.sample_draws`), so that a resumed or
distributed run repeats an uninterrupted one. :class:`DiffusionObjective` is the released diffusion loss that
``wdm train`` uses; :class:`wdmcore.distill.DistillationObjective` is the one ``wdm distill`` uses.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..diffusion import Diffusion, DiffusionConfig
from ..errors import ConfigError
from .config import TrainConfig
from .schedule import sample_draws


class Objective(Protocol):
    def __call__(
        self, model: torch.nn.Module, item: Any, positions: list[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def check_item(item: Any, size: int) -> torch.Tensor:
    """The image batch [B, 1, S, S, S] of a data loader item (an image batch, or a tuple that starts with one)."""
    image = item[0] if isinstance(item, (tuple, list)) else item
    if image.dim() != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != (size,) * 3:
        raise ConfigError(
            f"the dataset gives batches of shape {tuple(image.shape)}, but the run trains on [B, 1, {size}, "
            f"{size}, {size}]; preprocess the data to {size}^3 or set image_size to the data's size."
        )
    return image


class DiffusionObjective:
    """The paper's loss (:meth:`Diffusion.training_loss`) at a timestep drawn uniformly per sample."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.diffusion = Diffusion(DiffusionConfig.from_dict(config.diffusion))

    def __call__(self, model, item, positions, device):
        c = self.config
        image = check_item(item, c.image_size).to(device, non_blocking=True)
        t, noise = sample_draws(c.seed, positions, (1, *(c.image_size,) * 3), self.diffusion.num_timesteps,
                                c.low_noise_share)  # fmt: skip
        return self.diffusion.training_loss(model, image, t.to(device), noise_image=noise.to(device))
