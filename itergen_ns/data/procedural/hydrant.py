"""Hydrant-like objects: a random composition of SDF primitives with per-part materials.

Object coordinates: z up, the base stands on z = 0, the body axis is the z axis. Every proportion, the
number and placement of nozzles, the cap style, the optional chain and all materials are drawn per instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from itergen_ns.data.procedural.noise import ValueNoise
from itergen_ns.data.procedural.sdf import Primitive, frame_from_z
from itergen_ns.data.procedural.textures import Material, blend, object_pattern

PART_BODY, PART_CAP, PART_NOZZLE, PART_BASE, PART_TRIM, PART_CHAIN = range(6)

BODY_COLORS = np.array(
    [
        [0.70, 0.06, 0.05],  # red
        [0.85, 0.62, 0.06],  # yellow
        [0.10, 0.38, 0.12],  # green
        [0.08, 0.18, 0.55],  # blue
        [0.55, 0.55, 0.58],  # silver
        [0.85, 0.30, 0.05],  # orange
        [0.82, 0.82, 0.80],  # white
        [0.18, 0.18, 0.20],  # dark grey
    ]
)


def _jitter(rng: np.random.Generator, rgb: np.ndarray, amount: float = 0.05) -> np.ndarray:
    return np.clip(rgb + rng.normal(0.0, amount, 3), 0.02, 0.98)


def _random_material(rng: np.random.Generator, base: np.ndarray, patterned: bool) -> Material:
    """A material around colour ``base``; with ``patterned`` it gets one of the object patterns."""
    pattern = "plain"
    if patterned:
        pattern = str(
            rng.choice(
                ["plain", "hstripes", "vstripes", "checker", "noise", "spots"], p=[0.2, 0.2, 0.15, 0.1, 0.15, 0.2]
            )
        )
    if rng.random() < 0.5:
        second = _jitter(rng, BODY_COLORS[rng.integers(len(BODY_COLORS))])
    else:
        second = np.clip(base * rng.uniform(0.35, 0.6) + rng.uniform(0.0, 0.3), 0.02, 0.98)
    freq = {
        "plain": 1.0,
        "hstripes": rng.uniform(3, 8),
        "vstripes": float(rng.integers(3, 9)),
        "checker": rng.uniform(3, 6),
        "noise": rng.uniform(3, 8),
        "spots": rng.uniform(4, 9),
    }[pattern]
    return Material(
        color1=_jitter(rng, base),
        color2=second,
        pattern=pattern,
        freq=float(freq),
        phase=float(rng.uniform(0, 2 * math.pi)),
        grain=float(rng.uniform(0.03, 0.15)),
    )


@dataclass
class HydrantObject:
    """An object instance: primitives, per-part materials and a bounding sphere for fast ray casting."""

    primitives: List[Primitive]
    materials: Dict[int, Material]
    noise: ValueNoise
    center: Tuple[float, float, float]
    """Bounding-sphere centre (also the point the cameras look at)."""
    radius: float
    """Bounding-sphere radius."""
    height: float

    def distances(self, p: Float[Tensor, "M 3"]) -> Float[Tensor, "P M"]:
        """Distance to each primitive (rows follow ``primitives``)."""
        return torch.stack([prim.distance(p) for prim in self.primitives], 0)

    def sdf(self, p: Float[Tensor, "M 3"]) -> Float[Tensor, " M"]:
        """Signed distance to the whole object."""
        d = self.primitives[0].distance(p)
        for prim in self.primitives[1:]:
            d = torch.minimum(d, prim.distance(p))
        return d

    def part(self, p: Float[Tensor, "M 3"]) -> Int[Tensor, " M"]:
        """Material id of the closest primitive."""
        parts = torch.tensor([prim.part for prim in self.primitives], dtype=torch.long)
        return parts[self.distances(p).argmin(0)]

    def normal(self, p: Float[Tensor, "M 3"], h: float = 1e-3) -> Float[Tensor, "M 3"]:
        """Unit surface normal from the SDF gradient (tetrahedral finite differences)."""
        ks = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=p.dtype)
        n = torch.zeros_like(p)
        for k in ks:
            n = n + k[None] * self.sdf(p + h * k[None])[:, None]
        return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def albedo(
        self, p: Float[Tensor, "M 3"], part: Int[Tensor, " M"], footprint: Tensor | None = None
    ) -> Float[Tensor, "M 3"]:
        """Linear-RGB albedo of surface points ``p`` with material ids ``part``."""
        out = torch.zeros_like(p)
        grain = self.noise(p * 40.0 + 3.7)
        for pid, mat in self.materials.items():
            sel: Bool[Tensor, " M"] = part == pid
            if not bool(sel.any()):
                continue
            fp = footprint[sel] if footprint is not None else None
            out[sel] = blend(mat, object_pattern(mat, p[sel], self.noise, fp), grain[sel])
        return out


def sample_hydrant(rng: np.random.Generator, noise: ValueNoise) -> HydrantObject:
    """Draw one hydrant-like object (about one unit tall) from ``rng``.

    The parts are drawn in a fixed order (base and body, cap, outlets, chain, materials), so a seed always gives the
    same object.
    """
    prims: List[Primitive] = []
    body = _base_and_body(rng, prims)
    top = _cap(rng, prims, body)
    reach, outlets, zn, rn0, length0, r_at = _outlets(rng, prims, body)
    if rng.random() < 0.5:
        _chain(rng, prims, outlets[0][0], zn, rn0, length0, r_at)
    materials = _materials(rng)
    half = top / 2
    radius = math.sqrt(reach**2 + half**2) * 1.02 + 0.01
    return HydrantObject(prims, materials, noise, (0.0, 0.0, half), float(radius), float(top))


@dataclass
class _Body:
    """Sizes of the base plate and the tapered body that the other parts attach to."""

    base_r: float
    body_r: float
    top_r: float
    body_h: float
    z0: float  # bottom of the body (top of the base plate)
    z1: float  # top of the body


def _base_and_body(rng: np.random.Generator, prims: List[Primitive]) -> _Body:
    """Base plate (round or hexagonal), slightly tapered body and its flanges."""
    base_h = rng.uniform(0.04, 0.09)
    base_r = rng.uniform(0.27, 0.38)
    if rng.random() < 0.7:
        prims.append(Primitive("cylinder", (base_r, base_h / 2), (0, 0, base_h / 2), PART_BASE))
    else:
        prims.append(Primitive("hex", (base_r * 0.9, base_h / 2), (0, 0, base_h / 2), PART_BASE))
    body_r = rng.uniform(0.15, 0.23)
    top_r = body_r * rng.uniform(0.8, 1.02)
    body_h = rng.uniform(0.45, 0.7)
    z0, z1 = base_h, base_h + body_h
    prims.append(Primitive("cone", (body_h / 2, body_r, top_r), (0, 0, (z0 + z1) / 2), PART_BODY))
    if rng.random() < 0.7:  # lower flange
        prims.append(Primitive("torus", (body_r * 1.04, rng.uniform(0.018, 0.03)), (0, 0, z0 + 0.02), PART_TRIM))
    prims.append(Primitive("torus", (top_r * 1.06, rng.uniform(0.02, 0.04)), (0, 0, z1), PART_TRIM))
    return _Body(base_r, body_r, top_r, body_h, z0, z1)


def _cap(rng: np.random.Generator, prims: List[Primitive], body: _Body) -> float:
    """Dome or bonnet cap with a top nut; returns the height of the object's top."""
    top_r, z1 = body.top_r, body.z1
    cap_r = top_r * rng.uniform(1.0, 1.15)
    if rng.random() < 0.6:
        cap_h = top_r * rng.uniform(0.5, 1.0)
        prims.append(Primitive("ellipsoid", (cap_r, cap_r, cap_h), (0, 0, z1), PART_CAP, clip_below=0.0))
    else:
        cap_h = rng.uniform(0.08, 0.15)
        prims.append(
            Primitive("cone", (cap_h / 2, cap_r, cap_r * rng.uniform(0.35, 0.6)), (0, 0, z1 + cap_h / 2), PART_CAP)
        )
    nut_a, nut_h = rng.uniform(0.03, 0.055), rng.uniform(0.02, 0.04)
    prims.append(Primitive("hex", (nut_a, nut_h / 2), (0, 0, z1 + cap_h + nut_h / 2 - 0.01), PART_TRIM))
    return z1 + cap_h + nut_h - 0.01


