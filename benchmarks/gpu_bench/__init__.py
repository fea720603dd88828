"""One command that measures everything a GPU can tell us about wdmcore, and its CPU dry run.

This package is the GPU suite's code, launched by ``benchmarks/gpu_suite.py`` (its command and options are in
docs/benchmarks.md). Importing it imports no torch: the launcher prints its first progress line from
``recording`` before the seconds-long torch import.

Parts (each with its own time budget; a measurement that would start after its part's budget is recorded as
"skipped: budget", one that fails records its error, and the suite goes on), one module each:

* ``env`` (environment.py): GPU name, driver, torch / CUDA / cuDNN versions, and the measured bf16
  matrix-product peak.
* ``flops`` (flops.py): FLOPs of one forward pass of every network timed below, counted with
  ``torch.utils.flop_counter`` on the meta device at full size, cross-checked on the CPU at a small size.
* ``correctness`` (correctness.py): forwards on the device against the CPU (fp32, TF32 off) with the reference
  fixtures, the engine's own network call, an ancestral and a DDIM run from the same initial noise, bf16/fp16
  against fp32, and the released-layout unet-128 / unet-256 at a small size.
* ``gen128`` / ``gen256`` (generation.py): per-step time, time per volume, peak memory and achieved TFLOP/s of
  sampling at 128^3 (unet-128, 64^3 coefficients) and 256^3 (unet-256, 128^3 coefficients): fp32 / TF32 / bf16,
  with and without channels-last-3d and torch.compile, the largest batch that fits, and one end-to-end
  ``wdmcore.generate`` call.
* ``train`` (training.py): training it/s and peak memory, unet-128 at batch 10 and unet-256 at batch 1, fp32 and
  bf16, with and without activation checkpointing and torch.compile, with the engine's loss and EMA.
* ``ddp`` (ddp.py): a two-process DistributedDataParallel run (NCCL on two GPUs; gloo on the CPU in the dry run).
* ``released`` (released.py): with ``--released PATH``, the released wdm-3d network imported from PATH at run
  time (never part of this repository): its forward and per-step times against ours on the same device.
* ``conditional`` (conditional.py): the cWDM (32 input channels) and fastWDM3D (24 input channels) networks,
  built by the engine's NetworkConfig: device-vs-CPU check against their fixtures and forward time and memory.

What they share: ``suite`` (the run's options, device, recorder, reference fixtures, measured peak, FLOP counts),
``measuring`` (synchronising, peak memory, precision modes, network calls, errors, forward timing) and
``networks`` (the presets with random weights, their dry-run stand-ins, FLOP counting). ``recording`` holds the
parts' rows and budgets and writes the JSON, ``report`` the Markdown, ``cli`` the options and the run.

Every network here has random weights: speed and memory do not depend on the values, and the correctness
checks compare the same weights on two devices. Results go to ``benchmarks/results/`` (or ``--out``) as
``gpu_suite_<device>_<date>.json`` and ``.md``, rewritten after every measurement so that a run stopped
part-way keeps what it measured.
"""
