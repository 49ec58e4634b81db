"""Procedural materials: two-colour patterns (stripes, checker, noise, tiles, ...) evaluated in object or world space.

Patterns return a blend weight in [0, 1] between a material's two colours. ``footprint`` (world size of a pixel
at the shaded point) fades patterns towards their mean where they would alias, a cheap pre-filter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from itergen_ns.data.procedural.noise import ValueNoise

OBJECT_PATTERNS = ("plain", "hstripes", "vstripes", "checker", "noise", "spots")
GROUND_PATTERNS = ("checker", "tiles", "noise", "planks")
WALL_PATTERNS = ("bricks", "vstripes", "blotches", "bands")


@dataclass
class Material:
    """Two colours (linear RGB) blended by a pattern of frequency ``freq`` (cycles per unit), plus fine grain."""

    color1: np.ndarray
    color2: np.ndarray
    pattern: str
    freq: float
    phase: float = 0.0
    angle: float = 0.0
    grain: float = 0.1


def smoothstep(e0: float, e1: float, x: Tensor) -> Tensor:
    """Hermite step from 0 (x <= e0) to 1 (x >= e1)."""
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _fade(value: Tensor, mean: float, footprint: Optional[Tensor], freq: float) -> Tensor:
    if footprint is None:
        return value
    keep = (1.0 - 1.5 * footprint * freq).clamp(0.0, 1.0)
    return mean + (value - mean) * keep


def object_pattern(
    mat: Material, q: Float[Tensor, "M 3"], noise: ValueNoise, footprint: Optional[Tensor] = None
) -> Float[Tensor, " M"]:
    """Blend weight of an object material at object-space points ``q`` (z up, object axis = z)."""
    f, ph = mat.freq, mat.phase
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    if mat.pattern == "plain":
        return torch.zeros_like(x)
    if mat.pattern == "hstripes":
        t = smoothstep(-0.35, 0.35, torch.sin(2 * math.pi * f * z + ph))
    elif mat.pattern == "vstripes":
        t = smoothstep(-0.35, 0.35, torch.sin(round(f) * torch.atan2(y, x) + ph))
    elif mat.pattern == "checker":
        s = torch.sin(2 * math.pi * f * x + ph) * torch.sin(2 * math.pi * f * y) * torch.sin(2 * math.pi * f * z + ph)
        t = smoothstep(-0.15, 0.15, s)
    elif mat.pattern == "noise":
        t = smoothstep(0.25, 0.75, noise.fbm(q * f + ph))
    elif mat.pattern == "spots":
        t = smoothstep(0.52, 0.6, noise.fbm(q * f + ph))
    else:
        raise ValueError(f"Material.pattern must be one of {OBJECT_PATTERNS}, got {mat.pattern!r}")
    return _fade(t, 0.5, footprint, f)


def ground_pattern(
    mat: Material, xy: Float[Tensor, "M 2"], noise: ValueNoise, footprint: Optional[Tensor] = None
) -> Float[Tensor, " M"]:
    """Blend weight of a ground material at ground-plane points ``xy``."""
    f, ph = mat.freq, mat.phase
    ca, sa = math.cos(mat.angle), math.sin(mat.angle)
    a = xy[:, 0] * ca + xy[:, 1] * sa
    b = -xy[:, 0] * sa + xy[:, 1] * ca
    if mat.pattern == "checker":
        t = smoothstep(-0.1, 0.1, torch.sin(2 * math.pi * f * a) * torch.sin(2 * math.pi * f * b))
    elif mat.pattern == "tiles":
        u, v = torch.frac(a * f + 100.0), torch.frac(b * f + 100.0)
        edge = torch.minimum(torch.minimum(u, 1 - u), torch.minimum(v, 1 - v))
        tile_id = torch.stack([torch.floor(a * f), torch.floor(b * f), torch.full_like(a, ph)], 1)
        t = 0.6 * noise(tile_id * 7.13)
        t = torch.where(edge < 0.06, torch.ones_like(t), t)
    elif mat.pattern == "noise":
        t = smoothstep(0.3, 0.7, noise.fbm(torch.stack([a * f, b * f, torch.full_like(a, ph)], 1)))
    elif mat.pattern == "planks":
        idx = torch.floor(a * f)
        grain = noise(torch.stack([a * f * 6.0, b * 0.7, idx * 3.1 + ph], 1))
        t = 0.35 * noise(torch.stack([idx * 5.3, torch.full_like(a, ph), torch.zeros_like(a)], 1)) + 0.35 * grain
        u = torch.frac(a * f + 100.0)
        t = torch.where(torch.minimum(u, 1 - u) < 0.05, torch.ones_like(t), t)
    else:
        raise ValueError(f"ground pattern must be one of {GROUND_PATTERNS}, got {mat.pattern!r}")
    return _fade(t, 0.5, footprint, f)


def wall_pattern(
    mat: Material, s: Float[Tensor, " M"], z: Float[Tensor, " M"], noise: ValueNoise, footprint: Optional[Tensor] = None
) -> Float[Tensor, " M"]:
    """Blend weight of a backdrop-wall material at arc length ``s`` and height ``z``."""
    f, ph = mat.freq, mat.phase
    if mat.pattern == "bricks":
        row = torch.floor(z * f * 2.0)
        u = torch.frac(s * f + 0.5 * torch.remainder(row, 2.0) + 100.0)
        v = torch.frac(z * f * 2.0 + 100.0)
        mortar = (torch.minimum(u, 1 - u) < 0.05) | (torch.minimum(v, 1 - v) < 0.08)
        t = 0.5 * noise(
            torch.stack([torch.floor(s * f + 0.5 * torch.remainder(row, 2.0)), row, torch.full_like(s, ph)], 1)
        )
        t = torch.where(mortar, torch.ones_like(t), t)
    elif mat.pattern == "vstripes":
        t = smoothstep(-0.3, 0.3, torch.sin(2 * math.pi * f * s + ph))
    elif mat.pattern == "blotches":
        t = smoothstep(0.35, 0.65, noise.fbm(torch.stack([s * f, z * f, torch.full_like(s, ph)], 1)))
    elif mat.pattern == "bands":
        wobble = 0.3 * noise(torch.stack([s * 0.7, torch.full_like(s, ph), torch.zeros_like(s)], 1))
        t = smoothstep(-0.3, 0.3, torch.sin(2 * math.pi * f * (z + wobble)))
    else:
        raise ValueError(f"wall pattern must be one of {WALL_PATTERNS}, got {mat.pattern!r}")
    return _fade(t, 0.5, footprint, f)


def blend(mat: Material, t: Float[Tensor, " M"], grain: Optional[Tensor] = None) -> Float[Tensor, "M 3"]:
    """Albedo = lerp(color1, color2, t), modulated by an optional grain field in [0, 1]."""
    c1 = torch.tensor(mat.color1, dtype=t.dtype)
    c2 = torch.tensor(mat.color2, dtype=t.dtype)
    rgb = c1[None] + (c2 - c1)[None] * t[:, None]
    if grain is not None:
        rgb = rgb * (1.0 + mat.grain * (2.0 * grain[:, None] - 1.0))
    return rgb.clamp(0.0, 1.0)