def _outlets(
    rng: np.random.Generator, prims: List[Primitive], body: _Body
) -> Tuple[float, List[Tuple[float, float]], float, float, float, float]:
    """One or two side outlets and an optional bigger front "pumper", each with its nut.

    Returns the object's horizontal reach, the outlets (angle, size), their height, base radius and length, and
    the body's radius at that height (where the chain attaches).
    """
    a0 = rng.uniform(0, 2 * math.pi)
    outlets = [(a0, 1.0)] + ([(a0 + math.pi, 1.0)] if rng.random() < 0.8 else [])
    if rng.random() < 0.6:
        outlets.append((a0 + math.pi / 2 * rng.choice([-1, 1]), rng.uniform(1.2, 1.5)))
    zn = body.z0 + body.body_h * rng.uniform(0.5, 0.78)
    rn0, length0 = rng.uniform(0.045, 0.07), rng.uniform(0.08, 0.16)
    r_at = body.body_r + (body.top_r - body.body_r) * (zn - body.z0) / body.body_h
    reach = body.base_r
    for angle, size in outlets:
        axis = np.array([math.cos(angle), math.sin(angle), 0.0])
        frame = frame_from_z(axis)
        rn, inner, outer = rn0 * size, 0.5 * r_at, r_at + length0 * min(size, 1.2)
        c = axis * (inner + outer) / 2 + np.array([0, 0, zn])
        prims.append(Primitive("cylinder", (rn, (outer - inner) / 2), tuple(c), PART_NOZZLE, axes=frame))
        nut_len = rng.uniform(0.015, 0.03)
        c = axis * (outer + nut_len) + np.array([0, 0, zn])
        prims.append(Primitive("hex", (rn * rng.uniform(1.05, 1.3), nut_len), tuple(c), PART_TRIM, axes=frame))
        reach = max(reach, outer + 2 * nut_len + rn)
    return reach, outlets, zn, rn0, length0, r_at


