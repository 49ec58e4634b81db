"""Validation media: image grids (rows = render conditioning | sample | ground truth, columns = frames) and mp4."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import imageio.v2 as imageio
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


def _to_uint8(x: Tensor, scale: int) -> np.ndarray:
    """[..., 3, H, W] float in [0, 1] -> [..., H*scale, W*scale, 3] uint8 (nearest upscaling for tiny images)."""
    if scale > 1:
        x = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def clip_grid(rows: Sequence[Float[Tensor, "G 3 H W"]], scale: int = 1) -> np.ndarray:
    """Stack clips as rows of a grid image, frames left to right."""
    return np.concatenate([np.concatenate(list(_to_uint8(r, scale)), axis=1) for r in rows], axis=0)


def save_clip_grid(path: Path, rows: Sequence[Float[Tensor, "G 3 H W"]], scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, clip_grid(rows, scale))
    return path


def save_side_by_side_video(
    path: Path, columns: Sequence[Float[Tensor, "G 3 H W"]], fps: int = 8, scale: int = 1
) -> Path:
    """mp4 whose frame t shows frame t of each clip side by side (padded to even size for H.264)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.concatenate([_to_uint8(c, scale) for c in columns], axis=2)  # [G, H, W*n, 3]
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1, codec="libx264", pixelformat="yuv420p")
    return path
