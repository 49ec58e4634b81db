"""Per-scene surroundings: a textured ground plane (z = 0), a textured cylindrical backdrop wall, a sky
gradient above it, and the light (direction + ambient level)."""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from itergen_ns.data.procedural.noise import ValueNoise
from itergen_ns.data.procedural.textures import Material, blend, ground_pattern, wall_pattern

GROUND_COLORS = np.array(
    [
        [0.18, 0.30, 0.10],
        [0.25, 0.25, 0.25],
        [0.45, 0.42, 0.38],
        [0.45, 0.20, 0.12],
        [0.55, 0.48, 0.32],
        [0.30, 0.22, 0.14],
    ]
)
WALL_COLORS = np.array(
    [
        [0.55, 0.50, 0.45],
        [0.40, 0.15, 0.10],
        [0.15, 0.30, 0.12],
        [0.60, 0.60, 0.62],
        [0.25, 0.30, 0.45],
        [0.70, 0.62, 0.45],
    ]
)


@dataclass
class BackgroundHit:
    """Where camera rays meet the surroundings."""

    t: Float[Tensor, " M"]
    albedo: Float[Tensor, "M 3"]
    normal: Float[Tensor, "M 3"]
    is_sky: Bool[Tensor, " M"]
    sky: Float[Tensor, "M 3"]


@dataclass
class Environment:
    """Ground, backdrop wall, sky and light of one scene (world frame: z up, object at the origin)."""

    ground: Material
    wall: Material
    wall_radius: float
    wall_height: float
    sky_horizon: np.ndarray
    sky_zenith: np.ndarray
    light_dir: np.ndarray
    """Unit vector towards the (directional) light."""
    ambient: float
    noise: ValueNoise

    def intersect(self, o: Float[Tensor, "M 3"], d: Float[Tensor, "M 3"], pixel_angle: float) -> BackgroundHit:
        """Intersect rays that start inside the wall cylinder (above the ground) with the surroundings.

        The ground plane is infinite; rays passing over the wall meet it beyond, or the sky.
        """
        big = torch.full_like(o[:, 0], 1e9)
        t_ground = torch.where(d[:, 2] < -1e-8, -o[:, 2] / d[:, 2].clamp_max(-1e-8), big)
        # wall: |o + t d|_xy = R, outward root (the ray starts inside)
        a = (d[:, 0] ** 2 + d[:, 1] ** 2).clamp_min(1e-12)
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - self.wall_radius**2
        t_wall = (-b + torch.sqrt((b * b - a * c).clamp_min(0.0))) / a
        z_wall = o[:, 2] + t_wall * d[:, 2]
        t_wall = torch.where(z_wall <= self.wall_height, t_wall, big)  # rays passing over the wall miss it
        on_ground = (t_ground <= t_wall) & (t_ground < big)
        is_sky = ~on_ground & (t_wall >= big)
        t = torch.where(on_ground, t_ground, t_wall)
        p = o + t[:, None] * d
        albedo = torch.zeros_like(o)
        normal = torch.zeros_like(o)
        if bool(on_ground.any()):
            pg = p[on_ground]
            cos = d[on_ground, 2].abs().clamp_min(0.05)
            fp = t[on_ground] * pixel_angle / cos
            w = ground_pattern(self.ground, pg[:, :2], self.noise, fp)
            dirt = self.noise.fbm(torch.cat([pg[:, :2] * 0.8, torch.full_like(pg[:, :1], 5.5)], 1), 2)
            albedo[on_ground] = blend(self.ground, w, dirt)
            normal[on_ground] = torch.tensor([0.0, 0.0, 1.0])
        on_wall = ~on_ground & ~is_sky
        if bool(on_wall.any()):
            pw = p[on_wall]
            s = torch.atan2(pw[:, 1], pw[:, 0]) * self.wall_radius
            fp = t[on_wall] * pixel_angle
            w = wall_pattern(self.wall, s, pw[:, 2], self.noise, fp)
            grain = self.noise(torch.stack([s * 3.0, pw[:, 2] * 3.0, torch.full_like(s, 9.1)], 1))
            albedo[on_wall] = blend(self.wall, w, grain)
            normal[on_wall] = torch.cat([-pw[:, :2] / self.wall_radius, torch.zeros_like(pw[:, :1])], 1)
        up = d[:, 2].clamp(0.0, 1.0).sqrt()[:, None]
        hz = torch.tensor(self.sky_horizon, dtype=o.dtype)[None]
        zn = torch.tensor(self.sky_zenith, dtype=o.dtype)[None]
        return BackgroundHit(t=t, albedo=albedo, normal=normal, is_sky=is_sky, sky=hz + (zn - hz) * up)


def sample_environment(rng: np.random.Generator, noise: ValueNoise, camera_distance: float) -> Environment:
    """Draw surroundings for a capture whose cameras orbit at about ``camera_distance`` from the object."""

    def pick(colors: np.ndarray) -> np.ndarray:
        return np.clip(colors[rng.integers(len(colors))] + rng.normal(0.0, 0.04, 3), 0.02, 0.95)

    g1 = pick(GROUND_COLORS)
    g2 = pick(GROUND_COLORS) if rng.random() < 0.5 else np.clip(g1 * rng.uniform(0.4, 0.7), 0.02, 0.95)
    ground = Material(
        g1,
        g2,
        str(rng.choice(["checker", "tiles", "noise", "planks"])),
        float(rng.uniform(0.8, 2.5)),
        phase=float(rng.uniform(0, 10)),
        angle=float(rng.uniform(0, math.pi)),
        grain=float(rng.uniform(0.1, 0.3)),
    )
    w1 = pick(WALL_COLORS)
    w2 = pick(WALL_COLORS) if rng.random() < 0.6 else np.clip(w1 * rng.uniform(0.4, 0.7), 0.02, 0.95)
    wall = Material(
        w1,
        w2,
        str(rng.choice(["bricks", "vstripes", "blotches", "bands"])),
        float(rng.uniform(0.4, 1.5)),
        phase=float(rng.uniform(0, 10)),
        grain=float(rng.uniform(0.05, 0.2)),
    )
    light_az, light_el = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(30), math.radians(70))
    light = np.array(
        [math.cos(light_el) * math.cos(light_az), math.cos(light_el) * math.sin(light_az), math.sin(light_el)]
    )
    horizon = np.clip(np.array([0.75, 0.8, 0.85]) + rng.normal(0, 0.06, 3), 0.3, 1.0)
    zenith = np.clip(np.array([0.3, 0.45, 0.8]) + rng.normal(0, 0.08, 3), 0.05, 1.0)
    return Environment(
        ground=ground,
        wall=wall,
        wall_radius=float(camera_distance * rng.uniform(1.8, 3.0)),
        wall_height=float(camera_distance * rng.uniform(0.4, 1.0)),
        sky_horizon=horizon,
        sky_zenith=zenith,
        light_dir=light,
        ambient=float(rng.uniform(0.25, 0.45)),
        noise=noise,
    )
