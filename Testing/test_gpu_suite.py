"""The GPU suite's CPU dry run: every part runs end to end on tiny networks and records numbers or a reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REFERENCE_DIR, REPO_ROOT

SUITE = REPO_ROOT / "benchmarks" / "gpu_suite.py"
PARTS = ["env", "flops", "correctness", "gen128", "gen256", "train", "ddp", "released", "conditional"]


def _numbers(row: dict) -> list[float]:
    return [v for v in row.values() if isinstance(v, int | float) and not isinstance(v, bool)]


def test_cpu_dry_run_records_every_part(tmp_path: Path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "WDMCore"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["WDM_REFERENCE_DIR"] = str(REFERENCE_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, str(SUITE), "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        first_line = process.stdout.readline()
        first_line_s = time.monotonic() - started
        rest, _ = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the suite and the DDP processes it spawned
        process.communicate()
        raise
    output = first_line + rest
    assert process.returncode == 0, output[-4000:]
    # Progress from the first second: the first line comes before torch is imported.
    assert "gpu_suite: starting" in first_line
    assert first_line_s < 10, first_line_s

    (json_path,) = tmp_path.glob("gpu_suite_*.json")
    (md_path,) = tmp_path.glob("gpu_suite_*.md")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert "--tiny" in data["command"] and data["tiny"] is True
    assert data["environment"]["torch"]
    assert list(data["parts"]) == PARTS

    for name, part in data["parts"].items():
        status = part["status"]
        failures = [(r.get("status"), r.get("traceback")) for r in part["rows"] if r.get("status") != "ok"]
        assert status == "ok" or status.startswith(("ok (", "skipped: ")), (name, status, failures)
        if status.startswith("skipped: "):
            assert len(status) > len("skipped: "), name
            continue
        assert part["rows"], name
        for row in part["rows"]:
            assert row["status"] == "ok" or row["status"].startswith("skipped: "), (name, row)
            if row["status"] == "ok":
                assert _numbers(row), (name, row)
    assert data["parts"]["released"]["status"] == "skipped: no --released path given"

    rows = {name: part["rows"] for name, part in data["parts"].items()}
    # The FLOP counts behind the TFLOP/s figures: 1.05 and 8.41 TFLOP per full-size forward pass.
    counted = {r["network"]: r["tflop_per_forward"] for r in rows["flops"] if "tflop_per_forward" in r}
    assert abs(counted["unet-128"] - 1.05) < 0.005 and abs(counted["unet-256"] - 8.41) < 0.005
    scaled = next(r for r in rows["flops"] if "scaled_over_meta" in r)
    assert abs(scaled["scaled_over_meta"] - 1) < 0.01

    fixtures = [r for r in rows["correctness"] if r.get("what") == "fixture forward"]
    assert {r["fixture"] for r in fixtures} == {"unet_tiny_additive.pt", "wnet_tiny_freq.pt"}
    assert all(r["pass_1e-4"] for r in fixtures)
    assert all(r["pass_1e-4"] for r in rows["correctness"] if r.get("what") == "released layout forward")
    reduced = [r for r in rows["correctness"] if r.get("what") == "reduced precision vs fp32"]
    assert all(0 < r["bf16_relative_error"] < 0.1 and r["bf16_finite"] for r in reduced)

    for name in ("gen128", "gen256"):
        timed = [r for r in rows[name] if r["status"] == "ok" and "step_ms" in r]
        assert {(r["precision"], r["channels_last"]) for r in timed} >= {("fp32", False), ("bf16", True)}
        assert all(r["step_ms"] > 0 and r["volume_s_default"] > 0 for r in timed)
        assert max(r["batch"] for r in timed) > 1
    assert any(r.get("compile") and r["status"] == "ok" for r in rows["gen128"])
    end_to_end = [r for r in rows["gen128"] if r.get("what") == "wdmcore.generate end to end"]
    assert end_to_end[0]["status"] == "ok" and end_to_end[0]["finite"]

    trained = [r for r in rows["train"] if r["status"] == "ok"]
    assert {r["network"] for r in trained} == {"unet-128", "unet-256"}
    assert all(r["it_per_s"] > 0 and r["loss_finite"] for r in trained)
    assert any(r["activation_checkpointing"] for r in trained) and any(r["compile"] for r in trained)
    assert rows["ddp"][0]["ranks_in_sync"] is True

    conditional = {r["network"]: r for r in rows["conditional"] if r.get("what") == "fixture forward"}
    assert conditional["cwdm"]["in_channels"] == 32 and conditional["fastwdm3d"]["in_channels"] == 24
    assert all(r["pass_1e-4"] for r in conditional.values())

    markdown = md_path.read_text(encoding="utf-8")
    assert "## gen128" in markdown and "| network | image | batch |" in markdown and data["command"] in markdown


def test_the_suite_counts_the_engines_default_calls():
    # The per-volume figures are step time x the default sampler's calls: they must follow the engine's default.
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from gpu_bench import generation as gpu_suite
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    from wdmcore.tasks.generate import DEFAULT_SAMPLER, DEFAULT_STEPS

    assert DEFAULT_STEPS[DEFAULT_SAMPLER] == gpu_suite.DEFAULT_CALLS
