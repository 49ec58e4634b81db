"""Analytic ray caster for the procedural scenes: sphere tracing of the object SDF, analytic ground/wall/sky,
Lambertian shading with a directional light, ambient term and SDF soft shadows. Pure torch, vectorised.

Camera convention: nerfstudio OpenGL c2w (camera looks along -z, y up), pixel centres at +0.5.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from itergen_ns.data.procedural.environment import Environment
from itergen_ns.data.procedural.hydrant import HydrantObject

SdfFn = Callable[[Tensor], Tensor]


def ray_sphere(
    o: Float[Tensor, "M 3"], d: Float[Tensor, "M 3"], center: Tuple[float, float, float], radius: float
) -> Tuple[Float[Tensor, " M"], Float[Tensor, " M"]]:
    """Entry/exit distances of unit-direction rays through a sphere (entry clamped to 0; exit < entry: miss)."""
    oc = o - torch.tensor(center, dtype=o.dtype)
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius * radius)
    root = torch.sqrt(disc.clamp_min(0.0))
    t0, t1 = (-b - root).clamp_min(0.0), -b + root
    t1 = torch.where(disc > 0, t1, torch.full_like(t1, -1.0))
    return t0, t1


def sphere_trace(
    sdf: SdfFn,
    o: Float[Tensor, "M 3"],
    d: Float[Tensor, "M 3"],
    t_start: Tensor,
    t_end: Tensor,
    eps: float = 5e-4,
    max_steps: int = 80,
    relax: float = 0.95,
) -> Tuple[Bool[Tensor, " M"], Float[Tensor, " M"]]:
    """March rays from ``t_start`` until the SDF drops below ``eps`` (hit) or ``t_end`` is passed.

    Only still-marching rays are evaluated each step. Rays still marching after ``max_steps`` (grazing the
    silhouette) count as hits when they are within 4*eps of the surface.
    """
    t = t_start.clone()
    hit = torch.zeros_like(t, dtype=torch.bool)
    active = torch.nonzero(t_start < t_end).squeeze(1)
    dist = torch.empty(0)
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        ta = t[active]
        dist = sdf(o[active] + d[active] * ta[:, None])
        done = dist < eps
        hit[active[done]] = True
        ta = torch.where(done, ta, ta + relax * dist)
        t[active] = ta
        keep = ~done & (ta < t_end[active])
        active, dist = active[keep], dist[keep]
    if active.numel() > 0:
        hit[active[dist < 4 * eps]] = True
    return hit, t


def soft_shadow(
    sdf: SdfFn,
    p: Float[Tensor, "M 3"],
    light: Float[Tensor, "3"],
    t_end: Tensor,
    k: float = 10.0,
    t_min: float = 0.01,
    max_steps: int = 32,
) -> Float[Tensor, " M"]:
    """Visibility of the light in [0, 1] from points ``p`` (penumbra estimate min(k*d/t) along the shadow ray)."""
    vis = torch.ones(p.shape[0], dtype=p.dtype)
    t = torch.full_like(vis, t_min)
    active = torch.nonzero(t < t_end).squeeze(1)
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        ta = t[active]
        dist = sdf(p[active] + light[None] * ta[:, None])
        va = torch.minimum(vis[active], (k * dist / ta).clamp_min(0.0))
        vis[active] = va
        ta = ta + dist.clamp(0.005, 0.2)
        t[active] = ta
        keep = (va > 1e-3) & (ta < t_end[active])
        active = active[keep]
    return vis.clamp(0.0, 1.0)


def shade_rays(
    obj: HydrantObject,
    env: Environment,
    o: Float[Tensor, "M 3"],
    d: Float[Tensor, "M 3"],
    pixel_angle: float,
    shadows: bool = True,
    show_object: bool = True,
) -> Tuple[Float[Tensor, "M 3"], Bool[Tensor, " M"]]:
    """Linear RGB radiance and object-hit mask of unit-direction rays ``(o, d)``."""
    bg = env.intersect(o, d, pixel_angle)
    hit = torch.zeros_like(bg.is_sky)
    t = bg.t
    if show_object:
        t0, t1 = ray_sphere(o, d, obj.center, obj.radius)
        t1 = torch.minimum(t1, bg.t)
        hit, t_obj = sphere_trace(obj.sdf, o, d, t0, t1)
        t = torch.where(hit, t_obj, t)
    p = o + t[:, None] * d
    albedo, normal = bg.albedo.clone(), bg.normal.clone()
    if bool(hit.any()):
        ph = p[hit]
        normal[hit] = obj.normal(ph)
        albedo[hit] = obj.albedo(ph, obj.part(ph), t[hit] * pixel_angle)
    light = torch.tensor(env.light_dir, dtype=o.dtype)
    lit = (normal * light[None]).sum(-1).clamp_min(0.0)
    if shadows and show_object:
        surf = ~bg.is_sky | hit
        p_off = p + normal * 2e-3
        _, exit_t = ray_sphere(p_off, light[None].expand_as(p_off), obj.center, obj.radius)
        need = torch.nonzero(surf & (lit > 0) & (exit_t > 0)).squeeze(1)
        if need.numel() > 0:
            lit[need] = lit[need] * soft_shadow(obj.sdf, p_off[need], light, exit_t[need])
    radiance = albedo * (env.ambient + (1.0 - env.ambient) * lit)[:, None]
    radiance = torch.where(bg.is_sky[:, None] & ~hit[:, None], bg.sky, radiance)
    return radiance, hit


def camera_rays(
    c2w: Float[Tensor, "3 4"], fx: float, fy: float, cx: float, cy: float, width: int, height: int, supersample: int = 1
) -> Tuple[Float[Tensor, "R 3"], Float[Tensor, "R 3"]]:
    """World-space unit rays of one camera, row-major over a (height*ss, width*ss) grid of sub-pixels."""
    ss = supersample
    u = (torch.arange(width * ss, dtype=torch.float32) + 0.5) / ss
    v = (torch.arange(height * ss, dtype=torch.float32) + 0.5) / ss
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    x = ((uu - cx) / fx).reshape(-1)
    y = (-(vv - cy) / fy).reshape(-1)
    rot = c2w[:, :3].float()
    # explicit rotation (elementwise) so results are bit-identical between runs
    dirs = torch.stack([rot[i, 0] * x + rot[i, 1] * y - rot[i, 2] for i in range(3)], dim=1)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, 3].float()[None].expand_as(dirs)
    return origins, dirs


@contextmanager
def torch_threads(num_threads: Optional[int]) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (no-op for None)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def render_views(
    obj: HydrantObject,
    env: Environment,
    c2w: Float[Tensor, "N 3 4"],
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
    supersample: int = 2,
    shadows: bool = True,
    show_object: bool = True,
    chunk: int = 1 << 18,
    num_threads: Optional[int] = 1,
) -> Tuple[np.ndarray, np.ndarray]:
    """Render views: uint8 sRGB images [N, H, W, 3] and bool object masks [N, H, W].

    Each pixel averages ``supersample``^2 sub-pixel rays (linear RGB); a pixel is in the mask when at least
    half of its sub-pixels hit the object. Rays of all views are shaded together in chunks of ``chunk``.
    ``num_threads`` caps torch's intra-op threads while rendering (restored afterwards; None: leave as is):
    the many small ops here gain little from threads and stall badly when the cores are shared.
    """
    if width <= 0 or height <= 0 or supersample < 1:
        raise ValueError(
            f"render_views: need width, height > 0 and supersample >= 1, got {width}x{height}, {supersample}"
        )
    if c2w.ndim != 3 or c2w.shape[1:] != (3, 4):
        raise ValueError(f"render_views: c2w must have shape [N, 3, 4], got {tuple(c2w.shape)}")
    with torch_threads(num_threads):
        rays = [camera_rays(pose, fx, fy, cx, cy, width, height, supersample) for pose in c2w]
        o = torch.cat([r[0] for r in rays])
        d = torch.cat([r[1] for r in rays])
        pixel_angle = 1.0 / (supersample * max(fx, fy))
        rgb = torch.empty_like(o)
        hit = torch.empty(o.shape[0], dtype=torch.bool)
        for start in range(0, o.shape[0], chunk):
            sl = slice(start, start + chunk)
            rgb[sl], hit[sl] = shade_rays(obj, env, o[sl], d[sl], pixel_angle, shadows, show_object)
    n, ss = c2w.shape[0], supersample
    rgb = rgb.reshape(n, height, ss, width, ss, 3).mean(dim=(2, 4))
    cover = hit.float().reshape(n, height, ss, width, ss).mean(dim=(2, 4))
    srgb = rgb.clamp(0.0, 1.0) ** (1.0 / 2.2)
    images = (srgb * 255.0).round().to(torch.uint8).numpy()
    return images, (cover >= 0.5).numpy()
