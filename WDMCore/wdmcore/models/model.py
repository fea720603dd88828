"""A loaded model: network + diffusion + model card, and the simple sampling API.

>>> model = wdmcore.load_model("brats_unet_128_1200k.pt")          # preset detected from the keys
>>> volumes = model.sample(2, seed=42, sampler="ddim", steps=50)    # [2, 1, 128, 128, 128] in [0, 1]
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..diffusion import Diffusion, DiffusionConfig
from ..errors import CheckpointError, ConfigError, InputShapeError, NonFiniteError
from ..events import ProgressCallback, ProgressTracker
from ..networks import DiffusionNetwork, NetworkConfig, build_network
from ..samplers import CancelCheck, NoiseSource, StepCallback, default_calls, run_sampler
from ..vocabulary import DEFAULT_SAMPLER
from ..wavelets import from_coefficients
from .cards import validate_card
from .checkpoints import (
    check_finite_weights,
    check_network_weights,
    network_for_released,
    read_model_file,
    read_state_dict,
    save_model_file,
)
from .families import FAMILIES, detect_family, family_card


class WDMModel:
    """A diffusion network with its diffusion settings and model card, ready to sample."""

    def __init__(self, network: DiffusionNetwork, card: dict[str, Any]):
        validate_card(card)
        self.network = network.eval()
        self.card = card
        self.diffusion_config = DiffusionConfig.from_dict(card.get("diffusion", {}))
        self.diffusion = Diffusion(self.diffusion_config)
        size = card.get("image_size", 128)
        self.image_shape = tuple(int(s) for s in size) if isinstance(size, list) else (int(size),) * 3
        self.image_size = self.image_shape[0]
        factor = 2 * network.config.downsampling_factor
        if any(s % factor for s in self.image_shape):
            raise ConfigError(f"image size {size} must be a multiple of {factor} for this network.")
        self.task = card.get("task", "generate")
        self.condition_channels = network.config.in_channels - network.config.out_channels
        if (self.condition_channels > 0) != (self.task != "generate"):
            raise ConfigError(
                f"the card says task {self.task!r} but the network takes {self.condition_channels} conditioning "
                "channels; a 'generate' model has none, a conditional model needs them."
            )

    @property
    def input_names(self) -> list[str]:
        """The card's input names, in the network's channel order (empty for an unconditional model)."""
        return [item["name"] for item in self.card.get("inputs") or []]

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

    def sampling_defaults(self, sampler: str | None, steps: int | None, quality: str = "default") -> tuple[str, int]:
        """(sampler, network calls) for what the user gave (None: not given). A distilled student's card names the
        sampler and calls it was distilled for: they are the defaults; otherwise the engine's
        (:func:`wdmcore.samplers.default_calls`). Given values always win."""
        distilled = self.card.get("distilled") or {}
        if sampler is None:
            sampler = distilled.get("sampler") or DEFAULT_SAMPLER
        if steps is None and distilled and sampler == distilled["sampler"]:
            return sampler, int(distilled["calls"])
        return sampler, default_calls(sampler, steps, quality)

    def distilled_timesteps(self, sampler: str, steps: int) -> list[int] | None:
        """The timesteps a student was distilled for, when it is run with the sampler and calls of its card
        (None otherwise: the sampler's own spacing)."""
        distilled = self.card.get("distilled") or {}
        if distilled and sampler == distilled["sampler"] and int(steps) == int(distilled["calls"]):
            return [int(t) for t in distilled["timesteps"]]
        return None

    def noise_source(self, seeds: list[int]) -> NoiseSource:
        """The random streams of a batch, following the released script's recipe for this model's family."""
        draws = int((self.card.get("sampling") or {}).get("int64_draws_before_noise", 0))
        return NoiseSource(seeds, self.device, int64_draws=draws)

    def check_condition(self, condition: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """The conditioning coefficients on the model's device, checked against the network ([B or 1, C, ...])."""
        if not self.condition_channels:
            if condition is not None:
                raise ConfigError("this model is unconditional (task 'generate'); it takes no condition.")
            return None
        if condition is None:
            raise ConfigError(
                f"this {self.task} model needs its conditioning coefficients ({self.condition_channels} channels: "
                f"{', '.join(self.input_names)}); use wdmcore.{self.task}() to assemble them from volumes."
            )
        condition = torch.as_tensor(condition).to(self.device, torch.float32)
        if (
            condition.dim() != 5
            or condition.shape[1] != self.condition_channels
            or condition.shape[0] not in (1, batch)
        ):
            raise InputShapeError(
                f"condition must be [{batch} or 1, {self.condition_channels}, D, H, W], got {tuple(condition.shape)}."
            )
        factor = self.network.config.downsampling_factor
        if any(s % factor for s in condition.shape[2:]):
            raise InputShapeError(
                f"condition spatial sizes {tuple(condition.shape[2:])} must be multiples of {factor} for this network."
            )
        return condition.expand(batch, *condition.shape[1:])

    @torch.inference_mode()
    def sample_coefficients(
        self,
        seeds: list[int],
        *,
        sampler: str = "ancestral",
        steps: int | None = None,
        eta: float = 0.0,
        condition: torch.Tensor | None = None,
        on_step: StepCallback | None = None,
        cancel: CancelCheck | None = None,
        network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One batch: coefficients [len(seeds), 8, D/2, H/2, W/2], sample i from seed ``seeds[i]``.

        ``sampler``: "ancestral" (the released sampler; respaced when ``steps`` is below the model's step count),
        "ddim", "dpm++2m", "dpm++2m-sde" or "unipc" (see :mod:`wdmcore.samplers`); ``steps`` defaults to the full
        schedule; a distilled student run with the sampler and calls of its card uses its card's timesteps.
        ``condition`` (conditional models): the assembled conditioning coefficients in the released channel
        order (cWDM: the given sequences' packs; fastWDM3D: voided image pack, then mask pack); the output grid
        is the condition's. ``network``: the call that runs the network (:func:`wdmcore.backends.network_call`;
        default: this model's PyTorch network as it is)."""
        condition = self.check_condition(condition, len(seeds))
        spatial = condition.shape[2:] if condition is not None else tuple(s // 2 for s in self.image_shape)
        noise = self.noise_source(seeds)
        x = noise.initial((self.network.config.out_channels, *spatial))
        steps = self.diffusion.num_timesteps if steps is None else steps
        return run_sampler(
            sampler,
            self.network if network is None else network,
            self.diffusion,
            x,
            noise,
            steps=steps,
            timesteps=self.distilled_timesteps(sampler, steps),
            eta=eta,
            on_step=on_step,
            cancel=cancel,
            condition=condition,
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
        if self.task != "generate":
            raise ConfigError(
                f"this is a {self.task} model: it needs inputs ({', '.join(self.input_names)}); use "
                f"wdmcore.{self.task}() or `wdm {self.task}` instead of sampling it unconditionally."
            )
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


def _build_checked(
    config: NetworkConfig, state_dict: dict[str, torch.Tensor], source: str, device: torch.device | str
) -> DiffusionNetwork:
    """Build on the meta device, compare with the weights, and only then allocate and load.

    No random initialisation (every weight is overwritten), and a config (from a card or arguments) that asks
    for more than the file holds is refused before any memory is allocated for it."""
    with torch.device("meta"):
        network = build_network(config)
    check_network_weights(network, state_dict, source)
    check_finite_weights(state_dict, source)
    network = network.to_empty(device=device)
    network.load_state_dict(state_dict, strict=False)
    return network


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


def load_checkpoint(
    source: str | os.PathLike,
    *,
    preset: str | None = None,
    official_args: dict[str, Any] | None = None,
    family: str | None = None,
    device: torch.device | str = "cpu",
    card: dict[str, Any] | None = None,
) -> WDMModel:
    """Load a released ``.pt`` state dict or one of our ``.safetensors`` files (card included).

    For a released file the network is the preset detected from the keys and shapes (or the one given), or
    the one the released code builds from ``official_args`` (its ``create_model_and_diffusion`` arguments);
    the diffusion is that of the codebase the arguments or preset describe (wdm-3d, cWDM or fastWDM3D;
    ``family`` overrides). ``card`` entries are merged over the file's card and validated. A model *name*
    is resolved to its file one floor up, by :func:`wdmcore.load_model` (:mod:`wdmcore.loading`)."""
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}.")
    if card is not None:
        validate_card(card, source="the card given to load_model")
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"model file not found: {path}. Give the path of an existing .pt or .safetensors checkpoint, or a "
            "model name from `wdm models`."
        )
    if path.suffix == ".safetensors":
        tensors, file_card = read_model_file(path)
        config = NetworkConfig.from_dict(file_card["network"])
        network = _build_checked(config, tensors, str(path), device)
        return WDMModel(network, {**file_card, **(card or {})})

    state_dict = read_state_dict(path)
    config, detected = network_for_released(state_dict, preset, official_args)
    network = _build_checked(config, state_dict, str(path), device)
    fam = family or detect_family(official_args, detected)
    if official_args is not None:
        try:
            image_size: Any = int(official_args.get("image_size", 128))
        except (TypeError, ValueError):
            raise ConfigError(
                f"official args: image_size {official_args.get('image_size')!r} is not a number."
            ) from None
    else:
        from ..networks import preset_image_size

        image_size = preset_image_size(detected)
    if fam == "cwdm" and image_size == 224:
        image_size = [224, 224, 160]  # the released grid: BraTS cropped by 8 in-plane, 5 slices appended
    full_card = released_card(image_size, detected, path)
    full_card.update(family_card(fam, config, official_args))
    if official_args is not None:
        full_card["official_args"] = copy.deepcopy(official_args)
    full_card.update(card or {})
    return WDMModel(network, full_card)
