"""Options and output handling shared by the conditional task commands (synthesize, inpaint, vary)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..events import emit
from ..interrupts import sigterm_unwinds
from ..limits import option_type
from ..vocabulary import BACKEND_NAMES, PRECISION_NAMES
from .progress import progress_display


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend and --precision: what runs the network (every command that runs one)."""
    parser.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        default="auto",
        help="what runs the network: torch, openvino (CPU; the optional openvino extra) or auto, the fastest the "
        "quality tests accept on this device and CPU (PyTorch fp32 for the released ancestral sampler) [auto]",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISION_NAMES,
        default="auto",
        help="network precision: fp32, bf16 (CUDA, or a CPU with native bf16), fp16 (CUDA) or auto [auto]",
    )


def add_common_options(parser: argparse.ArgumentParser, *, model_help: str) -> None:
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--out", type=Path, required=True, help="output file (.nii.gz, .nii or .nrrd)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output, sidecar or preview file (without it, an existing file is an error "
        "before the model is loaded; an input is never replaced)",
    )
    parser.add_argument("--seed", type=option_type("seed"), default=0, help="random seed [0]")
    parser.add_argument(
        "--samples",
        type=option_type("samples"),
        default=1,
        help="draws from seeds SEED ... SEED+N-1: --out is their mean, <out stem>_std.<ext> the per-voxel standard "
        "deviation (an uncertainty map) [1]",
    )
    parser.add_argument(
        "--keep-samples",
        action="store_true",
        help="also write every draw as <out stem>_sample<i>.<ext> (i = 0 ... N-1, seed SEED+i)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto: CUDA if available]")
    add_backend_options(parser)
    parser.add_argument(
        "--preview-every",
        type=option_type("preview_every"),
        default=0,
        help="with --progress jsonl: write the current estimate every N steps next to OUT and report a 'preview' "
        "event [0: off]",
    )
    parser.add_argument(
        "--progress",
        choices=("bar", "jsonl", "none"),
        default="bar",
        help="progress display: a tqdm bar on stderr, JSON lines on stdout, or nothing [bar]",
    )


def callbacks(args: argparse.Namespace, affine_of_input, written: list[Path]) -> tuple[Any, Any, Any]:
    """(on_progress, on_preview, close) for the chosen --progress mode. Each preview file written is added to
    ``written``, so that a run that does not finish can remove it."""
    on_progress, close = progress_display(args.progress)
    on_preview = None
    if writes_preview(args):
        from ..volumes.outputs import preview_path

        preview = preview_path(args.out)

        def on_preview(index: int, image) -> None:
            from ..volumes.writing import save_volume

            path = save_volume(image, affine_of_input(), preview, sidecar=False)
            if path not in written:
                written.append(path)
            emit(on_progress, "preview", index=index, path=str(path.resolve()))

    return on_progress, on_preview, close


def writes_preview(args: argparse.Namespace) -> bool:
    return args.progress == "jsonl" and args.preview_every > 0


def check_task_outputs(args: argparse.Namespace, inputs: Mapping[str, Any]) -> None:
    """Before the model is loaded: --out's format, folder and files (volume, sidecar, preview) may be written,
    none of them is an input (``inputs``: option -> path, the model file included) and, without --overwrite,
    none exists."""
    from ..volumes.outputs import check_outputs, existing_file, task_output_paths

    check_outputs(
        task_output_paths(args.out, preview=writes_preview(args), samples=args.samples, keep_samples=args.keep_samples),
        inputs={**inputs, "--model": existing_file(args.model)},
        overwrite=args.overwrite,
    )


def write_result(args: argparse.Namespace, volume, on_progress) -> int:
    """Write the result (the mean of several draws), then its uncertainty map and the kept draws, which the
    sidecar names; a result event (or a printed path) per file."""
    from ..volumes.outputs import draw_path, std_path
    from ..volumes.writing import save_volume

    extra = []
    if volume.std is not None:
        extra.append(("std", std_path(args.out), volume.std))
    for i, array in enumerate(volume.draws or []):
        extra.append((f"sample{i}", draw_path(args.out, i), array))
    if extra:
        volume.meta["files"] = {kind: path.name for kind, path, _ in extra}
    path = volume.save(args.out, overwrite=args.overwrite)
    written = [(None, path)]
    for kind, target, array in extra:
        written.append((kind, save_volume(array, volume.affine, target, sidecar=False, overwrite=args.overwrite)))
    for kind, target in written:
        if args.progress == "jsonl":
            fields = {"meta": volume.meta} if kind is None else {"kind": kind}
            emit(on_progress, "result", path=str(target.resolve()), seed=volume.seed, **fields)
        else:
            print(target)
    return 0


def run_task(args: argparse.Namespace, task: str, inputs: Mapping[str, Any], *positional, **settings) -> int:
    """Check the outputs, then run ``wdmcore.tasks.<task>.<task>(args.model, *positional, seed=..., device=...,
    **settings)`` with the chosen progress display and write its result: the part every task command shares.
    ``inputs``: option -> input file; the first one's grid is the previews' grid.

    SIGTERM unwinds like Ctrl-C (:func:`wdmcore.interrupts.sigterm_unwinds`; the command exits with 143), and a
    run that ends without its result (a signal, an error) removes the preview file it wrote: a preview is an
    estimate of an unfinished result, not an output."""
    check_task_outputs(args, inputs)  # before importing the task: PyTorch alone takes seconds to import
    previews: list[Path] = []
    finished = False
    try:
        with sigterm_unwinds():
            import functools
            import importlib

            from ..backends import configure_threads
            from ..volumes.reading import read_header

            configure_threads()  # all physical cores this process may use

            run = getattr(importlib.import_module(f"wdmcore.tasks.{task}"), task)
            grid_path = next(iter(inputs.values()))
            # The previews' grid: read from the first input's header once, not from its voxels at every preview.
            affine_of_input = functools.cache(lambda: read_header(grid_path).affine)
            on_progress, on_preview, close = callbacks(args, affine_of_input, previews)
            try:
                volume = run(
                    args.model,
                    *positional,
                    seed=args.seed,
                    samples=args.samples,
                    keep_samples=args.keep_samples,
                    device=args.device,
                    backend=args.backend,
                    precision=args.precision,
                    on_progress=on_progress,
                    on_preview=on_preview,
                    preview_every=max(1, args.preview_every),
                    **settings,
                )
            finally:
                if close is not None:
                    close()
            code = write_result(args, volume, on_progress)
            finished = True
            return code
    finally:
        if not finished:
            for path in previews:
                path.unlink(missing_ok=True)
