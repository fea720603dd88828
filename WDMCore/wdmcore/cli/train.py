"""wdm train: train a WDM model from a folder of volumes (or synthetic phantoms).

    wdm train --preset unet-128 --data /data/brats --out runs/brats
    wdm train --resume --out runs/brats
    wdm train --format phantoms --preset unet-128 --image-size 32 --batch-size 2 --max-steps 200 --out runs/try

Precedence: built-in defaults < --config file (YAML or JSON) < options on the command line. The resolved
configuration (training and data) is written into the run folder as config.json. --resume continues with the
run's own settings and data; other data needs --allow-new-data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError, WDMError
from ..limits import option_type
from ..vocabulary import DATA_LAYOUTS, PRESET_NAMES
from .progress import add_progress_option, progress_display

if TYPE_CHECKING:
    from ..training import TrainConfig

log = logging.getLogger(__name__)

FORMATS = (*DATA_LAYOUTS, "phantoms")
DATA_DEFAULTS: dict[str, Any] = {
    "path": None,
    "format": "auto",
    "sequence": "t1n",
    "resample": "fit",
    "spacing": None,
    "crop": "center",
    "intensity": "mri",
    "cache": None,
    "skip_bad_files": False,
    "phantoms": 1000,
    "phantom_seed": 0,
}

# (option, TrainConfig field, type, help); None type = flag
_TRAIN_OPTIONS = [
    ("--image-size", "image_size", int, "edge of the training cube in voxels (default: the preset's, 128 or 256)"),
    ("--lr", "lr", float, "AdamW learning rate (default 1e-5, the paper's)"),
    ("--batch-size", "batch_size", int, "global batch size (default 10 at 128^3, 1 at 256^3)"),
    ("--max-steps", "max_steps", int, "number of optimiser steps (default 100000)"),
    ("--adam-eps", "adam_eps", float, "AdamW eps (default 1e-8)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (default 0)"),
    ("--ema-rate", "ema_rate", float, "EMA rate of the saved weights (default 0.9999)"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm to this value (default: off)"),
    ("--lr-warmup-steps", "lr_warmup_steps", int, "linear learning-rate warm-up over this many steps (default 0)"),
    (
        "--low-noise-share",
        "low_noise_share",
        float,
        "share of timesteps drawn from the lowest 5%% of the schedule (default 0: uniform, as released)",
    ),
    ("--checkpoint-interval", "checkpoint_interval", int, "steps between checkpoints (default 5000)"),
    ("--keep-last", "keep_last", int, "checkpoints kept (default 3)"),
    ("--preview-interval", "preview_interval", int, "steps between preview samples (default 0: none)"),
    ("--preview-steps", "preview_steps", int, "DDIM steps of a preview sample (default 10)"),
    ("--log-interval", "log_interval", int, "steps between progress events (default 10)"),
    ("--seed", "seed", int, "seed of the data order, timesteps and noise (default 0)"),
    ("--num-workers", "num_workers", int, "DataLoader worker processes (default 0)"),
    ("--max-nonfinite-steps", "max_nonfinite_steps", int, "stop after this many non-finite losses in a row"),
    (
        "--device",
        "device",
        str,
        "auto, cpu, cuda, cuda:N or mps (default auto: CUDA, then MPS, then CPU; under torchrun one GPU per process)",
    ),
    ("--name", "name", str, "model name written into the checkpoints' card"),
    ("--description", "description", str, "model description written into the card"),
]
_NETWORK_OPTIONS = [
    ("--architecture", "architecture", str, "unet or wavunet (overrides the preset)"),
    ("--model-channels", "model_channels", int, "base channel count (overrides the preset)"),
    ("--channel-mult", "channel_mult", str, "channel multipliers per level, e.g. 1,2,2,4,4"),
    ("--num-res-blocks", "num_res_blocks", int, "residual blocks per level"),
    ("--num-groups", "num_groups", int, "GroupNorm groups"),
    ("--dropout", "dropout", float, "dropout rate"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a folder of volumes (or phantoms)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--preset", choices=PRESET_NAMES, help="network preset (default unet-128)")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="run folder: checkpoints, previews, logs"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="YAML or JSON file of options (training fields, 'data')"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument(
        "--allow-new-data",
        action="store_true",
        help="with --resume: continue on data other than the run's (fine-tuning; the card describes the new data)",
    )
    add_progress_option(parser)

    add_data_options(parser)

    hyper = parser.add_argument_group("training")
    for option, name, kind, text in _TRAIN_OPTIONS:
        hyper.add_argument(option, dest=f"train_{name}", type=_typed(name, kind), metavar=name.upper(), help=text)
    hyper.add_argument(
        "--adam-betas",
        dest="train_adam_betas",
        type=option_type("adam_beta"),
        nargs=2,
        metavar=("B1", "B2"),
        help="AdamW betas",
    )
    hyper.add_argument(
        "--precision",
        dest="train_precision",
        choices=("auto", "fp32", "bf16"),
        help="bf16 autocasts the network (refused on the CPU); default auto: bf16 on CUDA, fp32 elsewhere",
    )
    hyper.add_argument("--no-ema-warmup", dest="train_ema_warmup", action="store_false", help="constant EMA rate")
    hyper.add_argument(
        "--activation-checkpointing",
        dest="train_activation_checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory, ~30%% more time)",
    )
    hyper.add_argument("--no-tensorboard", dest="train_tensorboard", action="store_false", help="no TensorBoard")
    net = parser.add_argument_group("network (overrides the preset)")
    for option, name, kind, text in _NETWORK_OPTIONS:
        net.add_argument(option, dest=f"net_{name}", type=_typed(name, kind), metavar=name.upper(), help=text)
    parser.set_defaults(handler=run)
    return parser


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The data options (``args.data_<name>``, the keys of :data:`DATA_DEFAULTS`), shared with ``wdm distill``."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", dest="data_path", type=Path, metavar="PATH", help="dataset folder, list file or volume file"
    )
    data.add_argument("--format", dest="data_format", choices=FORMATS, help="dataset layout (default auto)")
    data.add_argument("--sequence", dest="data_sequence", metavar="SEQ", help="BraTS sequence (default t1n)")
    data.add_argument(
        "--resample",
        dest="data_resample",
        choices=("fit", "crop", "none"),
        help="folder data: 'fit' (default) resamples every volume to one isotropic spacing so the largest "
        "fits the cube, then crops/pads; 'crop' keeps the grids and crops/pads; 'none' keeps the volumes as "
        "they are (they must already be cubes of the image size)",
    )
    data.add_argument(
        "--spacing",
        dest="data_spacing",
        type=option_type("spacing"),
        metavar="MM",
        help="folder data: resample to this spacing (mm)",
    )
    data.add_argument("--crop", dest="data_crop", choices=("center", "foreground"), help="crop/pad around")
    data.add_argument("--intensity", dest="data_intensity", choices=("mri", "ct"), help="intensity scaling")
    data.add_argument(
        "--cache", dest="data_cache", type=Path, metavar="DIR", help="preprocessing cache (default OUT/cache)"
    )
    data.add_argument(
        "--skip-bad-files",
        dest="data_skip_bad_files",
        action="store_true",
        help="train on the usable files when some cannot be used (default: stop and list them)",
    )
    data.add_argument(
        "--phantoms",
        dest="data_phantoms",
        type=option_type("phantoms"),
        metavar="N",
        help="number of phantoms (--format phantoms)",
    )


def _typed(name: str, kind: type) -> Any:
    """The option type of a training option: numbers are checked against :data:`wdmcore.limits.LIMITS`."""
    return option_type(name) if kind in (int, float) else kind


def read_config_file(path: Path) -> dict[str, Any]:
    """Options from a YAML (needs pyyaml) or JSON file: TrainConfig fields plus an optional 'data' mapping."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; give a JSON or YAML config file.") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("reading a YAML config needs pyyaml (pip install pyyaml), or use JSON.") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); YAML files must end in .yaml or .yml.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of options, not a {type(data).__name__}.")
    return data


