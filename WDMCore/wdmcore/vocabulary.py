"""The names the engine and the ``wdm`` command share, importable without PyTorch or numpy.

The command line builds its parsers from these (so that ``wdm --help`` starts at once); the tests check that
the modules implementing them offer exactly these names.
"""

from __future__ import annotations

# Generation (wdmcore.tasks.generate, wdmcore.samplers).
DEFAULT_MODEL = "demo_phantom_64"
SAMPLER_NAMES = ("ancestral", "ddim", "dpm++2m", "dpm++2m-sde", "unipc")  # the order of samplers.SAMPLERS
DEFAULT_SAMPLER = "unipc"
# Steps used when a sampler is chosen without a step count: the fewest that reach the texture of the exact
# denoiser's distribution (ratio 0.9-1.1) in the exact-denoiser table of docs/generation.md. UniPC (third order,
# "logsnr-sqrt" spacing) reaches it with the fewest calls: 0.98 at 10 calls; the demo models' samples at 10 calls
# lie within the spread of their 25-call samples. The ancestral sampler's default is the paper's 1000 steps:
# respaced to fewer, it leaves noise the network was not trained to remove.
DEFAULT_STEPS = {"unipc": 10, "dpm++2m": 25, "dpm++2m-sde": 25, "ddim": 50, "ancestral": 1000}
# The quick look (*Preview*: `--quality preview`, the Slicer module's preset): UniPC with 6 calls, texture ratio
# 0.96 (band 0.85-1.15).
PREVIEW_SAMPLER, PREVIEW_STEPS = "unipc", 6
QUALITIES = ("default", "preview")  # --quality / quality=: the step count used when no steps are given
MAX_SEED = 2**64 - 1  # the largest seed a torch.Generator takes
# The network's precision and backend (wdmcore.backends): "auto" picks per device and CPU; fp16 is for CUDA.
PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")
BACKEND_NAMES = ("auto", "torch", "openvino")

# Post-processing of a synthesised sequence (wdmcore.tasks.synthesize): the released sample_auto.py's threshold
# (the default), sample.py's clamp and brain mask, or none.
SYNTHESIS_POSTPROCESSING = ("threshold", "brain-mask", "none")
DEFAULT_SYNTHESIS_POSTPROCESS = "threshold"

# The BraTS 2023 sequence names (dataset discovery; the cWDM synthesis models' inputs and outputs).
BRATS_SEQUENCES = ("t1n", "t1c", "t2w", "t2f")

# Networks (wdmcore.networks.PRESETS).
PRESET_NAMES = ("unet-128", "unet-256", "wavunet-128", "wavunet-256", "cwdm-224", "fastwdm3d-128")

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
EXIT_TERMINATED = 143  # SIGTERM (128 + 15, what a shell reports): finished files kept, temporary files removed
