"""Model cards: the one validator for what a card may say.

A card travels with every model (in our ``.safetensors`` files, in the catalogue, in the cache records of
imported files) and says what the model does and how to use it:

* ``task``: ``generate`` (unconditional volumes), ``synthesize`` (a missing contrast from given ones) or
  ``inpaint`` (fill a masked region of an image); ``generate`` when absent.
* ``inputs`` (conditional models): a list of ``{"name", "meaning"}`` in the order the network expects their
  coefficients after the noisy ones (``inpaint``: ``image`` then ``mask``).
* ``preprocessing``: how real inputs are mapped into the network's space and back (``{"kind": ...}``).
* ``output``: what the produced volume is.
* ``network``, ``diffusion``, ``image_size``, geometry (``geometry``, ``spacing_mm``, ``direction``,
  ``origin_mm``, ``affine``, ``source_voxel_of_output_voxel``), ``intensity``, ``sampling`` and free-form
  informational keys (``name``, ``description``, ``training``, ...).

:func:`validate_card` checks every key it knows, whatever the card's origin, and raises one error naming the
key and what to write instead. Bounds on the network's size are checked here so that a hostile card can never
make the engine allocate a huge network: the weights are compared with the card's network on the meta device
before anything is allocated (see :func:`wdmcore.models.model.load_checkpoint`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import CheckpointError, ConfigError, WDMError

TASKS = ("generate", "synthesize", "inpaint")
PREPROCESSING_KINDS = ("cwdm-brats", "fastwdm3d-brats", "minmax")
INPUT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_DEPTH = 16
MAX_INPUTS = 16

# Structural bounds: far above every released model (largest: 125 M parameters), small enough that building a
# network on the meta device to compare layouts is instant.
NETWORK_BOUNDS = {
    "model_channels": (1, 1024),
    "num_res_blocks": (1, 16),
    "num_groups": (1, 1024),
    "in_channels": (1, 8 * MAX_INPUTS + 8),
    "out_channels": (1, 64),
}
MAX_LEVELS = 8
MAX_CHANNEL_MULT = 64
MAX_PARAMETERS = 2_000_000_000
MAX_IMAGE_SIZE = 4096
MAX_STEPS = 100_000


class _Invalid(Exception):
    """Internal: one bad key (turned into the caller's error class with the source named)."""


def validate_card(
    card: Any,
    *,
    source: str = "model card",
    require_network: bool = False,
    error: type[WDMError] = ConfigError,
) -> dict[str, Any]:
    """Return ``card`` if every key it has is valid, else raise ``error`` with one clear message.

    ``require_network``: the card must carry ``network`` (the card of one of our model files).
    """
    try:
        _check(card, require_network)
    except _Invalid as exc:
        raise error(f"{source}: {exc}") from None
    return card


def validate_import_card(card: Any, *, source: str = "--card") -> dict[str, Any]:
    """A card given by hand at import: the same rules (network optional)."""
    return validate_card(card, source=source)


def parse_card_json(text: str, source: str, error: type[WDMError] = ConfigError) -> Any:
    """``json.loads`` with one clear error for bad JSON, absurd nesting and out-of-range numbers."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source} is not valid JSON ({exc}).") from None
    except RecursionError:
        raise error(f"{source} is nested too deeply to be a model card (at most {MAX_DEPTH} levels).") from None


def card_error_for_file(path: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`validate_card` for a card read from a model file."""
    return {"source": f"the model card in {path}", "require_network": True, "error": CheckpointError}


# -- the rules --------------------------------------------------------------------------------------------


def _check(card: Any, require_network: bool) -> None:
    if not isinstance(card, dict):
        raise _Invalid(f"a card must be a JSON object ({{...}}), not a {_json_type(card)}.")
    _check_depth(card, 0)
    if "format" in card:
        _int(card["format"], "format", 0, 1000)
    for key in ("name", "description", "preset"):
        if card.get(key) is not None and not isinstance(card[key], str):
            raise _Invalid(f"'{key}' must be a string, got {_json_type(card[key])}.")
    task = card.get("task", "generate")
    if task not in TASKS:
        raise _Invalid(f"'task' must be one of {', '.join(TASKS)}, got {task!r}.")
    _check_inputs(card.get("inputs"), task)
    if "output" in card:
        _check_meaning(card["output"], "output")
    if card.get("preprocessing") is not None:
        _check_preprocessing(card["preprocessing"])
    if "network" in card:
        check_network(card["network"])
    elif require_network:
        raise _Invalid("it has no 'network' entry (the network configuration); the file is not a complete model.")
    if card.get("diffusion") is not None:
        check_diffusion(card["diffusion"])
    if card.get("image_size") is not None:
        _check_image_size(card["image_size"])
    _check_geometry(card, "")
    if isinstance(card.get("geometry"), dict):
        _check_geometry(card["geometry"], "geometry.")
        if "known" in card["geometry"] and not isinstance(card["geometry"]["known"], bool):
            raise _Invalid("'geometry.known' must be true or false.")
    elif card.get("geometry") is not None:
        raise _Invalid(f"'geometry' must be an object, got {_json_type(card['geometry'])}.")
    if card.get("intensity") is not None:
        _check_intensity(card["intensity"])
    if card.get("sampling") is not None:
        _check_sampling(card["sampling"])
    if card.get("distilled") is not None:
        _check_distilled(card["distilled"], card.get("diffusion") or {})


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Invalid(f"it is nested more than {MAX_DEPTH} levels deep; a model card is a shallow JSON object.")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


def _check_inputs(inputs: Any, task: str) -> None:
    if task == "generate":
        if inputs:
            raise _Invalid("a 'generate' model takes no 'inputs'; set 'task' to 'synthesize' or 'inpaint'.")
        return
    if not isinstance(inputs, list) or not inputs:
        raise _Invalid(
            f"a '{task}' model needs 'inputs': a list of {{\"name\", \"meaning\"}} objects in the order the "
            "network expects them."
        )
    if len(inputs) > MAX_INPUTS:
        raise _Invalid(f"'inputs' lists {len(inputs)} inputs; at most {MAX_INPUTS} are supported.")
    names = []
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _Invalid(f"'inputs[{i}]' must be an object with a string 'name' (and a 'meaning').")
        if not INPUT_NAME_RE.match(item["name"]):
            raise _Invalid(
                f"'inputs[{i}].name' {item['name']!r} must be lower-case letters, digits and '_' (it becomes a "
                "command-line option)."
            )
        if "meaning" in item:
            _check_meaning(item["meaning"], f"inputs[{i}].meaning")
        names.append(item["name"])
    if len(set(names)) != len(names):
        raise _Invalid(f"'inputs' names must be distinct, got {names}.")
    if task == "inpaint" and names != ["image", "mask"]:
        raise _Invalid(f"an 'inpaint' model's inputs are 'image' then 'mask', got {names}.")


def _check_meaning(value: Any, key: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, dict) and all(
        isinstance(v, (str, int, float, bool, list, type(None))) for v in value.values()
    ):
        return
    raise _Invalid(f"'{key}' must be a string or an object of plain values, got {_json_type(value)}.")


def _check_preprocessing(value: Any) -> None:
    if not isinstance(value, dict) or value.get("kind") not in PREPROCESSING_KINDS:
        raise _Invalid(
            f"'preprocessing' must be an object whose 'kind' is one of {', '.join(PREPROCESSING_KINDS)}, "
            f"got {value!r:.120}."
        )


def _check_image_size(value: Any) -> None:
    if isinstance(value, list):
        if len(value) != 3:
            raise _Invalid(f"'image_size' must be one size or three sizes, got {len(value)} values.")
        for v in value:
            _int(v, "image_size", 2, MAX_IMAGE_SIZE)
    else:
        _int(value, "image_size", 2, MAX_IMAGE_SIZE)


def _check_geometry(geo: dict[str, Any], prefix: str) -> None:
    if geo.get("spacing_mm") is not None:
        spacing = _numbers(geo["spacing_mm"], prefix + "spacing_mm", 3)
        if any(s <= 0 for s in spacing):
            raise _Invalid(f"'{prefix}spacing_mm' must be three positive numbers (mm), got {geo['spacing_mm']!r}.")
    if geo.get("origin_mm") is not None:
        _numbers(geo["origin_mm"], prefix + "origin_mm", 3)
    if geo.get("direction") is not None:
        _matrix(geo["direction"], prefix + "direction", 3)
    if geo.get("affine") is not None:
        _matrix(geo["affine"], prefix + "affine", 4)
    mapping = geo.get("source_voxel_of_output_voxel")
    if mapping is not None:
        if not isinstance(mapping, dict):
            raise _Invalid(f"'{prefix}source_voxel_of_output_voxel' must be an object with 'scale' and 'offset'.")
        for key in ("scale", "offset"):
            if key in mapping:
                _numbers(mapping[key], f"{prefix}source_voxel_of_output_voxel.{key}", 3)


def _check_intensity(value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, dict):
        raise _Invalid(f"'intensity' must be a string or an object, got {_json_type(value)}.")
    if value.get("range") is not None:
        low, high = _numbers(value["range"], "intensity.range", 2)
        if not low < high:
            raise _Invalid(f"'intensity.range' must be [low, high] with low < high, got {value['range']!r}.")


def _check_sampling(value: Any) -> None:
    if not isinstance(value, dict):
        raise _Invalid(f"'sampling' must be an object, got {_json_type(value)}.")
    if "int64_draws_before_noise" in value:
        _int(value["int64_draws_before_noise"], "sampling.int64_draws_before_noise", 0, 16)


def _check_distilled(value: Any, diffusion: dict[str, Any]) -> None:
    """A student's record (:mod:`wdmcore.distill`): the deterministic sampler and calls it was distilled for and
    their decreasing timesteps, which the engine runs by default."""
    if not isinstance(value, dict):
        raise _Invalid(f"'distilled' must be an object, got {_json_type(value)}.")
    if value.get("sampler") != "ddim":
        raise _Invalid(f"'distilled.sampler' must be 'ddim' (the sampler students are distilled for), got "
                       f"{value.get('sampler')!r:.40}.")  # fmt: skip
    calls = _int(value.get("calls"), "distilled.calls", 1, MAX_STEPS)
    timesteps = value.get("timesteps")
    if not isinstance(timesteps, list) or len(timesteps) != calls:
        raise _Invalid(f"'distilled.timesteps' must be a list of {calls} timesteps (one per call).")
    steps = int(diffusion.get("steps", 1000)) if isinstance(diffusion, dict) else 1000
    numbers = [_int(t, "distilled.timesteps", 0, max(0, steps - 1)) for t in timesteps]
    if any(a <= b for a, b in zip(numbers[:-1], numbers[1:], strict=True)):
        raise _Invalid("'distilled.timesteps' must be decreasing (the order the sampler calls the network in).")
    sha = value.get("teacher_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise _Invalid("'distilled.teacher_sha256' must be 64 lowercase hexadecimal digits.")


def check_network(value: Any) -> None:
    """Types and bounds of a card's ``network`` entry (before any network is built from it)."""
    if not isinstance(value, dict):
        raise _Invalid(f"'network' must be an object, got {_json_type(value)}.")
    from ..networks import NetworkConfig

    try:
        known = set(NetworkConfig.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise _Invalid(f"'network' has unknown fields {unknown}; known: {sorted(known)}.")
        if value.get("architecture", "unet") not in ("unet", "wavunet"):
            raise _Invalid(f"'network.architecture' must be 'unet' or 'wavunet', got {value['architecture']!r}.")
        for key, (low, high) in NETWORK_BOUNDS.items():
            if key in value:
                _int(value[key], f"network.{key}", low, high)
        if "channel_mult" in value:
            mult = value["channel_mult"]
            if not isinstance(mult, list) or not 1 <= len(mult) <= MAX_LEVELS:
                raise _Invalid(f"'network.channel_mult' must be a list of 1 to {MAX_LEVELS} integers.")
            for m in mult:
                _int(m, "network.channel_mult", 1, MAX_CHANNEL_MULT)
        if "dropout" in value:
            dropout = _number(value["dropout"], "network.dropout")
            if not 0 <= dropout < 1:
                raise _Invalid(f"'network.dropout' must be in [0, 1), got {dropout}.")
        for key in ("additive_skips", "scale_shift_norm", "use_checkpoint"):
            if key in value and not isinstance(value[key], bool):
                raise _Invalid(f"'network.{key}' must be true or false.")
        config = NetworkConfig.from_dict(value)
    except ConfigError as exc:
        raise _Invalid(f"'network': {exc}") from None
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise _Invalid(
            f"'network' describes {count:,} parameters, more than the {MAX_PARAMETERS:,} supported; the card is "
            "wrong or not meant for this engine."
        )


def parameter_count(config: Any) -> int:
    """Parameters of the network a config builds, counted on the meta device (nothing is allocated)."""
    import torch

    from ..networks import build_network

    with torch.device("meta"):
        network = build_network(config)
    return sum(p.numel() for p in network.parameters())


def check_diffusion(value: Any) -> None:
    """Types and bounds of a card's ``diffusion`` entry."""
    if not isinstance(value, dict):
        raise _Invalid(f"'diffusion' must be an object, got {_json_type(value)}.")
    from ..diffusion import SCHEDULES, DiffusionConfig

    known = set(DiffusionConfig.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise _Invalid(f"'diffusion' has unknown fields {unknown}; known: {sorted(known)}.")
    if "steps" in value:
        _int(value["steps"], "diffusion.steps", 2, MAX_STEPS)
    if "schedule" in value and value["schedule"] not in SCHEDULES:
        raise _Invalid(f"'diffusion.schedule' must be one of {', '.join(SCHEDULES)}, got {value['schedule']!r}.")
    for key in ("beta_start", "beta_end"):
        if key in value and not 0 < _number(value[key], f"diffusion.{key}") < 1:
            raise _Invalid(f"'diffusion.{key}' must lie between 0 and 1, got {value[key]!r}.")
    for key in ("beta_min", "beta_max", "lll_scale", "high_scale"):
        if key in value and not 0 < _number(value[key], f"diffusion.{key}") <= 1e4:
            raise _Invalid(f"'diffusion.{key}' must be a positive number, got {value[key]!r}.")
    for key in ("clip_min", "clip_max"):
        if key in value:
            _number(value[key], f"diffusion.{key}")
    if "clip_denoised" in value and not isinstance(value["clip_denoised"], bool):
        raise _Invalid("'diffusion.clip_denoised' must be true or false.")
    try:
        DiffusionConfig.from_dict(value)
    except ConfigError as exc:
        raise _Invalid(f"'diffusion': {exc}") from None


# -- value helpers ----------------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(f"'{key}' must be a whole number between {low} and {high}, got {value!r:.60}.")
    if value != int(value) or not low <= value <= high:
        raise _Invalid(f"'{key}' must be a whole number between {low} and {high}, got {value!r:.60}.")
    return int(value)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(f"'{key}' must be a finite number, got {value!r:.60}.")
    return float(value)


def _numbers(value: Any, key: str, n: int) -> list[float]:
    if not isinstance(value, list) or len(value) != n:
        raise _Invalid(f"'{key}' must be a list of {n} numbers, got {value!r:.80}.")
    return [_number(v, key) for v in value]


def _matrix(value: Any, key: str, n: int) -> None:
    if not isinstance(value, list) or len(value) != n:
        raise _Invalid(f"'{key}' must be a {n}x{n} matrix (a list of {n} rows of {n} numbers).")
    for row in value:
        _numbers(row, key, n)
