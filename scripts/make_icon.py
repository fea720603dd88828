"""Draw the icons: a brain slice and its one-level 2-D Haar wavelet decomposition (the extension and the
generation module), and the same tile, dimmed, under a falling loss curve (the training module).

Usage: python scripts/make_icon.py  (writes Resources/Icons/WaveletDiffusion.png, the generation module's copy
and WaveletDiffusionTraining/Resources/Icons/WaveletDiffusionTraining.png)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128


def brain_slice(n: int) -> np.ndarray:
    """An axial 'brain': an ellipse with folded cortex texture, two ventricles and a dark rim."""
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    r = np.sqrt((x / 0.82) ** 2 + (y / 0.95) ** 2)
    angle = np.arctan2(y, x)
    folds = 0.025 * np.sin(18 * angle) * (r > 0.6)
    inside = r + folds < 0.92
    tissue = 0.62 + 0.18 * np.cos(30 * r + 2.5 * np.sin(9 * angle)) * (r > 0.62)
    tissue = np.where(r < 0.62, 0.78, tissue)
    ventricles = ((np.abs(x) - 0.16) ** 2 / 0.012 + (y + 0.05) ** 2 / 0.09) < 1
    tissue = np.where(ventricles, 0.15, tissue)
    fissure = (np.abs(x) < 0.025) & (y < -0.35)
    image = np.where(inside & ~fissure, tissue, 0.0)
    return np.clip(image, 0, 1)


def haar2d(image: np.ndarray):
    a, b = image[0::2, 0::2], image[0::2, 1::2]
    c, d = image[1::2, 0::2], image[1::2, 1::2]
    return (a + b + c + d) / 4, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2


def colourise(values: np.ndarray, colour: tuple[int, int, int], gain: float) -> np.ndarray:
    v = np.clip(np.abs(values) * gain, 0, 1)[..., None]
    base = np.array([18, 24, 38], dtype=np.float64)
    return base + v * (np.array(colour, dtype=np.float64) - base)


def wavelet_tile() -> np.ndarray:
    """The RGBA float image of the extension icon."""
    pane, gap, margin = 58, 4, 4
    ll, lh, hl, hh = haar2d(brain_slice(2 * pane))
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.float64)
    # rounded dark tile
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    corner = 18
    cx = np.clip(x, corner, SIZE - corner)
    cy = np.clip(y, corner, SIZE - corner)
    tile = np.hypot(x - cx, y - cy) <= corner
    rgba[tile] = [28, 36, 56, 255]
    panes = [
        (ll, (236, 236, 240), 1.0),
        (lh, (90, 190, 255), 5.0),
        (hl, (120, 230, 190), 5.0),
        (hh, (250, 170, 90), 8.0),
    ]
    for index, (values, colour, gain) in enumerate(panes):
        row, col = divmod(index, 2)
        top = margin + row * (pane + gap) + 2
        left = margin + col * (pane + gap) + 2
        rgba[top : top + pane, left : left + pane, :3] = colourise(values, colour, gain)
        rgba[top : top + pane, left : left + pane, 3] = 255
    return rgba


def training_tile() -> np.ndarray:
    """The wavelet tile, dimmed, under a falling, slightly noisy loss curve with a bright outline."""
    rgba = wavelet_tile()
    rgba[..., :3] *= 0.45
    x = np.linspace(0, 1, 400)
    noise = 0.035 * np.sin(37 * x) * np.exp(-2 * x)
    curve = 0.12 + 0.7 * np.exp(-5 * x) + noise  # fraction of the height from the bottom
    px = 14 + x * (SIZE - 28)
    py = SIZE - 14 - curve * (SIZE - 28)
    y, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    distance = np.full((SIZE, SIZE), np.inf)
    for cx, cy in zip(px, py, strict=True):
        distance = np.minimum(distance, np.hypot(xx - cx, y - cy))
    outline = distance <= 6.5
    line = distance <= 3.5
    opaque = rgba[..., 3] > 0
    rgba[outline & opaque, :3] = [18, 24, 38]
    rgba[line & opaque, :3] = [255, 196, 64]
    return rgba


def save(rgba: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(rgba).astype(np.uint8), "RGBA").save(path, optimize=True)
    return path


def main() -> None:
    rgba = wavelet_tile()
    out = ROOT / "Resources" / "Icons" / "WaveletDiffusion.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(rgba).astype(np.uint8), "RGBA").save(out, optimize=True)
    module_icon = ROOT / "WaveletDiffusion" / "Resources" / "Icons" / "WaveletDiffusion.png"
    module_icon.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, module_icon)
    training_icon = save(
        training_tile(), ROOT / "WaveletDiffusionTraining" / "Resources" / "Icons" / "WaveletDiffusionTraining.png"
    )
    print(out, module_icon, training_icon)


if __name__ == "__main__":
    main()
