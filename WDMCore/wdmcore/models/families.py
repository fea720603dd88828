"""The three released codebases of the WDM family and what each implies beyond the network.

* ``wdm`` (pfriedri/wdm-3d): unconditional generation, linear schedule over 1000 steps, LLL/3 packing, x0
  clipped to [-1, 1] in image space.
* ``cwdm`` (pfriedri/cwdm): missing-sequence synthesis. The network sees the noisy coefficients followed by
  the packed coefficients (LLL/3) of the given sequences; x0 is clipped to [0, 1]; the released sampler's data
  loader draws one int64 from the generator before the initial noise.
* ``fastwdm3d`` (AliciaDurrer/fastWDM3D): inpainting. Variance-preserving schedule (beta_min, beta_max) with
  T = 2 steps, all eight sub-bands divided by sqrt 8, x0 clipped to [-1, 1]; the network sees the noisy
  coefficients, the packed voided image, then the packed mask (-1 outside, +1 inside).

:func:`detect_family` reads the family from the released code's arguments; :func:`family_card` gives the
card entries (task, inputs, diffusion, sampling recipe) of a released checkpoint of that family.
"""

from __future__ import annotations

import math
from typing import Any

from ..diffusion import DiffusionConfig
from ..errors import ConfigError
from ..networks import NetworkConfig
from ..vocabulary import BRATS_SEQUENCES

FAMILIES = ("wdm", "cwdm", "fastwdm3d")
PRESET_FAMILY = {"cwdm-224": "cwdm", "fastwdm3d-128": "fastwdm3d"}
SQRT8 = math.sqrt(8.0)

# cWDM: the conditioning sequences of each target, in the network's channel order (the three others, in the
# fixed order t1n, t1c, t2w, t2f).
SEQUENCE_MEANINGS = {
    "t1n": "native T1-weighted MRI",
    "t1c": "contrast-enhanced T1-weighted MRI",
    "t2w": "T2-weighted MRI",
    "t2f": "T2-FLAIR MRI",
}


def cwdm_condition_order(target: str) -> list[str]:
    if target not in BRATS_SEQUENCES:
        raise ConfigError(f"unknown BraTS sequence {target!r}; choose one of {', '.join(BRATS_SEQUENCES)}.")
    return [s for s in BRATS_SEQUENCES if s != target]


def detect_family(official_args: dict[str, Any] | None, preset: str | None = None) -> str:
    """The codebase that released arguments (or a preset) describe."""
    if official_args is None:
        return PRESET_FAMILY.get(preset or "", "wdm")
    if "beta_min" in official_args or "beta_max" in official_args:
        return "fastwdm3d"
    try:
        in_channels = int(official_args.get("in_channels", 8))
    except (TypeError, ValueError):
        raise ConfigError(f"in_channels {official_args.get('in_channels')!r} must be a whole number.") from None
    return "cwdm" if in_channels > 8 else "wdm"


def diffusion_config(family: str, official_args: dict[str, Any] | None = None) -> DiffusionConfig:
    """The diffusion a released checkpoint of ``family`` was trained with (steps and betas from the args)."""
    args = official_args or {}
    try:
        if family == "wdm":
            return DiffusionConfig(steps=int(args.get("diffusion_steps", 1000)))
        if family == "cwdm":
            return DiffusionConfig(steps=int(args.get("diffusion_steps", 1000)), clip_min=0.0, clip_max=1.0)
        if family == "fastwdm3d":
            return DiffusionConfig(
                steps=int(args.get("diffusion_steps", 2)),
                schedule="vp",
                beta_min=float(args.get("beta_min", 0.1)),
                beta_max=float(args.get("beta_max", 20.0)),
                lll_scale=SQRT8,
                high_scale=SQRT8,
            )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"official args: diffusion_steps/beta_min/beta_max must be numbers ({exc}).") from None
    raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}.")


def family_card(family: str, network: NetworkConfig, official_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Card entries of a released checkpoint of ``family`` (a catalogue card may name the inputs better)."""
    card: dict[str, Any] = {"family": family, "diffusion": diffusion_config(family, official_args).to_dict()}
    extra = network.in_channels - network.out_channels
    if family == "wdm":
        if extra:
            raise ConfigError(
                f"a wdm-3d network takes {network.out_channels} input channels, this one {network.in_channels}; "
                "pass family='cwdm' or 'fastwdm3d' (or their official args) for a conditional model."
            )
        card["task"] = "generate"
    elif family == "cwdm":
        if extra <= 0 or extra % 8:
            raise ConfigError(
                f"a cWDM network takes 8 noisy + 8 per given sequence input channels, this one {network.in_channels}."
            )
        card["task"] = "synthesize"
        card["inputs"] = [
            {"name": f"condition_{i + 1}", "meaning": f"conditioning volume {i + 1}"} for i in range(extra // 8)
        ]
        card["preprocessing"] = {"kind": "cwdm-brats"}
        card["sampling"] = {"int64_draws_before_noise": 1}
        card["intensity"] = {"range": [0.0, 1.0], "meaning": "quantile-clipped, min-max scaled intensities"}
    elif family == "fastwdm3d":
        if extra != 16:
            raise ConfigError(
                f"a fastWDM3D network takes 8 noisy + 8 image + 8 mask input channels, this one {network.in_channels}."
            )
        card["task"] = "inpaint"
        card["inputs"] = [
            {"name": "image", "meaning": "the image with the region to fill"},
            {"name": "mask", "meaning": "the region to fill (non-zero inside)"},
        ]
        card["preprocessing"] = {"kind": "fastwdm3d-brats"}
    else:
        raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}.")
    return card


def cwdm_inputs(target: str) -> list[dict[str, str]]:
    """The ``inputs`` of a cWDM card producing ``target``: the three other sequences in network order."""
    return [{"name": s, "meaning": SEQUENCE_MEANINGS[s]} for s in cwdm_condition_order(target)]
