"""The allowed range of every numeric option, in one table that the ``wdm`` command, the worker and the Slicer
modules read. Importable without PyTorch or numpy (the Slicer modules import it in Slicer's own Python).

A value is checked against its row by :func:`problem` (a sentence, or None when the value is allowed); the
command line builds its option types with :func:`option_type`, so that a refused value ends ``wdm`` with exit
2 and ``argument --seed: must be a whole number from 0 to 18446744073709551615, got -1``. Bounds that depend on
the model (steps against its schedule, an image size against its network) are checked where the model is
known; this table keeps every value finite and of a size no run could use otherwise.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .vocabulary import MAX_SEED


@dataclass(frozen=True)
class Limit:
    """A whole number (``whole``) or a finite real number between ``low`` and ``high`` (None: unbounded there);
    ``low_open`` / ``high_open`` exclude that bound."""

    whole: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """What the value must be, e.g. "a whole number from 1 to 100000" or "a number in (0, 1]"."""
        if self.whole:
            if self.high is None:
                return f"a whole number of at least {_show(self.low)}"
            return f"a whole number from {_show(self.low)} to {_show(self.high)}"
        if self.low is not None and self.high is not None:
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"a number in {opening}{_show(self.low)}, {_show(self.high)}{closing}"
        if self.low is not None:
            return f"a finite number {'above' if self.low_open else 'of at least'} {_show(self.low)}"
        return "a finite number"

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and (not math.isfinite(value) or (self.whole and not value.is_integer())):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


_COUNT = 100_000  # volumes in one run, steps of one schedule: far beyond any real use, small enough to loop over
_BIG = 10**9  # training steps and intervals

# Every numeric option of the command line, the worker and the Slicer modules, by the name the code uses.
LIMITS: dict[str, Limit] = {
    # Sampling (wdm sample / synthesize / inpaint / vary, the worker's requests, the Slicer Generate module).
    "seed": Limit(True, 0, MAX_SEED),  # a torch.Generator's seed; training and evaluation seeds too
    "num": Limit(True, 1, _COUNT),  # volumes of one run (`count` in the worker's vary and the Slicer Lib)
    "count": Limit(True, 1, _COUNT),
    "steps": Limit(True, 1, _COUNT),  # network calls; the model's schedule bounds them further
    "batch_size": Limit(True, 1, 4096),  # sampling and training
    "preview_every": Limit(True, 0, _COUNT),  # 0: no previews
    "strength": Limit(False, 0.0, 1.0, low_open=True),  # vary: (0, 1]
    "resample": Limit(True, 1, 1000),  # RePaint repetitions per step
    "samples": Limit(True, 1, 1000),  # synthesize / inpaint / vary: draws for the mean and the uncertainty map
    # Training (wdm train, its --config files, the Slicer Training module).
    "image_size": Limit(True, 8, 1024),  # the network's levels bound it further (a multiple of 2 x 2^levels)
    "lr": Limit(False, 0.0, 1.0, low_open=True),
    "max_steps": Limit(True, 1, _BIG),
    "adam_beta": Limit(False, 0.0, 1.0, high_open=True),
    "adam_eps": Limit(False, 0.0, 1.0, low_open=True),
    "weight_decay": Limit(False, 0.0, None),
    "ema_rate": Limit(False, 0.0, 1.0, high_open=True),
    "grad_clip": Limit(False, 0.0, None, low_open=True),
    "lr_warmup_steps": Limit(True, 0, _BIG),
    "low_noise_share": Limit(False, 0.0, 1.0),
    "checkpoint_interval": Limit(True, 1, _BIG),
    "keep_last": Limit(True, 1, _COUNT),
    "preview_interval": Limit(True, 0, _BIG),  # 0: no previews
    "preview_steps": Limit(True, 1, _COUNT),
    "log_interval": Limit(True, 1, _BIG),
    "num_workers": Limit(True, 0, 1024),
    "max_nonfinite_steps": Limit(True, 1, _BIG),
    "spacing": Limit(False, 0.0, 100.0, low_open=True),  # millimetres per voxel
    "phantoms": Limit(True, 1, _COUNT),
    "calls": Limit(True, 1, _COUNT),  # wdm distill: the student's and the teacher's DDIM calls
    "model_channels": Limit(True, 1, 4096),
    "num_res_blocks": Limit(True, 1, 64),
    "num_groups": Limit(True, 1, 4096),
    "dropout": Limit(False, 0.0, 1.0, high_open=True),
    # Evaluation (wdm evaluate).
    "kid_subsets": Limit(True, 1, _COUNT),
    "kid_subset_size": Limit(True, 1, 10**7),
}


def problem(name: str, value: Any, label: str | None = None) -> str | None:
    """None when ``value`` is allowed for option ``name``; otherwise the sentence that says what it must be, e.g.
    "'seed' must be a whole number from 0 to 18446744073709551615, got -1". ``label``: how the caller names the
    option (``--seed``, ``'seed'``, ``the seed``); the option's name by default."""
    limit = LIMITS[name]
    if limit.allows(value):
        return None
    return f"{label or name} must be {limit.describe()}, got {value!r:.100}"


def checked(name: str, value: Any, label: str | None = None) -> Any:
    """``value`` when it is allowed for option ``name`` (an int for a whole number given as 3.0); otherwise a
    :class:`~wdmcore.errors.ConfigError` with :func:`problem`'s sentence."""
    message = problem(name, value, label)
    if message is not None:
        raise ConfigError(f"{message}.")
    return int(value) if LIMITS[name].whole else float(value)


def option_type(name: str):
    """An argparse ``type=`` for option ``name``: parses the text and checks it against the table, so that a
    refused value is a usage error (exit 2) naming the option, its allowed range and the value given."""
    limit = LIMITS[name]

    def parse(text: str) -> int | float:
        try:
            value: Any = int(text) if limit.whole else float(text)
        except ValueError:
            value = text
        if limit.allows(value):
            return value
        raise argparse.ArgumentTypeError(f"must be {limit.describe()}, got {text!r}")

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _show(bound: float | None) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)
