"""Seeded, tileable 3D value noise (trilinear interpolation of a random lattice) for procedural textures."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


class ValueNoise:
    """Smooth noise in [0, 1] over R^3 from an ``size``^3 random lattice drawn from ``rng`` (wraps around)."""

    def __init__(self, rng: np.random.Generator, size: int = 32):
        self.size = int(size)
        self.lattice = torch.from_numpy(rng.random(self.size**3).astype(np.float32))

    def __call__(self, p: Float[Tensor, "M 3"]) -> Float[Tensor, " M"]:
        """Noise value at points ``p`` (lattice spacing 1)."""
        n = self.size
        base = torch.floor(p)
        f = p - base
        f = f * f * (3.0 - 2.0 * f)  # smoothstep fade: C1-continuous
        i = base.long().remainder(n)
        out = torch.zeros(p.shape[0], dtype=p.dtype)
        for dx in (0, 1):
            wx = f[:, 0] if dx else 1.0 - f[:, 0]
            ix = (i[:, 0] + dx) % n
            for dy in (0, 1):
                wy = f[:, 1] if dy else 1.0 - f[:, 1]
                iy = (i[:, 1] + dy) % n
                for dz in (0, 1):
                    wz = f[:, 2] if dz else 1.0 - f[:, 2]
                    iz = (i[:, 2] + dz) % n
                    out = out + wx * wy * wz * self.lattice[(ix * n + iy) * n + iz]
        return out

    def fbm(self, p: Float[Tensor, "M 3"], octaves: int = 3) -> Float[Tensor, " M"]:
        """Fractal sum of ``octaves`` octaves (each twice the frequency, half the amplitude), in [0, 1]."""
        total = torch.zeros(p.shape[0], dtype=p.dtype)
        amp, norm = 1.0, 0.0
        for k in range(octaves):
            total = total + amp * self(p * (2.0**k) + 17.31 * k)
            norm += amp
            amp *= 0.5
        return total / norm
