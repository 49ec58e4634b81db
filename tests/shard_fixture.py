"""A synthetic snapshot shard on disk (a coloured blob orbiting with the camera), shared by the diffusion tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from itergen_ns.snapshots.format import write_shard

H = W = 24  # shard resolution; the tiny model works at 32 px, so the loader resizes


def orbit_c2w(n: int, radius: float = 2.0) -> np.ndarray:
    out = np.zeros((n, 3, 4), np.float32)
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = np.array([radius * math.sin(a), 0.4, radius * math.cos(a)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        out[i] = np.stack([right, up, -fwd, eye], axis=1)
    return out


def make_shard(
    root: Path, name: str, frames: int = 12, steps: int = 2, seed: int = 0, latents: bool = False, depths: bool = False
) -> Path:
    """A synthetic shard: a coloured blob moving with the camera angle; renders are blurred/noisy versions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] / H
    colour = rng.uniform(0.2, 1.0, 3)
    images = np.zeros((frames, H, W, 3), np.float32)
    for f in range(frames):
        cx = 0.5 + 0.3 * math.sin(2 * math.pi * f / frames)
        blob = np.exp(-((xx - cx) ** 2 + (yy - 0.5) ** 2) / 0.02)
        images[f] = 0.1 + blob[..., None] * colour
    renders = np.stack([np.clip(images + rng.normal(0, 0.3 / (s + 1), images.shape), 0, 1) for s in range(steps)])
    arrays = {
        "images": (images.clip(0, 1) * 255).astype(np.uint8),
        "c2w": orbit_c2w(frames),
        "intrinsics": np.tile(np.array([30.0, 30.0, W / 2, H / 2], np.float32), (frames, 1)),
        "input_indices": np.array([0, frames // 2], np.int64),
        "steps": np.arange(1, steps + 1, dtype=np.int64) * 100,
        "renders": (renders * 255).astype(np.uint8),
    }
    if latents:
        arrays["render_latents"] = rng.normal(size=(steps, frames, 4, 8, 8)).astype(np.float16)
    if depths:  # a surface 2 units in front of every camera, none in the top rows
        arrays["depths"] = np.full((steps, frames, H, W), 2.0, np.float16)
        arrays["depths"][:, :, : H // 4] = 0
    return write_shard(root, name, arrays, {"scene": name, "num_frames": frames, "steps": arrays["steps"].tolist()})
