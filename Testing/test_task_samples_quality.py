"""What several draws of the demo models are worth, on a held-out paired phantom (seed 777; the models were
trained on seed 0). The measurement with more phantoms and N up to 16 is benchmarks/bench_samples.py
(docs/tasks.md, "Several samples"); these are its floors, at small N and few steps for speed.

The demo models are nearly deterministic given their inputs: their draws differ by about 1e-5 (synthesis) and
1e-4 (inpainting, inside the mask) of the [0, 1] range, far below their errors (RMSE about 0.05). So the mean of N
is as good as one draw, not better, and inside the head (or the mask) the std map does not rank the errors
(Spearman -0.2 to +0.2 over the benchmark's phantoms). Over the whole volume it does: it is 0 where the answer is
certain (the background), as the error is."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

import wdmcore
from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import phantom_affine
from wdmcore.evaluation.paired import paired_metrics

SIZE = 32
AFFINE = phantom_affine(SIZE)


@pytest.fixture(scope="module")
def case():
    contrasts, lesion = paired_phantom(SIZE, 777, 0)
    return contrasts, lesion, contrasts["t1"].astype(np.float64)


def test_the_synthesis_std_map_ranks_the_error_of_the_mean(case):
    contrasts, _, truth = case
    inputs = {s: (contrasts[s], AFFINE) for s in ("t2", "flair", "pd")}
    result = wdmcore.synthesize("demo_phantom_synthesize_32", inputs, seed=0, samples=4, sampler="ddim", steps=5)
    rho = spearmanr(result.std.ravel(), np.abs(result.array - truth).ravel())[0]
    assert rho > 0.5  # measured 0.95 here; benchmark (UniPC 25 calls, 4 phantoms, N = 4-16): 0.953-0.959


@pytest.mark.parametrize("task", ["synthesize", "inpaint"])
def test_the_mean_of_more_draws_is_no_worse_than_fewer(case, task):
    contrasts, lesion, truth = case
    if task == "synthesize":
        inputs = {s: (contrasts[s], AFFINE) for s in ("t2", "flair", "pd")}
        result = wdmcore.synthesize("demo_phantom_synthesize_32", inputs, seed=0, samples=4, keep_samples=True,
                                    sampler="ddim", steps=5)  # fmt: skip
        region = {}
    else:
        voided = np.where(lesion, 0.0, truth)
        mask = (lesion.astype(np.float32), AFFINE)
        result = wdmcore.inpaint(
            "demo_phantom_inpaint_32", (voided, AFFINE), mask, seed=0, samples=4, keep_samples=True
        )
        region = {"mask": lesion, "normalization": voided}
    scores = [paired_metrics(np.mean(result.draws[:n], axis=0), truth, **region) for n in (1, 2, 4)]
    # Non-decreasing within 0.01 dB and 1e-4 SSIM: the draws differ too little for the mean to gain more (measured
    # changes below 0.005 dB), but averaging must never cost quality.
    for fewer, more in zip(scores, scores[1:], strict=False):
        assert more.psnr_01 >= fewer.psnr_01 - 0.01 and more.ssim >= fewer.ssim - 1e-4
