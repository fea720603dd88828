"""Where outputs go: the one place that decides and checks the output paths of `wdm sample`, the task commands
(`wdm synthesize`, `wdm inpaint`, `wdm vary`) and the worker, before any model is loaded or downloaded.

The rules, checked by :func:`check_outputs` before the work starts:

* a name that a user or a program gives (a ``--prefix``, a worker request's ``name``) is a plain file name:
  no path separator (``/`` or ``\\``), not ``.`` or ``..``, not absolute (:func:`plain_name`). The folder is
  chosen separately (``--out``, ``output_dir``), so every final path lies in that folder;
* an output is never an existing input: paths are compared after resolving ``..``, relative spellings and
  symbolic links, and files that exist are compared by device and inode (hard links). This holds for the
  volume, its JSON sidecar and the preview file alike;
* an existing file is replaced only when the caller says so (``--overwrite``; ``"overwrite": true`` in a
  worker request);
* the file format is known from the name's suffix, and the folder exists or can be created, and is writable.

The files themselves are written by :func:`wdmcore.volumes.writing.save_volume`: under a temporary name in the
same folder, renamed into place when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PureWindowsPath

from ..errors import ConfigError, DataError
from .writing import ensure_output_folder, sidecar_path, split_format

PATH_SEPARATORS = ("/", "\\")  # both, on every system: a name must mean the same file on Windows and POSIX
PREVIEW_SUFFIX = "_preview.nii"
STD_SUFFIX = "_std"  # the uncertainty map of a result of several draws: <stem>_std.<format>
DRAW_SUFFIX = "_sample"  # draw i of them, kept on request: <stem>_sample<i>.<format>


def plain_name(name: object, what: str) -> str:
    """``name`` if it is a plain file name (see the module doc), else a :class:`ConfigError` naming ``what``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} must be a file name, got {name!r:.100}; give a name such as 'sample'.")
    if (
        any(sep in name for sep in PATH_SEPARATORS)
        or name in (".", "..")
        or "\0" in name
        or os.path.isabs(name)
        or PureWindowsPath(name).drive
    ):
        raise ConfigError(
            f"{what} {name!r:.100} is not a plain file name (no '/', '\\', '..' or absolute path); give a name "
            "such as 'sample' and choose the folder separately."
        )
    return name


def stem(path: str | os.PathLike) -> str:
    """The file name without its volume suffix: ``a.v2.nii.gz`` -> ``a.v2`` (ConfigError for an unknown format)."""
    path, fmt = split_format(path)
    return path.name[: -len(fmt) - 1]


def preview_path(out: str | os.PathLike) -> Path:
    """The preview file of a task output: ``<stem>_preview.nii`` next to it."""
    out = Path(out)
    return out.with_name(stem(out) + PREVIEW_SUFFIX)


def std_path(out: str | os.PathLike) -> Path:
    """The uncertainty map of a task output of several draws: ``<stem>_std.<format>`` next to it."""
    out = Path(out)
    _, fmt = split_format(out)
    return out.with_name(f"{stem(out)}{STD_SUFFIX}.{fmt}")


def draw_path(out: str | os.PathLike, index: int) -> Path:
    """Draw ``index`` (seed + index) of a task output of several draws: ``<stem>_sample<index>.<format>``."""
    out = Path(out)
    _, fmt = split_format(out)
    return out.with_name(f"{stem(out)}{DRAW_SUFFIX}{index}.{fmt}")


def task_output_paths(
    out: str | os.PathLike, *, preview: bool, samples: int = 1, keep_samples: bool = False
) -> list[Path]:
    """Every file a task command writes for ``--out``: the volume, its sidecar, with ``preview`` the preview file,
    with ``samples`` > 1 the uncertainty map and with ``keep_samples`` every draw. The format must be known from
    the name (ConfigError at once otherwise)."""
    out = Path(out)
    paths = [out, sidecar_path(out)]
    if preview:
        paths.append(preview_path(out))
    if samples > 1:
        paths.append(std_path(out))
    if keep_samples:
        paths.extend(draw_path(out, i) for i in range(samples))
    return paths


def check_outputs(
    paths: Iterable[str | os.PathLike],
    *,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
    overwrite: bool = False,
    overwrite_hint: str = "pass --overwrite to replace them",
    rename_hint: str = "choose another --out",
) -> list[Path]:
    """Check, before any work, that every one of ``paths`` can be written (see the module doc); returns them.

    ``inputs`` maps a label (an option such as ``--image``) to an input file of the same run; a None value is
    skipped. The hints complete the error messages with what the caller can change."""
    paths = [Path(p) for p in paths]
    for folder in dict.fromkeys(p.parent for p in paths):
        ensure_output_folder(folder, create=False)
    named_inputs = [(label, Path(p)) for label, p in (inputs or {}).items() if p is not None and str(p) != ""]
    for path in paths:
        for label, source in named_inputs:
            if same_file(path, source):
                raise DataError(
                    f"the output {path} is the input {label} ({source}); writing it would destroy the input, "
                    f"so nothing was done: {rename_hint}."
                )
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise DataError(f"the output {folders[0]} is a folder; {rename_hint}.")
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (f" (+{len(existing) - 3} more)" if len(existing) > 3 else "")
        raise DataError(
            f"{len(existing)} output file(s) already exist: {shown}. Nothing was done; {overwrite_hint}, "
            f"or {rename_hint}."
        )
    return paths


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same path once ``..``, relative spellings and symbolic links are
    resolved, or (for files that exist) the same device and inode, as a hard link or a case-insensitive file
    system gives."""
    if os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def existing_file(value: object) -> str | None:
    """``value`` when it names an existing file (a model given as a checkpoint path), else None: such a file is
    an input too, which no output may replace."""
    if isinstance(value, str | os.PathLike) and str(value) and os.path.isfile(value):
        return os.fspath(value)
    return None
