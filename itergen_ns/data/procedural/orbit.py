"""CO3D-like capture trajectories: a hand-held inward orbit around the object with smooth elevation, radius,
speed and roll wobble (nerfstudio OpenGL c2w, world z up)."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
from jaxtyping import Float

from itergen_ns.data.camera_utils import look_at


def _wobble(rng: np.random.Generator, s: np.ndarray, terms: int = 3) -> np.ndarray:
    """Smooth zero-mean random curve on s in [0, 1] with amplitude about 1 (a few random sinusoids)."""
    out = np.zeros_like(s)
    for k in range(1, terms + 1):
        out += rng.normal(0.0, 1.0 / k) * np.sin(2 * math.pi * (k * s + rng.random()))
    return out / math.sqrt(sum(1.0 / k**2 for k in range(1, terms + 1)))


def sample_orbit(
    rng: np.random.Generator,
    num_frames: int,
    target: Tuple[float, float, float],
    distance: float,
    elevation_deg: Tuple[float, float] = (8.0, 40.0),
    elevation_jitter_deg: float = 6.0,
    radius_jitter: float = 0.08,
    roll_jitter_deg: float = 2.0,
    look_jitter: float = 0.0,
) -> Float[np.ndarray, "N 3 4"]:
    """Camera-to-world matrices of ``num_frames`` frames orbiting ``target`` at about ``distance``.

    The azimuth sweeps 300-360 degrees (either direction) at a slightly uneven speed, the elevation wobbles
    around a per-capture mean, the radius varies by about ``radius_jitter`` (relative), and the view
    direction aims at ``target`` plus an optional smooth offset of size ``look_jitter`` (world units).
    """
    if num_frames < 1:
        raise ValueError(f"sample_orbit: num_frames must be >= 1, got {num_frames}")
    s = np.linspace(0.0, 1.0, num_frames, endpoint=False)
    sweep = rng.uniform(300.0, 360.0) * rng.choice([-1.0, 1.0])
    speed = 0.25 * rng.uniform(-1, 1) * np.sin(2 * math.pi * s) / (2 * math.pi)  # monotonic warp of s
    azimuth = math.radians(rng.uniform(0.0, 360.0)) + math.radians(sweep) * (s + speed)
    elev_mean = rng.uniform(*elevation_deg)
    elevation = np.radians(np.clip(elev_mean + elevation_jitter_deg * _wobble(rng, s), 2.0, 80.0))
    radius = distance * (1.0 + radius_jitter * _wobble(rng, s))
    roll = np.radians(roll_jitter_deg * _wobble(rng, s))
    offsets = look_jitter * np.stack([_wobble(rng, s) for _ in range(3)], 1) / math.sqrt(3)
    tgt = np.asarray(target, dtype=np.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    poses = []
    for i in range(num_frames):
        dirn = np.array(
            [
                math.cos(elevation[i]) * math.cos(azimuth[i]),
                math.cos(elevation[i]) * math.sin(azimuth[i]),
                math.sin(elevation[i]),
            ]
        )
        eye = tgt + radius[i] * dirn
        c2w = look_at(torch.from_numpy(eye), torch.from_numpy(tgt + offsets[i]), up).numpy()
        c, sn = math.cos(roll[i]), math.sin(roll[i])
        rz = np.array([[c, -sn, 0.0], [sn, c, 0.0], [0.0, 0.0, 1.0]])
        c2w[:, :3] = c2w[:, :3] @ rz  # roll about the viewing axis
        poses.append(c2w)
    return np.stack(poses)
