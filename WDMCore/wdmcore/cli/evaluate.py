"""The ``wdm evaluate`` sub-command: ``add_parser(subparsers)`` registers it, ``run(args)`` executes it.

Example::

    wdm evaluate --real data/brats_t1n_128_01 --fake samples/ --medicalnet resnet_50_23dataset.pth \\
        --format nifti --out report.json

prints a table (FID, KID, MS-SSIM with N and the protocol's caveats) and writes the full report as JSON.
Without ``--medicalnet`` (offline, no 300 MB weight file) only the MS-SSIM diversity of the generated set is
computed, and the table says that FID and KID were not. With ``--progress jsonl`` stdout carries only JSON
lines (progress events, then one ``result`` event) and the table goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WDMError
from ..events import emit
from ..limits import option_type
from ..paths import cache_subdir
from ..vocabulary import EXIT_USAGE
from .progress import add_progress_option, progress_display

FORMATS = ("nifti", "brats", "lidc")  # wdmcore.evaluation.volumes.FORMATS


def default_cache_dir() -> Path:
    """The real-set statistics cache: ``evaluation-stats`` in the cache root (``WDM_CACHE_DIR`` moves it)."""
    return cache_subdir("evaluation-stats")


def _pairs(value: str) -> int | str | None:
    if value in ("all", "none"):
        return None if value == "none" else "all"
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected 'all', 'none' or a positive number of pairs, got {value!r}")
    return number


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command to an ``argparse`` sub-parser collection and return its parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="FID/KID (MedicalNet features) and MS-SSIM diversity of generated volumes",
        description=(
            "Compare generated volumes with real ones: FID and KID on MedicalNet ResNet-50 features, and the "
            "MS-SSIM diversity of the generated set, following the WDM paper's protocol "
            "(see docs/evaluation.md). Without --medicalnet only MS-SSIM is computed (no download needed)."
        ),
    )
    parser.add_argument(
        "--task",
        choices=("generate", "synthesize", "inpaint"),
        default="generate",
        help="generate: FID/KID/MS-SSIM of generated volumes; synthesize/inpaint: paired SSIM, PSNR, MSE of each "
        "result against its reference (files paired by name), inside --masks where given [generate]",
    )
    parser.add_argument("--real", type=Path, help="folder of real volumes (paired tasks: the references)")
    parser.add_argument("--fake", type=Path, help="folder of generated volumes (paired tasks: the results)")
    parser.add_argument(
        "--medicalnet",
        type=Path,
        help="MedicalNet weights file resnet_50_23dataset.pth (generate; without it FID and KID are not computed)",
    )
    parser.add_argument(
        "--masks", type=Path, default=None, help="paired tasks: folder of masks (inpaint: the filled region)"
    )
    parser.add_argument(
        "--normalization",
        type=Path,
        default=None,
        help="paired tasks: folder of the volumes whose percentiles normalise both sides (inpaint: the voided "
        "inputs; default: the references)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="nifti",
        help="how to read the real volumes: nifti = files already preprocessed to [0, 1], used as stored; "
        "brats/lidc = the training preprocessing without the final 2x-1 (default: nifti)",
    )
    parser.add_argument(
        "--size",
        type=int,
        choices=(128, 256),
        default=128,
        help="cube size of the brats/lidc preprocessing, 128 or 256 (default: 128)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON report path (default: <fake folder>_evaluation.json)"
    )
    parser.add_argument(
        "--stats-cache",
        type=Path,
        default=None,
        help=f"folder caching the real-set statistics (default: {default_cache_dir()})",
    )
    parser.add_argument("--no-stats-cache", action="store_true", help="do not read or write the statistics cache")
    parser.add_argument(
        "--ms-ssim-pairs",
        type=_pairs,
        default="all",
        metavar="all|N|none",
        help="MS-SSIM over all pairs of generated volumes (as released), N seeded random pairs, or none",
    )
    parser.add_argument(
        "--ms-ssim-reduced",
        action="store_true",
        help="allow fewer MS-SSIM scales for volumes below 112 voxels per side (not comparable with the paper)",
    )
    parser.add_argument(
        "--kid-subsets",
        type=option_type("kid_subsets"),
        default=100,
        help="KID: number of random subsets (default 100)",
    )
    parser.add_argument(
        "--kid-subset-size",
        type=option_type("kid_subset_size"),
        default=1000,
        help="KID: volumes per subset, capped at N (default 1000)",
    )
    parser.add_argument(
        "--seed", type=option_type("seed"), default=0, help="seed of the random MS-SSIM pairs and KID subsets"
    )
    add_progress_option(parser)
    parser.set_defaults(handler=run)
    return parser


def run_paired(args: argparse.Namespace) -> int:
    """`wdm evaluate --task synthesize|inpaint`: per-case and mean SSIM, PSNR, MSE; JSON report."""
    from ..evaluation.paired import evaluate_folders
    from ..events import jsonl_writer

    if args.real is None or args.fake is None:
        raise ConfigError("give --fake (the results) and --real (the references), each a folder of volumes.")
    if args.task == "inpaint" and args.masks is None:
        raise ConfigError("inpainting is scored inside the filled region: give --masks, a folder of the masks.")
    report = evaluate_folders(args.fake, args.real, args.masks, args.normalization)
    report["task"] = args.task
    out = args.out or args.fake.parent / f"{args.fake.name}_evaluation.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    mean = report["mean"]
    table = (
        f"{args.task}: {report['count']} case(s)  SSIM {mean['ssim']:.4f}  PSNR {mean['psnr']:.2f} dB  "
        f"PSNR(range 1) {mean['psnr_01']:.2f} dB  MSE {mean['mse']:.5f}\nreport: {out}"
    )
    if getattr(args, "progress", None) == "jsonl":
        emit(jsonl_writer(sys.stdout), "result", path=str(out.resolve()), mean=mean, count=report["count"])
        print(table, file=sys.stderr)
    else:
        print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run an evaluation from parsed arguments; returns the process exit code (0 ok, 2 on a wdmcore error)."""
    if getattr(args, "task", "generate") != "generate":
        return run_paired(args)
    if args.fake is None:
        raise ConfigError("give --fake, the folder of generated volumes (and --real with --medicalnet for FID/KID).")
    progress, close = progress_display(args.progress)
    table_stream = sys.stderr if args.progress == "jsonl" else sys.stdout
    try:
        from ..evaluation.evaluate import evaluate
        from ..evaluation.fid import SmallSampleWarning
        from ..evaluation.volumes import NiftiReader, list_volumes, reader_for_format, real_volume_files

        fake_files = list_volumes(args.fake)
        extractor = real_files = real_reader = cache_dir = None
        if args.medicalnet is not None:
            from ..evaluation.medicalnet import MedicalNetFeatureExtractor

            if args.real is None:
                raise ConfigError("FID and KID compare with real volumes: give --real DIR with --medicalnet.")
            real_reader = reader_for_format(args.format, args.size)
            real_files = real_volume_files(args.real, args.format)
            extractor = MedicalNetFeatureExtractor(args.medicalnet, device=args.device)
            cache_dir = None if args.no_stats_cache else (args.stats_cache or default_cache_dir())
        with warnings.catch_warnings():
            # The table and the JSON report carry this warning; it is not printed a second time.
            warnings.simplefilter("ignore", SmallSampleWarning)
            report = evaluate(
                real_files or [],
                fake_files,
                extractor,
                real_reader=real_reader,
                fake_reader=NiftiReader(),
                cache_dir=cache_dir,
                ms_ssim_pairs=args.ms_ssim_pairs,
                ms_ssim_reduced=args.ms_ssim_reduced,
                seed=args.seed,
                kid_subsets=args.kid_subsets,
                kid_subset_size=args.kid_subset_size,
                progress=progress,
                device=args.device,
            )
        if report.real is not None:
            report.real.source = str(args.real)
        report.fake.source = str(args.fake)
        data = report.to_dict()
        data["command"] = {
            "real": None if args.real is None else str(args.real),
            "fake": str(args.fake),
            "medicalnet": None if args.medicalnet is None else str(args.medicalnet),
            "format": args.format,
            "device": str(extractor.device) if extractor is not None else args.device,
            "ms_ssim_pairs": args.ms_ssim_pairs,
            "seed": args.seed,
            "stats_cache": None if cache_dir is None else str(cache_dir),
        }
        out = args.out or args.fake.parent / f"{args.fake.name}_evaluation.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n")
    except ModuleNotFoundError as exc:  # an optional package imported outside the evaluation's own checks
        from ..evaluation.dependencies import OPTIONAL_PACKAGES, missing_package

        package = (exc.name or "").split(".")[0]
        if package not in OPTIONAL_PACKAGES:
            raise
        close()
        return _fail(missing_package(package, "wdm evaluate"), progress, args.progress)
    except WDMError as exc:
        close()
        return _fail(exc, progress, args.progress)
    close()
    print(report.format_table(), file=table_stream)
    print(f"report: {out}", file=table_stream)
    emit(
        progress if args.progress == "jsonl" else None,
        "result",
        path=str(out),
        fid=report.fid,
        kid=None if report.kid is None else report.kid.mean,
        ms_ssim=None if report.ms_ssim is None else report.ms_ssim.mean,
        not_computed=report.not_computed,
        n_real=report.n_real,
        n_fake=report.n_fake,
    )
    return 0


def _fail(exc: WDMError, progress: Any, mode: str) -> int:
    if mode == "jsonl":
        emit(progress, "error", kind=type(exc).__name__, message=str(exc))
    else:
        print(f"wdm: error: {exc}", file=sys.stderr)
    return EXIT_USAGE
