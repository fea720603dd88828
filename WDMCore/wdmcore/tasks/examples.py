"""Example inputs for every task, made for the bundled demo models: ``wdm example-data DIR``.

Synthetic phantoms (:mod:`wdmcore.data.contrasts`), written as NIfTI files with their geometry: the phantom
frame (a 240 mm cube centred on the origin, :func:`~wdmcore.data.phantoms.phantom_affine`) at each demo
model's spacing, so the demo models meet the data they were made for. ``README.txt`` lists the commands that
use them (:data:`EXAMPLE_COMMANDS`; the documentation's examples are these commands).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# numpy is imported where it is used: `wdm --help` reads EXAMPLE_COMMANDS and must start at once.

EXAMPLE_SEED = 2026

# name -> what it is (the order README.txt lists them in)
EXAMPLE_FILES = {
    "t2.nii.gz": "phantom contrast t2, 32^3 voxels of 7.5 mm (input of demo_phantom_synthesize_32)",
    "flair.nii.gz": "phantom contrast flair of the same head (input of demo_phantom_synthesize_32)",
    "pd.nii.gz": "phantom contrast pd of the same head (input of demo_phantom_synthesize_32)",
    "t1.nii.gz": "phantom contrast t1 of the same head: what synthesis should produce, and the image to inpaint",
    "lesion.nii.gz": "a lesion-like mask in the brain of that head (1 inside): the region to fill",
    "head.nii.gz": "another phantom head, 64^3 voxels of 3.75 mm (the grid of demo_phantom_64): the image to vary",
    "head_lesion.nii.gz": "a lesion-like mask of that head, for RePaint with demo_phantom_64",
}

# The commands README.txt gives, per task (run inside the folder); docs/tasks.md and the commands' --help show them.
EXAMPLE_COMMANDS = {
    "synthesize": (
        "wdm synthesize --model demo_phantom_synthesize_32 --t2 t2.nii.gz --flair flair.nii.gz --pd pd.nii.gz "
        "--out t1_synthesized.nii.gz",
        "wdm synthesize --model demo_phantom_synthesize_32 --t2 t2.nii.gz --flair flair.nii.gz --pd pd.nii.gz "
        "--samples 4 --keep-samples --out t1_mean.nii.gz",
    ),
    "inpaint": (
        "wdm inpaint --model demo_phantom_inpaint_32 --image t1.nii.gz --mask lesion.nii.gz --out t1_filled.nii.gz",
        "wdm inpaint --model demo_phantom_64 --image head.nii.gz --mask head_lesion.nii.gz --steps 10 --resample 2 "
        "--out head_filled.nii.gz",
    ),
    "vary": ("wdm vary --model demo_phantom_64 --image head.nii.gz --strength 0.3 --out head_varied.nii.gz",),
}


README = """Example inputs for wdm's tasks, made by `wdm example-data` for the bundled demo models.

They are synthetic phantoms, not medical images, and so are the demo models: the results show how the tools
work. Each file is a NIfTI volume with its geometry (a 240 mm cube centred on the origin).

Files:
{files}

Run these commands inside this folder (each writes the file after --out and a .json sidecar next to it):

{commands}

What they do: the first synthesises the t1 contrast from t2, flair and pd (compare it with t1.nii.gz); the
second fills the lesion of t1.nii.gz with the inpainting demo model; the third fills a lesion of head.nii.gz
with the unconditional demo model (RePaint; fewer steps than its default 50 x 5, to be quick); the fourth
makes a variation of head.nii.gz (--strength 0.1-0.3 keeps the anatomy, 1 forgets it).
`wdm COMMAND --help` lists each command's options.
"""


def example_volumes() -> dict[str, tuple[Any, Any]]:
    """File name -> (float32 array, affine) of every example volume (the same each time)."""
    import numpy as np

    from ..data.contrasts import paired_phantom
    from ..data.phantoms import phantom_affine

    contrasts, lesion = paired_phantom(32, EXAMPLE_SEED, 0)
    head, head_lesion = paired_phantom(64, EXAMPLE_SEED, 1, names=("t1",))
    small, large = phantom_affine(32), phantom_affine(64)
    volumes = {f"{name}.nii.gz": (contrasts[name], small) for name in ("t2", "flair", "pd", "t1")}
    volumes["lesion.nii.gz"] = (lesion.astype(np.float32), small)
    volumes["head.nii.gz"] = (head["t1"], large)
    volumes["head_lesion.nii.gz"] = (head_lesion.astype(np.float32), large)
    return volumes


def readme_text() -> str:
    files = "\n".join(f"  {name:<20} {what}" for name, what in EXAMPLE_FILES.items())
    commands = "\n".join(f"  {c}" for task in EXAMPLE_COMMANDS.values() for c in task)
    return README.format(files=files, commands=commands)


def write_example_data(folder: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Write the example volumes and README.txt into ``folder`` (created if needed); returns the paths written.
    Without ``overwrite`` an existing file is an error, raised before anything is written."""
    from ..volumes.outputs import check_outputs
    from ..volumes.writing import ensure_output_folder, save_nifti

    folder = Path(folder).expanduser()
    # Before anything is written: a file, or a folder that cannot be made, and existing files without overwrite.
    check_outputs([folder / name for name in (*EXAMPLE_FILES, "README.txt")], overwrite=overwrite,
                  rename_hint="choose another folder")  # fmt: skip
    ensure_output_folder(folder)
    written = []
    for name, (array, affine) in example_volumes().items():
        written.append(save_nifti(array, affine, folder / name))
    readme = folder / "README.txt"
    readme.write_text(readme_text(), encoding="utf-8")
    return [*written, readme]
