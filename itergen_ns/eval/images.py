"""Pictures of results: labelled cells, method-by-frame grids, orbit videos (mp4, GIF without ffmpeg)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np
from PIL import Image, ImageDraw

from itergen_ns.io import atomic_path


def label_image(image: np.ndarray, text: str) -> np.ndarray:
    pil = Image.fromarray(image)
    ImageDraw.Draw(pil).text((2, 1), text, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(pil)


def image_grid(
    gt: np.ndarray, renders: Dict[str, np.ndarray], inputs: Sequence[int], eval_indices: Sequence[int], rows: int
) -> np.ndarray:
    """Rows of held-out frames; columns: first input | each method | ground truth. Cells are enlarged
    (nearest neighbour) to at least 128 px wide so small renders and the labels stay legible."""
    scale = max(1, 128 // gt.shape[2])
    gt = gt.repeat(scale, axis=1).repeat(scale, axis=2)
    renders = {m: r.repeat(scale, axis=1).repeat(scale, axis=2) for m, r in renders.items()}
    picks = [eval_indices[int(i)] for i in np.linspace(0, len(eval_indices) - 1, min(rows, len(eval_indices)))]
    grid_rows = []
    for k, f in enumerate(picks):
        cells = [gt[inputs[0]]] + [renders[m][f] for m in renders] + [gt[f]]
        if k == 0:
            names = ["input"] + list(renders) + ["ground truth"]
            cells = [label_image(c, n) for c, n in zip(cells, names)]
        grid_rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(grid_rows, axis=0)


def write_video(frames: np.ndarray, path: Path, fps: int = 10) -> Path:
    """mp4 of uint8 frames (written to a temp name, then renamed); falls back to GIF without ffmpeg."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // frames.shape[1])
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    try:
        with atomic_path(path, keep_suffix=True) as tmp:
            imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1)
    except (ImportError, RuntimeError, ValueError):
        path = path.with_suffix(".gif")
        with atomic_path(path, keep_suffix=True) as tmp:
            imageio.mimwrite(tmp, list(frames), duration=1.0 / fps, loop=0)
    return path
