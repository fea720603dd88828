"""Where the training volumes come from: a folder (described by ``wdm summarize``) or volume nodes of the scene
(written to files with their geometry, so that ``wdm train`` reads them like any folder).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from vtk.util import numpy_support
from WaveletDiffusionCommonLib import volumes

# Exported scene volumes live in the run folder, not in a temporary one: `wdm train --resume` reads the data
# again (its config.json records this path), also after Slicer was restarted.
SCENE_VOLUMES_FOLDER = "scene_volumes"
EXPORT_SUFFIX = ".nrrd"

LAYOUT_NAMES = {
    "brats": "BraTS (one case folder per subject)",
    "lidc": "LIDC-IDRI (processed.nii.gz per case)",
    "folder": "a folder of volume files",
    "general": "a folder of volume files",  # the same layout, as older engines name it
    "list": "a list file of volume paths",
}


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._-]+", "_", name)).strip("._")
    return cleaned or "volume"


def export_volume_nodes(nodes: list[Any], folder: str | os.PathLike) -> list[Path]:
    """Write each scalar volume node as ``<name>.nrrd`` with its geometry (Slicer's own NRRD writer).

    Files this function wrote earlier into ``folder`` are removed first, so the folder holds exactly these
    volumes. Raises ``ValueError`` for an empty selection or a node without voxels, ``OSError`` when a file
    cannot be written.
    """
    if not nodes:
        raise ValueError("select at least one volume to train on")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"*{EXPORT_SUFFIX}"):
        stale.unlink()
    written: list[Path] = []
    used: set[str] = set()
    for node in nodes:
        image = node.GetImageData()
        if image is None or image.GetPointData().GetScalars() is None:
            raise ValueError(f"the volume {node.GetName()!r} holds no voxels")
        if image.GetPointData().GetScalars().GetNumberOfComponents() != 1:
            raise ValueError(f"the volume {node.GetName()!r} is not a scalar (single-channel) volume")
        base = _safe_name(node.GetName())
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name.lower())
        path = folder / f"{name}{EXPORT_SUFFIX}"
        scene = node.GetScene()
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        try:
            storage.SetFileName(str(path))
            # Uncompressed: Slicer's writer runs on the GUI thread (VTK/MRML objects may not be used from
            # another), and gzip made a large CT take seconds there; raw NRRD costs only the disk's speed.
            storage.SetUseCompression(False)
            if not storage.WriteData(node) or not path.is_file():
                raise OSError(f"Slicer could not write the volume {node.GetName()!r} to {path}")
        finally:
            scene.RemoveNode(storage)
        written.append(path)
    return written


def describe_nodes(nodes: list[Any]) -> str:
    """What the selected volumes hold: count, sizes, spacings and intensity range."""
    if not nodes:
        return "No volume selected."
    shapes: Counter[str] = Counter()
    spacings: Counter[str] = Counter()
    low, high = np.inf, -np.inf
    problems = []
    for node in nodes:
        image = node.GetImageData()
        if image is None or image.GetPointData().GetScalars() is None:
            problems.append(f"  {node.GetName()}: holds no voxels")
            continue
        shapes["x".join(str(d) for d in image.GetDimensions())] += 1
        spacing = np.linalg.norm(volumes.ijk_to_ras(node)[:3, :3], axis=0)
        spacings["x".join(f"{s:.4g}" for s in spacing)] += 1
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        if values.size:
            low, high = min(low, float(np.nanmin(values))), max(high, float(np.nanmax(values)))
    lines = [f"{len(nodes) - len(problems)} volume(s) from the scene, written to the run folder as NRRD"]
    if shapes:
        lines.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in shapes.most_common()))
        lines.append("spacings (mm): " + ", ".join(f"{k} ({v})" for k, v in spacings.most_common()))
    if np.isfinite(low):
        lines.append(f"intensity range: [{low:.6g}, {high:.6g}]")
    if problems:
        lines.append("cannot be used:")
        lines.extend(problems)
    return "\n".join(lines)


def describe_summary(result: dict[str, Any], max_listed: int = 20) -> str:
    """The text the module shows for the ``result`` event of ``wdm summarize``."""
    summary = result.get("summary") or {}
    layout = result.get("format", "?")
    count = int(summary.get("count", 0))
    skipped = summary.get("skipped") or []
    lines = [f"layout: {LAYOUT_NAMES.get(layout, layout)}", f"{count} usable volume(s), {len(skipped)} skipped"]
    if summary.get("shapes"):
        lines.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in summary["shapes"].items()))
    if summary.get("spacings"):
        lines.append("spacings (mm): " + ", ".join(f"{k} ({v})" for k, v in summary["spacings"].items()))
    if summary.get("intensity_range"):
        low, high = summary["intensity_range"]
        lines.append(f"intensity range: [{low:.6g}, {high:.6g}]")
    for warning in summary.get("warnings") or []:
        lines.append(f"warning: {warning}")
    if skipped:
        lines.append("cannot be used (tick 'Skip unusable files' to train on the others):")
        lines.extend(f"  {s['path']}: {s['reason']}" for s in skipped[:max_listed])
        if len(skipped) > max_listed:
            lines.append(f"  (+{len(skipped) - max_listed} more)")
    return "\n".join(lines)
