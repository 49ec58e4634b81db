"""Signed distance functions of the primitives the procedural objects are built from (vectorised, torch).

All functions take local coordinates ``q`` [M, 3] (z is the primitive's axis) and return distances [M].
Formulas are the standard exact (or conservative, for the ellipsoid) closed forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


def _len2(a: Tensor, b: Tensor) -> Tensor:
    return torch.sqrt(a * a + b * b)


def sd_cylinder(q: Float[Tensor, "M 3"], radius: float, half_height: float) -> Float[Tensor, " M"]:
    """Capped cylinder around the z axis, centred at the origin."""
    dx = _len2(q[:, 0], q[:, 1]) - radius
    dz = q[:, 2].abs() - half_height
    outside = _len2(dx.clamp_min(0.0), dz.clamp_min(0.0))
    return outside + torch.maximum(dx, dz).clamp_max(0.0)


def sd_capped_cone(q: Float[Tensor, "M 3"], half_height: float, r_bottom: float, r_top: float) -> Float[Tensor, " M"]:
    """Cone frustum around the z axis (radius r_bottom at z=-h, r_top at z=+h), exact distance."""
    qx = _len2(q[:, 0], q[:, 1])
    qy = q[:, 2]
    h = half_height
    k2x, k2y = r_top - r_bottom, 2.0 * h
    ca_x = qx - torch.minimum(qx, torch.where(qy < 0.0, torch.full_like(qy, r_bottom), torch.full_like(qy, r_top)))
    ca_y = qy.abs() - h
    s = ((r_top - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)
    s = s.clamp(0.0, 1.0)
    cb_x = qx - r_top + k2x * s
    cb_y = qy - h + k2y * s
    sign = torch.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0)
    return sign * torch.sqrt(torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y))


def sd_torus(q: Float[Tensor, "M 3"], major: float, minor: float) -> Float[Tensor, " M"]:
    """Torus in the xy plane (ring around the z axis)."""
    return _len2(_len2(q[:, 0], q[:, 1]) - major, q[:, 2]) - minor


def sd_hex_prism(q: Float[Tensor, "M 3"], apothem: float, half_height: float) -> Float[Tensor, " M"]:
    """Hexagonal prism along z (a nut), exact distance."""
    kx, ky, kz = -0.8660254, 0.5, 0.57735
    px, py, pz = q[:, 0].abs(), q[:, 1].abs(), q[:, 2].abs()
    dot = (kx * px + ky * py).clamp_max(0.0)
    px = px - 2.0 * dot * kx
    py = py - 2.0 * dot * ky
    lim = kz * apothem
    dx = _len2(px - px.clamp(-lim, lim), py - apothem) * torch.sign(py - apothem)
    dz = pz - half_height
    return torch.maximum(dx, dz).clamp_max(0.0) + _len2(dx.clamp_min(0.0), dz.clamp_min(0.0))


def sd_ellipsoid(q: Float[Tensor, "M 3"], radii: Tuple[float, float, float]) -> Float[Tensor, " M"]:
    """Axis-aligned ellipsoid (the usual k0*(k0-1)/k1 approximation; exact for spheres)."""
    rx, ry, rz = radii
    k0 = torch.sqrt((q[:, 0] / rx) ** 2 + (q[:, 1] / ry) ** 2 + (q[:, 2] / rz) ** 2)
    k1 = torch.sqrt((q[:, 0] / (rx * rx)) ** 2 + (q[:, 1] / (ry * ry)) ** 2 + (q[:, 2] / (rz * rz)) ** 2)
    return k0 * (k0 - 1.0) / k1.clamp_min(1e-9)


@dataclass
class Primitive:
    """One SDF primitive placed in object coordinates.

    ``axes`` (3x3, rows = the primitive's local x, y, z axes in object coordinates) orients it; None means
    axis-aligned. ``clip_below`` keeps only the part with local z >= clip_below (domes). ``part`` names the
    material the surface gets.
    """

    kind: str
    params: Tuple[float, ...]
    center: Tuple[float, float, float]
    part: int
    axes: Optional[np.ndarray] = None
    clip_below: Optional[float] = None

    def distance(self, p: Float[Tensor, "M 3"]) -> Float[Tensor, " M"]:
        """Signed distance of object-space points ``p`` to this primitive."""
        d = p - torch.tensor(self.center, dtype=p.dtype)
        if self.axes is not None:
            a = [[float(v) for v in row] for row in self.axes]
            # explicit 3x3 product: elementwise ops keep the result bit-identical run to run
            d = torch.stack([d[:, 0] * r[0] + d[:, 1] * r[1] + d[:, 2] * r[2] for r in a], dim=1)
        fn = _KINDS.get(self.kind)
        if fn is None:
            raise ValueError(f"Primitive.kind must be one of {sorted(_KINDS)}, got {self.kind!r}")
        out = fn(d, *self.params)
        if self.clip_below is not None:
            out = torch.maximum(out, self.clip_below - d[:, 2])
        return out


_KINDS: Dict[str, Callable[..., Tensor]] = {
    "cylinder": sd_cylinder,
    "cone": sd_capped_cone,
    "torus": sd_torus,
    "hex": sd_hex_prism,
    "ellipsoid": lambda q, rx, ry, rz: sd_ellipsoid(q, (rx, ry, rz)),
}


def frame_from_z(axis: np.ndarray) -> np.ndarray:
    """Rotation (rows = local x, y, z in object space) whose local z is ``axis``."""
    z = np.asarray(axis, dtype=np.float64)
    z = z / np.linalg.norm(z)
    helper = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])
