"""A loaded model: network + diffusion + model card, and the simple sampling API.

>>> model = wdmcore.load_model("brats_unet_128_1200k.pt")          # preset detected from the keys
>>> volumes = model.sample(2, seed=42, sampler="ddim", steps=50)    # [2, 1, 128, 128, 128] in [0, 1]
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import torch

from ..diffusion import Diffusion, DiffusionConfig
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..events import ProgressCallback, ProgressTracker
from ..networks import DiffusionNetwork, NetworkConfig, build_network
from ..samplers import CancelCheck, NoiseSource, StepCallback, run_sampler
from ..wavelets import from_coefficients
from .checkpoints import (
    load_network_weights,
    network_for_released,
    read_model_file,
    read_state_dict,
    save_model_file,
)


class WDMModel:
    """A diffusion network with its diffusion settings and model card, ready to sample."""

    def __init__(self, network: DiffusionNetwork, card: dict[str, Any]):
        self.network = network.eval()
        self.card = card
        self.diffusion_config = DiffusionConfig.from_dict(card.get("diffusion", {}))
        self.diffusion = Diffusion(self.diffusion_config)
        self.image_size = int(card["image_size"])
        factor = 2 * network.config.downsampling_factor
        if self.image_size % factor:
            raise ConfigError(f"image size {self.image_size} must be a multiple of {factor} for this network.")

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> WDMModel:
        self.network.to(device)
        return self

    def sampling_diffusion(self, steps: int) -> Diffusion:
        if steps == self.diffusion.num_timesteps:
            return self.diffusion
        if not 1 <= steps <= self.diffusion.num_timesteps:
            raise ConfigError(f"steps must be between 1 and {self.diffusion.num_timesteps}, got {steps}.")
        return self.diffusion.respaced(steps)

    @torch.inference_mode()
    def sample_coefficients(
        self,
        seeds: list[int],
        *,
        sampler: str = "ancestral",
        steps: int = 1000,
        eta: float = 0.0,
        on_step: StepCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> torch.Tensor:
        """One batch: coefficients [len(seeds), 8, S/2, S/2, S/2], sample i from seed ``seeds[i]``.

        ``sampler``: "ancestral" (the released sampler; respaced when ``steps`` < 1000), "ddim", "dpm++2m",
        "dpm++2m-sde" or "unipc" (see :mod:`wdmcore.samplers`)."""
        half = self.image_size // 2
        noise = NoiseSource(seeds, self.device)
        x = noise.initial((self.network.config.in_channels, half, half, half))
        return run_sampler(
            sampler, self.network, self.diffusion, x, noise, steps=steps, eta=eta, on_step=on_step, cancel=cancel
        )

    def sample(
        self,
        num: int = 1,
        *,
        seed: int = 0,
        sampler: str = "ancestral",
        steps: int = 1000,
        batch_size: int = 1,
        eta: float = 0.0,
        on_progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """``num`` volumes [num, 1, S, S, S] in [0, 1] (on the CPU), as the released sampler outputs them.

        Sample i uses seed ``seed + i`` whatever the batch size. The defaults are the paper's sampler:
        1000 ancestral steps. ``progress=True`` shows a progress bar on stderr.
        """
        if num < 1 or batch_size < 1:
            raise ConfigError("num and batch_size must be at least 1.")
        if progress:
            from ..progressbar import ProgressBars, combine

            with ProgressBars() as bars:
                callback = combine(on_progress, bars)
                return self.sample(num, seed=seed, sampler=sampler, steps=steps, batch_size=batch_size, eta=eta,
                                   on_progress=callback, cancel=cancel)  # fmt: skip
        tracker = ProgressTracker(on_progress, "sample", total=num * steps)
        outputs = []
        for start in range(0, num, batch_size):
            seeds = [seed + i for i in range(start, min(num, start + batch_size))]
            advance = functools.partial(_advance_by, tracker, len(seeds))
            coeffs = self.sample_coefficients(
                seeds,
                sampler=sampler,
                steps=steps,
                eta=eta,
                on_step=advance,
                cancel=cancel,
            )
            image = from_coefficients(coeffs.float(), self.diffusion_config.lll_scale)
            if not bool(torch.isfinite(image).all()):
                raise NonFiniteError(
                    f"sampling seeds {seeds} produced NaN or infinite values: the weights or the card's diffusion "
                    f"settings ({self.diffusion_config.to_dict()}) do not make a working sampler."
                )
            # Clamped: the inverse wavelet transform can overshoot [-1, 1] by rounding (about 1e-7).
            outputs.append(((image + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(outputs)

    def save(self, path: str | os.PathLike, **card_updates: Any) -> Path:
        """Write this model as one of our ``.safetensors`` files (weights + card)."""
        card = {**self.card, **card_updates, "diffusion": self.diffusion_config.to_dict()}
        return save_model_file(path, self.network, card)


def _advance_by(tracker: ProgressTracker, n: int, *_step_info: Any) -> None:
    tracker.advance(n)


def _build_on_meta(config: NetworkConfig, device: torch.device | str) -> DiffusionNetwork:
    # Skip random initialisation: every weight is about to be overwritten by the checkpoint.
    with torch.device("meta"):
        network = build_network(config)
    return network.to_empty(device=device)


def released_card(image_size: int, preset: str | None, source: Path) -> dict[str, Any]:
    """The card of a released-format checkpoint when the catalogue does not provide one."""
    return {
        "name": source.stem,
        "description": "checkpoint in the released WDM format",
        "preset": preset,
        "image_size": image_size,
        "diffusion": DiffusionConfig().to_dict(),
        # The released sampler writes 1 mm voxels with an identity affine; the true geometry depends on the
        # training data and is only known for catalogue models.
        "geometry": {"spacing_mm": [1.0, 1.0, 1.0], "known": False},
        "intensity": "[0, 1] as produced by the released preprocessing (not calibrated)",
    }


def load_model(
    source: str | os.PathLike,
    *,
    preset: str | None = None,
    official_args: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    card: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
) -> WDMModel:
    """Load a released ``.pt`` state dict (preset detected from the keys and shapes unless given, or built from
    the released code's ``official_args``), one of our ``.safetensors`` files (card included), or a model by its
    name in the catalogue or among the imported models (``wdm models``; downloaded and verified on first use,
    with ``on_progress`` receiving the download's events)."""
    path = Path(source).expanduser()
    if not path.exists() and is_model_name(os.fspath(source)):
        return _load_named(os.fspath(source), preset=preset, device=device, card=card, on_progress=on_progress)
    if not path.is_file():
        raise CheckpointError(
            f"model file not found: {path}. Give the path of an existing .pt or .safetensors checkpoint, or a "
            "model name from `wdm models`."
        )
    if path.suffix == ".safetensors":
        tensors, file_card = read_model_file(path)
        config = NetworkConfig.from_dict(file_card["network"])
        network = _build_on_meta(config, device)
        load_network_weights(network, tensors, str(path))
        return WDMModel(network, {**file_card, **(card or {})})

    state_dict = read_state_dict(path)
    config, detected = network_for_released(state_dict, preset, official_args)
    network = _build_on_meta(config, device)
    load_network_weights(network, state_dict, str(path))
    if official_args is not None:
        image_size = int(official_args.get("image_size", 128))
    else:
        from ..networks import preset_image_size

        image_size = preset_image_size(detected)
    full_card = released_card(image_size, detected, path)
    if official_args is not None:
        full_card["official_args"] = copy.deepcopy(official_args)
    full_card.update(card or {})
    return WDMModel(network, full_card)


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def is_model_name(text: str) -> bool:
    """Whether ``text`` reads as a model name rather than a file path (no folder, no checkpoint ending)."""
    return bool(text) and "/" not in text and os.sep not in text and Path(text).suffix not in CHECKPOINT_SUFFIXES


def _load_named(
    name: str,
    *,
    preset: str | None,
    device: torch.device | str,
    card: dict[str, Any] | None,
    on_progress: ProgressCallback | None,
) -> WDMModel:
    from .. import hub

    info = hub.get_model_info(name)  # ConfigError listing the known names and how to import a file
    file = hub.fetch(name, on_progress=on_progress)
    catalogue_card = {k: v for k, v in info.card.items() if k not in ("image_size", "note")}
    if file.suffix == ".safetensors":
        loaded = load_model(file, device=device)
        # The file's own card is authoritative; the catalogue only fills gaps.
        loaded.card = {**catalogue_card, **loaded.card, "name": loaded.card.get("name") or info.name, **(card or {})}
        return loaded
    named = {**catalogue_card, "name": info.name, "description": info.description, **(card or {})}
    return load_model(file, preset=preset or info.preset, card=named, device=device)