def resolve(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    """(training config, data options) from defaults, the --config file and the command line."""
    from ..training import TrainConfig

    file_options = read_config_file(args.config) if hasattr(args, "config") else {}
    if getattr(args, "resume", False) and not file_options and (args.out / "config.json").is_file():
        try:  # resume with the run's own settings
            file_options = read_config_file(args.out / "config.json")
        except ConfigError as exc:
            raise ConfigError(
                f"cannot resume: {exc} The run's config.json is damaged; restore it, or pass the run's settings "
                "with --config FILE."
            ) from None
    data_file_options = file_options.pop("data", {})
    if not isinstance(data_file_options, dict) or not isinstance(file_options.get("network", {}), dict):
        raise ConfigError("the config file's 'data' and 'network' entries must be mappings of options.")
    data_options = {**DATA_DEFAULTS, **data_file_options}
    data_options.pop("volumes", None)  # recorded by a previous run
    train_fields = dict(file_options)
    network = dict(train_fields.pop("network", {}))
    for key, value in vars(args).items():
        if key.startswith("data_"):
            data_options[key[5:]] = value
        elif key.startswith("train_"):
            train_fields[key[6:]] = value
        elif key.startswith("net_"):
            network[key[4:]] = _channel_mult(value) if key == "net_channel_mult" else value
    if hasattr(args, "preset"):
        train_fields["preset"] = args.preset
    unknown = set(data_options) - set(DATA_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown data options {sorted(unknown)}; known: {sorted(DATA_DEFAULTS)}.")
    if data_options["path"] is not None:
        data_options["path"] = str(Path(data_options["path"]).expanduser().resolve())
    train_fields.setdefault("intensity", _intensity_meaning(data_options))
    train_fields["network"] = network
    train_fields["data"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in data_options.items()}
    config = TrainConfig.from_dict(train_fields).resolved()
    return config, data_options


def _intensity_meaning(data: dict[str, Any]) -> dict[str, Any]:
    """What the [0, 1] output intensities mean, for the model card."""
    fmt = data["format"]
    if fmt == "auto" and data["path"] is not None:
        from ..data import detect_format

        with contextlib.suppress(WDMError):  # reported when the dataset is built
            fmt = detect_format(data["path"])
    if fmt == "phantoms":
        meaning = "synthetic phantom units (background 0, skull 0.8-1.0; see wdmcore.data.phantoms)"
    elif fmt == "brats":
        meaning = "MRI, released BraTS preprocessing: clipped to the 0.1/99.9 % quantiles, min-max scaled"
    elif fmt == "lidc":
        meaning = "CT, released LIDC preprocessing: HU clipped to [-1000, q99.9], min-max scaled"
    elif data["intensity"] == "ct":
        meaning = "CT: Hounsfield units of the window [-1000, 1000] mapped linearly to [0, 1]"
    else:
        meaning = "MRI: clipped to the 0.1/99.9 percentiles of each volume, min-max scaled (relative intensities)"
    return {"range": [0.0, 1.0], "meaning": meaning}


def _channel_mult(value: str) -> list[int]:
    try:
        return [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--channel-mult {value!r} must be comma-separated integers, e.g. 1,2,2,4,4.") from None


def build_dataset(config: TrainConfig, data: dict[str, Any], out_dir: Path, on_event=None):
    """The dataset the options describe, checked so that every problem is reported before training starts."""
    from ..data import PreprocessConfig, VolumeDataset, detect_format, discover
    from ..data.phantoms import PhantomDataset
    from ..volumes.reading import read_header

    size = config.image_size
    fmt = data["format"]
    if fmt == "phantoms":
        return PhantomDataset(int(data["phantoms"]), size, seed=int(data["phantom_seed"]))
    if data["path"] is None:
        raise ConfigError("give the training data with --data DIR (or --format phantoms to try the tool).")
    path = Path(data["path"])
    layout = {"general": "folder"}.get(fmt, fmt)  # configs of older versions say "general"
    if layout == "auto":
        layout = detect_format(path)
    cases = discover(path, format=layout, sequence=data["sequence"])
    if not cases:
        raise DataError(f"no volumes found in {path}; it must hold .nii/.nii.gz/.nrrd/.mha files (searched below).")
    fit = layout not in ("brats", "lidc") and data["spacing"] is None and data["resample"] == "fit"

    def make(use_cases, on_headers=None) -> Any:
        if layout in ("brats", "lidc"):
            preprocess = PreprocessConfig(preset=layout, size=size)
        else:
            spacing = data["spacing"]
            grid_size: int | None = None if data["resample"] == "none" else size
            if fit:
                spacing = _fit_spacing(use_cases, size, read_header, on_headers)
            preprocess = PreprocessConfig(
                preset="general", size=grid_size, spacing=spacing, crop=data["crop"], intensity=data["intensity"]
            )
        cache = Path(data["cache"]) if data["cache"] else out_dir / "cache"
        try:
            return VolumeDataset(use_cases, preprocess, cache_dir=cache, progress=on_event)
        except ConfigError as exc:
            if "different shapes" in str(exc) or "not an even-sized cube" in str(exc):
                raise DataError(
                    f"{exc}. With --resample none the volumes must already be {size}^3 cubes; use --resample fit "
                    "(resample and crop/pad to the cube) or --resample crop, or --spacing MM."
                ) from None
            raise

    dataset = make(cases, on_event)  # the headers read for the fit spacing are reported once, here
    if fit and dataset.skipped:
        # A file skipped only when its voxels were read (constant, unreadable data) may have set the fit
        # spacing: compute it again from the volumes actually used, so skipped files never shape the others.
        spacing = _fit_spacing(dataset.cases, size, read_header)
        if (spacing,) * 3 != tuple(dataset.config.spacing):
            skipped = dataset.skipped
            dataset = make(dataset.cases)  # only the usable ones: the skipped are not read (nor reported) again
            dataset.skipped = skipped + dataset.skipped
    if dataset.skipped and not data["skip_bad_files"]:
        listing = "\n".join(f"  {s.path}: {s.reason}" for s in dataset.skipped[:20])
        more = f"\n  (+{len(dataset.skipped) - 20} more)" if len(dataset.skipped) > 20 else ""
        raise DataError(
            f"{len(dataset.skipped)} of {len(cases)} files cannot be used:\n{listing}{more}\n"
            "Fix or remove them, or pass --skip-bad-files to train on the other "
            f"{len(dataset)} volumes."
        )
    shape = tuple(dataset[0][0].shape)
    if shape != (1, size, size, size):
        raise DataError(
            f"the volumes have shape {shape[1:]} after preprocessing, but the run trains on {size}^3; "
            "use --resample fit or crop (or --image-size to match the data)."
        )
    return dataset


def _with_cost_line(on_event):
    """The bar display plus the training's cost line (time per step, ETA, checkpoint disk), printed above it."""

    def display(event: dict[str, Any]) -> None:
        if event.get("event") == "cost":
            from tqdm.auto import tqdm

            tqdm.write(str(event["message"]), file=sys.stderr)
        on_event(event)

    return display


def _fit_spacing(cases, size: int, read_header, on_event=None) -> float:
    """The isotropic spacing (mm) at which the largest physical extent among the volumes spans ``size`` voxels."""
    import numpy as np

    from ..events import ProgressTracker
    from ..volumes.reading import check_usable_header

    tracker = ProgressTracker(on_event, "headers", total=len(cases))
    extent = 0.0
    for case in cases:
        try:
            header = read_header(case.path)
            shape = check_usable_header(header, case.path)
        except WDMError:
            tracker.advance()
            continue  # skipped by the dataset with its reason: it must not set the spacing of the others
        spacing = np.sqrt((np.asarray(header.affine)[:3, :3] ** 2).sum(axis=0))
        extent = max(extent, float(np.max(np.asarray(shape) * spacing)))
        tracker.advance()
    return round(extent / size, 6) if extent > 0 else 1.0


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..training import train
    from ..training.loop import autocast_dtype
    from ..volumes.writing import ensure_output_folder

    config, data = resolve(args)
    autocast_dtype(config.precision, resolve_device(config.device))  # bf16 on the CPU is refused before any data
    out_dir = Path(args.out)
    ensure_output_folder(out_dir)  # a file or a read-only folder is reported before any data is read
    saved_config = out_dir / "config.json"
    if getattr(args, "resume", False) and not getattr(args, "allow_new_data", False) and saved_config.is_file():
        from ..training.config import check_same_data

        # Before the (possibly long) preprocessing; train() checks against the training state again.
        check_same_data(read_config_file(saved_config).get("data") or {}, config.data, out_dir)
    on_event, close = progress_display(args.progress)
    if args.progress == "bar":
        on_event = _with_cost_line(on_event)
    try:
        dataset = build_dataset(config, data, out_dir, on_event)
    except BaseException:
        close()
        raise
    config.data["volumes"] = len(dataset)

    requested: list[int] = []

    def request_stop(signum, _frame):
        requested.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    # SIGBREAK: what a parent on Windows can send (CTRL_BREAK_EVENT) to a child in its own process group.
    stop_signals = [signal.SIGTERM, signal.SIGINT, *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])]
    previous = {sig: signal.signal(sig, request_stop) for sig in stop_signals}
    try:
        result = train(config, dataset, out_dir, resume=getattr(args, "resume", False), on_event=on_event,
                       stop=lambda: bool(requested),
                       allow_new_data=getattr(args, "allow_new_data", False))  # fmt: skip
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close()
    if result.model_path is not None and args.progress != "jsonl":
        state = "stopped at" if result.stopped else "finished at"
        print(f"{state} step {result.step}: {result.model_path}")
    return 0
