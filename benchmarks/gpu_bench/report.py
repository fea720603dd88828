"""The suite's Markdown report: a summary of the fastest batch-1 sampling per resolution, then one table or list
per part. Imports no torch (it runs from the recorder, which the launcher loads before torch)."""

from __future__ import annotations

from typing import Any

# Columns shown per part in the Markdown (the JSON holds every field).
COLUMNS = {
    "gen128": ["network", "image", "batch", "precision", "channels_last", "compile", "cudnn_benchmark", "what",
               "step_ms", "volume_s_default", "volume_s", "compile_s", "peak_allocated_gb", "peak_reserved_gb",
               "achieved_tflops", "pct_of_bf16_matmul_peak", "status"],
    "train": ["network", "image", "batch", "precision", "activation_checkpointing", "compile", "it_per_s", "step_s",
              "compile_s", "peak_allocated_gb", "peak_reserved_gb", "status"],
}  # fmt: skip
COLUMNS["gen256"] = COLUMNS["gen128"]


def markdown(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    lines = [
        f"# GPU suite: {env.get('device_name', '?')}",
        "",
        f"* command: `{data['command']}`",
        f"* started {data['started']}, {data.get('elapsed_s', '?')} s; tiny: {data['tiny']}; "
        f"budget scale {data['budget_scale']}",
        f"* torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, driver {env.get('driver')}, "
        f"GPU memory {env.get('gpu_memory_gb')} GB, commit {env.get('git_commit')}",
        "",
    ]
    summary = _summary(data)
    if summary:
        lines += ["## Summary (batch 1)", "", *summary, ""]
    for name, part in data["parts"].items():
        lines += [f"## {name}: {part['status']}", ""]
        lines += [f"* {note}" for note in part["notes"]]
        rows = part["rows"]
        if rows and name in COLUMNS:
            columns = [c for c in COLUMNS[name] if any(c in r for r in rows)]
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
        elif rows:  # rows of different kinds: one line each
            lines.append("")
            for row in rows:
                fields = ", ".join(f"{k} {_cell(v)}" for k, v in row.items() if k not in ("traceback", "wall_s"))
                lines.append(f"* {fields}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _summary(data: dict[str, Any]) -> list[str]:
    """Per resolution: the fastest batch-1 sampling configuration (time per volume and its memory)."""
    out = []
    for name in ("gen128", "gen256"):
        rows = [r for r in data["parts"].get(name, {}).get("rows", []) if r.get("status") == "ok"]
        step_rows = [r for r in rows if r.get("batch") == 1 and "volume_s_default" in r]
        if not step_rows:
            continue
        best = min(step_rows, key=lambda r: r["volume_s_default"])
        e2e = next((r for r in rows if "volume_s" in r), None)
        if not out:
            out = ["| image | fastest setting | s / volume (default sampler, 25 calls) | peak allocated GB | "
                   "peak reserved GB | generate() end to end s | its peak GB |",
                   "|---|---|---|---|---|---|---|"]  # fmt: skip
        setting = f"{best['precision']}, {'channels-last' if best['channels_last'] else 'contiguous'}" + (
            ", compiled" if best["compile"] else ""
        )
        out.append(
            f"| {best['image']}^3 | {setting} | {best['volume_s_default']} | {best.get('peak_allocated_gb', '')} | "
            f"{best.get('peak_reserved_gb', '')} | {e2e.get('volume_s', '') if e2e else ''} | "
            f"{e2e.get('peak_allocated_gb', '') if e2e else ''} |"
        )
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")
