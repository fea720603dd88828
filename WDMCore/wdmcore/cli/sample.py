"""`wdm sample`: generate volumes and write them as NIfTI or NRRD files with JSON sidecars.

With no arguments it writes one volume of the bundled demo model, on the CPU, into ``./wdm_samples``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutOfMemoryError
from ..events import emit
from ..interrupts import Terminated, sigterm_unwinds
from ..limits import option_type
from ..vocabulary import (
    DEFAULT_MODEL,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_TERMINATED,
    MAX_SEED,
    OUTPUT_FORMATS,
    QUALITIES,
    SAMPLER_NAMES,
)
from .progress import add_progress_option, progress_display
from .task_options import add_backend_options


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="generate volumes with a model",
        description=(
            "Generate volumes with a diffusion model and write them with their geometry (NIfTI or NRRD) and a "
            "JSON sidecar (model, sampler, steps, seed, version, whether the geometry is known). Without "
            "arguments: one volume of the bundled demo model on the CPU into ./wdm_samples."
        ),
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"catalogue name (see `wdm models`) or checkpoint file [{DEFAULT_MODEL}]"
    )
    parser.add_argument("--preset", default=None, help="network preset of a .pt file that cannot be detected")
    parser.add_argument("--num", type=option_type("num"), default=1, help="number of volumes [1]")
    parser.add_argument(
        "--seed", type=option_type("seed"), default=0, help="seed of the first volume; volume i uses seed + i [0]"
    )
    parser.add_argument(
        "--sampler", choices=SAMPLER_NAMES, default=None, help=f"[{DEFAULT_SAMPLER}; a distilled student: its card's]"
    )
    parser.add_argument(
        "--steps",
        type=option_type("steps"),
        default=None,
        help="network evaluations per volume [" + ", ".join(f"{k}: {v}" for k, v in DEFAULT_STEPS.items()) + "]",
    )
    parser.add_argument(
        "--quality",
        choices=QUALITIES,
        default="default",
        help="how many calls when --steps is not given: default, or preview (UniPC with fewer calls, "
        "for a quick look) [default]",
    )
    parser.add_argument(
        "--batch-size", type=option_type("batch_size"), default=1, help="volumes sampled at once (memory vs speed) [1]"
    )
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:N or mps [auto: CUDA, then MPS, then CPU]")  # fmt: skip
    add_backend_options(parser)
    parser.add_argument("--compile", action="store_true", help="compile the network with torch.compile")
    parser.add_argument("--out", type=Path, default=Path("wdm_samples"), help="output folder [./wdm_samples]")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="nii.gz", help="file format [nii.gz]")
    parser.add_argument("--dtype", choices=("float32", "int16"), default="float32", help="voxel type [float32]")
    parser.add_argument("--prefix", default="sample", help="file name prefix: PREFIX_seedNNNN.FORMAT [sample]")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist (without it, an existing file is an error before sampling)",
    )
    parser.add_argument(
        "--preview-every",
        type=option_type("preview_every"),
        default=0,
        help="with --progress jsonl: write the current x0 estimate every N steps to OUT/previews and "
        "report it as a 'preview' event [0: off]",
    )
    add_progress_option(parser)
    parser.set_defaults(handler=run)


def output_paths(args: argparse.Namespace) -> list[Path]:
    """Every file the run writes: each volume, its sidecar and, with previews, its preview file."""
    from ..volumes.outputs import plain_name
    from ..volumes.writing import sidecar_path

    prefix = plain_name(args.prefix, "--prefix")
    volumes = [args.out / f"{prefix}_seed{args.seed + i:04d}.{args.format}" for i in range(max(0, args.num))]
    paths = [p for volume in volumes for p in (volume, sidecar_path(volume))]
    if writes_previews(args):
        paths += [preview_path(args, args.seed + i) for i in range(max(0, args.num))]
    return paths


def writes_previews(args: argparse.Namespace) -> bool:
    return args.progress == "jsonl" and args.preview_every > 0


def preview_path(args: argparse.Namespace, seed: int) -> Path:
    return args.out / "previews" / f"{args.prefix}_preview_seed{seed:04d}.nii"


def check_outputs(args: argparse.Namespace) -> None:
    """Before sampling: a plain --prefix, a writable output folder and, without --overwrite, no existing output."""
    from ..volumes.outputs import check_outputs as check
    from ..volumes.outputs import existing_file

    check(
        output_paths(args),
        inputs={"--model": existing_file(args.model)},
        overwrite=args.overwrite,
        rename_hint="choose another --out or --prefix",
    )


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.seed <= MAX_SEED - max(0, args.num - 1):
        raise ConfigError(f"--seed must lie between 0 and {MAX_SEED - max(0, args.num - 1)}, got {args.seed}.")
    check_outputs(args)  # an unusable --out is reported at once, before PyTorch and the model are loaded
    from ..backends import configure_threads
    from ..tasks.generate import generate, resolve_device, resolve_model
    from ..volumes.writing import card_geometry, save_volume

    configure_threads()  # all physical cores this process may use

    callback, close = progress_display(args.progress)

    def write(volume) -> None:
        # Each volume is written as soon as it is done, so an interruption keeps the finished ones.
        path = volume.save(
            args.out / f"{args.prefix}_seed{volume.seed:04d}.{args.format}",
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
        if args.progress == "jsonl":
            emit(callback, "result", path=str(path.resolve()), seed=volume.seed, meta=volume.meta)
        elif args.progress == "bar":
            from tqdm.auto import tqdm

            tqdm.write(str(path))  # above the bar, not through it
        else:
            print(path, flush=True)

    try:
        with sigterm_unwinds():
            device = resolve_device(args.device)
            model = resolve_model(args.model, preset=args.preset, device=device, on_progress=callback)
            on_preview = None
            if writes_previews(args):
                size = model.image_size
                preview_affine = card_geometry(model.card, (size, size, size)).affine

                def on_preview(index: int, image) -> None:
                    path = save_volume(image, preview_affine, preview_path(args, args.seed + index), sidecar=False)
                    emit(callback, "preview", index=index, seed=args.seed + index, path=str(path.resolve()))

            generate(
                model,
                args.num,
                seed=args.seed,
                sampler=args.sampler,
                steps=args.steps,
                quality=args.quality,
                batch_size=args.batch_size,
                device=device,
                precision=args.precision,
                backend=args.backend,
                on_progress=callback,
                on_preview=on_preview,
                preview_every=max(1, args.preview_every),
                compile=args.compile,
                preset=args.preset,
                on_volume=write,
            )
    except OutOfMemoryError as exc:
        if args.progress == "jsonl":
            emit(callback, "error", kind="OutOfMemory", message=str(exc))
        else:
            print(f"wdm: error: {exc}", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except Terminated:
        message = "stopped by SIGTERM; the volumes finished before it are kept"
        if args.progress == "jsonl":
            emit(callback, "error", kind="Terminated", message=message)
        else:
            print(f"wdm: error: {message}", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        close()
    return EXIT_OK