def _chain(
    rng: np.random.Generator, prims: List[Primitive], angle: float, zn: float, rn0: float, length0: float, r_at: float
) -> None:
    """A chain of torus links hanging from the first outlet's cap back to the body."""
    axis = np.array([math.cos(angle), math.sin(angle), 0.0])
    side = np.array([-axis[1], axis[0], 0.0]) * rng.choice([-1, 1])
    start = axis * (r_at + length0) + np.array([0, 0, zn - rn0])
    end = (axis * math.cos(0.6) + side * math.sin(0.6)) * (r_at + 0.01) + np.array([0, 0, zn - 0.05])
    n_links = int(rng.integers(5, 8))
    link_r, wire = rng.uniform(0.018, 0.025), rng.uniform(0.006, 0.009)
    for i in range(n_links):
        s = (i + 0.5) / n_links
        pt = start * (1 - s) + end * s - np.array([0, 0, rng.uniform(0.08, 0.12) * 4 * s * (1 - s)])
        tangent = end - start + np.array([0, 0, 0.4 * (2 * s - 1)])
        tangent /= np.linalg.norm(tangent)
        normal = np.cross(tangent, [0.0, 0.0, 1.0]) if i % 2 == 0 else np.array([0.0, 0.0, 1.0])
        normal = normal - tangent * normal.dot(tangent)
        prims.append(Primitive("torus", (link_r, wire), tuple(pt), PART_CHAIN, axes=frame_from_z(normal)))


def _materials(rng: np.random.Generator) -> Dict[int, Material]:
    """Body colour from the palette; cap, nozzles, base and trim share it or draw their own."""
    body_color = BODY_COLORS[rng.integers(len(BODY_COLORS))]
    body = _random_material(rng, body_color, patterned=True)
    cap = body if rng.random() < 0.4 else _random_material(rng, BODY_COLORS[rng.integers(len(BODY_COLORS))], True)
    nozzle = body if rng.random() < 0.6 else cap
    base = _random_material(rng, body_color * rng.uniform(0.3, 0.7) + 0.05, patterned=rng.random() < 0.4)
    trim = cap if rng.random() < 0.5 else _random_material(rng, BODY_COLORS[4], patterned=False)
    chain = Material(_jitter(rng, np.array([0.45, 0.45, 0.47])), np.array([0.2, 0.2, 0.2]), "noise", 12.0)
    return {PART_BODY: body, PART_CAP: cap, PART_NOZZLE: nozzle, PART_BASE: base, PART_TRIM: trim, PART_CHAIN: chain}
