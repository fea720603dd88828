"""Engine benchmark on CPU: Haar DWT+IDWT and the U-Net forward pass, next to the released code's figures.

Each measurement runs in a fresh process (like the released baseline in shared/reference/official_cpu_baseline.json):
wall time via perf_counter, peak RSS sampled every 5 ms during the call. Usage:

    python benchmarks/bench_engine.py                      # everything, 2 threads, writes benchmarks/results/
    python benchmarks/bench_engine.py --cases dwt128 unet128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from memory import PeakRSS, rss_mb

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "Testing" / "reference" / "official_cpu_baseline.json"
CASES = {
    "dwt128": ("dwt", 128),
    "dwt256": ("dwt", 256),
    "unet128": ("unet-128", 64),
    "unet256": ("unet-256", 128),
}


def run_case(name: str, threads: int) -> dict:
    """One measurement in this process (called in a child)."""
    import torch

    torch.set_num_threads(threads)
    kind, size = CASES[name]
    if kind == "dwt":
        from wdmcore.wavelets import dwt3, idwt3

        x = torch.randn(1, 1, size, size, size)
        idwt3(dwt3(x[..., :8, :8, :8]))  # warm the cached matrix, not the big call
        before = rss_mb()
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            bands = dwt3(x)
            t1 = time.perf_counter()
            y = idwt3(bands)
            t2 = time.perf_counter()
        return {
            "dwt_s": t1 - t0,
            "idwt_s": t2 - t1,
            "both_s": t2 - t0,
            "roundtrip_maxerr": float((y - x).abs().max()),
            "rss_before_MB": before,
            "peak_rss_MB": rss.peak,
        }
    from wdmcore.networks import build_network, preset_config

    network = build_network(preset_config(kind)).eval()
    x = torch.randn(1, 8, size, size, size)
    t = torch.tensor([500])
    before = rss_mb()
    with torch.inference_mode(), PeakRSS() as rss:
        t0 = time.perf_counter()
        network(x, t)
        t1 = time.perf_counter()
    return {"forward_s": t1 - t0, "rss_before_MB": before, "peak_rss_MB": rss.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engine_cpu.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.threads)))
        return

    import torch

    env = {**os.environ, "PYTHONPATH": str(ROOT / "WDMCore") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = {}
    for case in args.cases:
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--child", case, "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            runs[-1]["loadavg1_after"] = os.getloadavg()[0]
            print(case, runs[-1], flush=True)
        results[case] = runs

    baseline = json.loads(BASELINE.read_text())["results"] if BASELINE.is_file() else {}
    summary = {}
    for case, runs in results.items():
        key = "both_s" if CASES[case][0] == "dwt" else "forward_s"
        ours = min(r[key] for r in runs)
        row = {"ours_best_s": ours, "ours_peak_rss_MB": max(r["peak_rss_MB"] for r in runs)}
        if case in baseline:
            ref = baseline[case]
            if key == "both_s":
                theirs = min(a + b for a, b in zip(ref["dwt_s"], ref["idwt_s"], strict=True))
            else:
                theirs = min(ref["times_s"])
            row.update(
                released_best_s=theirs,
                speedup=theirs / ours,
                released_peak_rss_MB=ref.get("ru_maxrss_MB"),
            )
        summary[case] = row
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "command": "python benchmarks/bench_engine.py " + " ".join(sys.argv[1:]),
        "method": "fresh process per measurement; wall time via perf_counter; peak RSS sampled every 5 ms "
        "(includes Python + torch + weights); network forward in inference_mode, batch 1, t=500, "
        "default (zero-initialised output) weights, like the released baseline",
        "results": results,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
