"""The names the engine and the ``wdm`` command share, importable without PyTorch or numpy.

The command line builds its parsers from these (so that ``wdm --help`` starts at once); the tests check that
the modules implementing them offer exactly these names.
"""

from __future__ import annotations

# Generation (wdmcore.tasks.generate, wdmcore.samplers).
DEFAULT_MODEL = "demo_phantom_64"
SAMPLER_NAMES = ("ancestral", "ddim", "dpm++2m", "unipc")
DEFAULT_SAMPLER = "ancestral"
# Steps used when a sampler is chosen without a step count. The default, 50 respaced ancestral steps, is the
# fewest that reach the distribution of the paper's 1000-step sampler in the quality-against-steps table
# (docs/generation.md); the paper's sampler itself is ``sampler="ancestral", steps=1000``.
DEFAULT_STEPS = {"ancestral": 50, "ddim": 50, "dpm++2m": 25, "unipc": 25}
PRECISION_NAMES = ("fp32", "bf16", "fp16")

# Networks (wdmcore.networks.PRESETS).
PRESET_NAMES = ("unet-128", "unet-256", "wavunet-128", "wavunet-256")

# Files (wdmcore.volumes.writing.FORMATS; what `wdm evaluate` reads back).
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd")

# Dataset layouts on the command line. "folder" is any folder of volumes ("general" in configs written by
# older versions, still read).
DATA_LAYOUTS = ("auto", "brats", "lidc", "folder")

# --progress of every long command: a tqdm bar on stderr, JSON lines on stdout, or nothing.
PROGRESS_MODES = ("bar", "jsonl", "none")

# Exit status of `wdm` (docs/cli.md).
EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug or an unforeseen failure (traceback shown)
EXIT_USAGE = 2  # invalid options or inputs: the message says what to change
EXIT_OUT_OF_MEMORY = 3
EXIT_INTERRUPTED = 130  # Ctrl-C
