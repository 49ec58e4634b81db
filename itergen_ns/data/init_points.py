"""Initial point clouds for sparse-view splatting when the data has none (docs/architecture.md, "Initialisation": the fallback).

Points are drawn uniformly in a ball around the point nearest to the input cameras' axes, with a radius
that fits the cameras' field of view, and coloured by projecting them into the input images.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras

from itergen_ns.data.camera_utils import nearest_point_to_axes


def estimate_object_bounds(cameras: Cameras, fill: float = 0.7) -> Tuple[Float[Tensor, "3"], float]:
    """(centre, radius) of the object seen by inward-facing ``cameras``.

    The centre is the point nearest to all optical axes; with one camera it is the point on its axis
    nearest to the world origin (dataparsers centre scenes on the object). The radius is the half-extent
    of the image at the centre's depth times ``fill``, the fraction of the frame the object usually fills.
    """
    c2w = cameras.camera_to_worlds.float()
    if c2w.shape[0] >= 2:
        centre = nearest_point_to_axes(c2w)
    else:
        origin, forward = c2w[0, :, 3], -c2w[0, :, 2]
        depth = torch.clamp(torch.dot(-origin, forward), min=0.5 * origin.norm().item() + 1e-3)
        centre = origin + depth * forward
    dists = (c2w[:, :, 3] - centre).norm(dim=-1)
    fy, h = cameras.fy.float().view(-1), cameras.height.float().view(-1)
    half_tan = (0.5 * h / fy).mean()
    radius = float(fill * dists.mean() * half_tan)
    return centre, radius


def project_colours(
    points: Float[Tensor, "N 3"], cameras: Cameras, images: List[UInt8[Tensor, "H W 3"]]
) -> UInt8[Tensor, "N 3"]:
    """Colour each point from the first input image it projects into (grey when it falls outside all)."""
    colours = torch.full((points.shape[0], 3), 128, dtype=torch.uint8)
    done = torch.zeros(points.shape[0], dtype=torch.bool)
    for i, image in enumerate(images):
        c2w = cameras.camera_to_worlds[i].float()
        rot, t = c2w[:, :3], c2w[:, 3]
        cam = (points - t) @ rot  # camera coords, OpenGL: looking along -z
        z = -cam[:, 2]
        u = cameras.fx[i].float() * cam[:, 0] / z.clamp_min(1e-6) + cameras.cx[i].float()
        v = -cameras.fy[i].float() * cam[:, 1] / z.clamp_min(1e-6) + cameras.cy[i].float()
        h, w = image.shape[:2]
        ok = (~done) & (z > 1e-3) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        colours[ok] = image[v[ok].long(), u[ok].long(), :3].to(torch.uint8)
        done |= ok
    return colours


def random_points_in_bounds(
    cameras: Cameras, images: List[UInt8[Tensor, "H W 3"]], num_points: int, seed: int = 0
) -> Tuple[Float[Tensor, "N 3"], UInt8[Tensor, "N 3"]]:
    """``num_points`` points uniform in the estimated object ball, coloured from the input images."""
    gen = torch.Generator().manual_seed(seed)
    centre, radius = estimate_object_bounds(cameras)
    direction = torch.randn(num_points, 3, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    r = radius * torch.rand(num_points, 1, generator=gen) ** (1.0 / 3.0)
    points = centre + direction * r
    return points, project_colours(points, cameras, images)


def background_shell_points(
    cameras: Cameras, images: List[UInt8[Tensor, "H W 3"]], num_points: int, seed: int = 0, scale: float = 2.0
) -> Tuple[Float[Tensor, "N 3"], UInt8[Tensor, "N 3"]]:
    """``num_points`` points on a sphere around the object, ``scale`` times the mean camera distance, coloured
    from the input images: Gaussians for the backdrop that real captures (and the procedural scenes) have, which
    an object-only initialisation leaves as a flat background colour."""
    gen = torch.Generator().manual_seed(seed + 1)
    centre, _ = estimate_object_bounds(cameras)
    radius = scale * float((cameras.camera_to_worlds[:, :, 3].float() - centre).norm(dim=-1).mean())
    direction = torch.randn(num_points, 3, generator=gen)
    points = centre + radius * direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return points, project_colours(points, cameras, images)
