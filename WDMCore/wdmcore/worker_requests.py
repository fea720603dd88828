"""What a worker request may hold, and how a failure is told to the parent.

Every known field of a request is checked before any work (:func:`check_fields`: text fields, sampler and
precision names, numbers against :data:`wdmcore.limits.LIMITS`, the inputs object); a wrong one is a
:class:`BadRequest` whose sentence names the field and says what it must be. :func:`describe_error` turns any
exception into the fields of an ``error`` event, in words a Slicer user can act on.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from .errors import WDMError
from .vocabulary import MAX_SEED


class BadRequest(Exception):
    """A request that cannot be served as written."""


def required(request: dict[str, Any], key: str) -> Any:
    if request.get(key) in (None, ""):
        raise BadRequest(f"request {request.get('type')!r} needs {key!r}")
    return request[key]


def path_field(request: dict[str, Any], key: str) -> str:
    value = required(request, key)
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a volume file path, got {value!r:.100}")
    return value


def is_job_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def number_field(request: dict[str, Any], key: str, default: Any) -> Any:
    """A number field (``default`` when absent), checked against its row of :data:`wdmcore.limits.LIMITS`."""
    from .limits import LIMITS, problem

    value = request.get(key, default)
    message = problem(key, value, repr(key))
    if message:
        raise BadRequest(message)
    return int(value) if LIMITS[key].whole else float(value)


# What each text field of a request must be, in the words an error message uses. null means "not given".
TEXT_FIELDS = {
    "model": "a catalogue model name or the path of a checkpoint file",
    "preset": "a network preset name such as unet-128, or null to detect it",
    "device": "a device name: auto, cpu, cuda, cuda:N or mps",
    "sampler": "a sampler name (ancestral, ddim, dpm++2m, dpm++2m-sde or unipc), or null for the default",
    "precision": "auto, fp32, bf16 (CUDA, or a CPU with native bf16) or fp16 (CUDA), or null for auto",
    "backend": "auto, torch or openvino (CPU), or null for auto",
    "output_dir": "the path of a folder for the results, or null for a new temporary folder",
    "name": "a file name for the results (text), or null for the default",
    "image": "the path of a volume file",
    "mask": "the path of a volume file",
}
# Number fields, checked against wdmcore.limits.LIMITS under the same names.
NUMBER_FIELDS = ("num", "count", "seed", "steps", "batch_size", "preview_every", "strength", "resample", "samples")


def check_fields(request: dict[str, Any]) -> None:
    """Every known field of a request has the type it must have, before any work: a wrong one is refused with a
    sentence that names the field and says what it must be (never a Python exception's text)."""
    from .limits import problem
    from .vocabulary import BACKEND_NAMES, PRECISION_NAMES, SAMPLER_NAMES

    for key, what in TEXT_FIELDS.items():
        value = request.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{key!r} must be {what}, got {value!r:.100}")
    if request.get("sampler") not in (None, "", *SAMPLER_NAMES):
        raise BadRequest(f"'sampler' must be {TEXT_FIELDS['sampler']}, got {request['sampler']!r:.100}")
    if request.get("precision") not in (None, "", *PRECISION_NAMES):
        raise BadRequest(f"'precision' must be {TEXT_FIELDS['precision']}, got {request['precision']!r:.100}")
    if request.get("backend") not in (None, "", *BACKEND_NAMES):
        raise BadRequest(f"'backend' must be {TEXT_FIELDS['backend']}, got {request['backend']!r:.100}")
    for key in NUMBER_FIELDS:
        if key in request and not (key == "steps" and request[key] is None):  # steps null: the default
            message = problem(key, request[key], repr(key))
            if message:
                raise BadRequest(message)
    first = request.get("seed", 0)
    count = request.get("num", request.get("count", 1)) * request.get("samples", 1)
    if first + count - 1 > MAX_SEED:
        raise BadRequest(
            f"'seed' + the number of volumes (times 'samples') - 1 must stay within 0 to {MAX_SEED}, got seed {first}"
        )
    if not isinstance(request.get("keep_samples", False), bool):
        raise BadRequest(f"'keep_samples' must be true or false, got {request['keep_samples']!r:.100}")
    inputs = request.get("inputs")
    if "inputs" in request and (
        not isinstance(inputs, dict) or not inputs or not all(isinstance(v, str) and v for v in inputs.values())
    ):
        raise BadRequest(
            f'\'inputs\' must be an object of input name -> volume file path, e.g. {{"t2": "/data/t2.nrrd"}}, '
            f"got {inputs!r:.100}"
        )


def safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).strip("._")
    return cleaned or "volume"


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` event fields for an exception: a kind the parent can act on, and a message."""
    name = type(exc).__name__
    message = str(exc) or name
    if "OutOfMemory" in name or "out of memory" in message.lower():
        kind = "OutOfMemory"
        message = (
            f"{message.splitlines()[0]}. Generate fewer volumes at once (batch size 1), use half precision, "
            "or choose the CPU."
        )
    elif isinstance(exc, BadRequest):
        kind = "BadRequest"
    elif isinstance(exc, ModuleNotFoundError):
        kind = "MissingPackage"
        message = f"{message}. Install the missing package into this Python ({sys.executable})."
    elif isinstance(exc, OSError) and not isinstance(exc, WDMError):
        # A file the request names cannot be used: say which and why, in words rather than an errno.
        kind = "FileError"
        where = f" {exc.filename}" if exc.filename else " a file"
        reason = (exc.strerror or message).lower()
        message = f"cannot use{where} ({reason}); check the paths of the request and their permissions"
    else:
        kind = name
    return {"kind": kind, "message": message, "detail": "".join(traceback.format_exception(exc))[-4000:]}
