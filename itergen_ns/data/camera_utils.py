"""Camera geometry helpers shared by the dataparsers and the pose sampler (nerfstudio OpenGL c2w)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def nearest_point_to_axes(c2w: Float[Tensor, "N 3 4"]) -> Float[Tensor, "3"]:
    """Least-squares point closest to all optical axes (the object centre of an inward-facing capture).

    Each camera looks along its -z axis (OpenGL). Falls back to the mean camera position for a single
    camera (or parallel axes), moved one mean-distance along its view direction.
    """
    origins = c2w[:, :3, 3].double()
    dirs = -c2w[:, :3, 2].double()
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64)
    proj = eye[None] - dirs[:, :, None] * dirs[:, None, :]  # projector orthogonal to each axis
    a = proj.sum(0)
    b = (proj @ origins[:, :, None]).sum(0)[:, 0]
    if c2w.shape[0] < 2 or torch.linalg.matrix_rank(a) < 3:
        dist = origins.norm(dim=-1).mean().clamp_min(1e-6)
        return (origins.mean(0) + dirs.mean(0) * dist).to(c2w.dtype)
    return torch.linalg.solve(a, b).to(c2w.dtype)


def look_at(eye: Float[Tensor, "3"], target: Float[Tensor, "3"], up: Float[Tensor, "3"]) -> Float[Tensor, "3 4"]:
    """OpenGL camera-to-world matrix at ``eye`` looking at ``target`` (camera -z towards target, +y ~ up)."""
    forward = target - eye
    forward = forward / forward.norm().clamp_min(1e-9)
    right = torch.linalg.cross(forward, up)
    if right.norm() < 1e-6:  # looking along the up vector: pick any perpendicular
        right = torch.linalg.cross(forward, torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype))
    right = right / right.norm()
    cam_up = torch.linalg.cross(right, forward)
    return torch.stack([right, cam_up, -forward, eye], dim=1)


def orbit_plane_normal(
    positions: Float[Tensor, "N 3"], cam_up: Float[Tensor, "3"], flatness: float = 0.5
) -> Float[Tensor, "3"] | None:
    """Unit normal of the plane through camera centres (an orbit's up axis), oriented like ``cam_up``.

    None when the centres do not span a plane clearly (fewer than 3, or the smallest spread is more than
    ``flatness`` times the middle one: a ball or a line of cameras has no orbit plane).
    """
    if positions.shape[0] < 3:
        return None
    positions = positions.double()
    _, s, vh = torch.linalg.svd(positions - positions.mean(0))
    if s[-1] >= flatness * s[-2]:
        return None
    normal = vh[-1] * torch.sign(torch.dot(vh[-1], cam_up.double()) + 1e-12)
    return normal / normal.norm()
