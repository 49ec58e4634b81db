"""Camera geometry helpers shared by the dataparsers and the pose sampler (nerfstudio OpenGL c2w)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def to_homogeneous(c2w: Float[Tensor, "*B 3 4"] | Float[Tensor, "*B 4 4"]) -> Float[Tensor, "*B 4 4"]:
    """[...,3,4] or [...,4,4] camera-to-world -> [...,4,4] (the one implementation in the package)."""
    if c2w.shape[-2:] == (4, 4):
        return c2w
    if c2w.shape[-2:] != (3, 4):
        raise ValueError(f"expected [...,3,4] or [...,4,4] poses, got {tuple(c2w.shape)}")
    bottom = torch.zeros(*c2w.shape[:-2], 1, 4, dtype=c2w.dtype, device=c2w.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([c2w, bottom], dim=-2)


def camera_intrinsics(cameras) -> Float[Tensor, "N 4"]:
    """(fx, fy, cx, cy) in pixels of every camera of a nerfstudio ``Cameras``, on the CPU."""
    return torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1).float().cpu()


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

    None when the centres do not span a plane clearly: fewer than 3, collinear, or the smallest spread is more
    than ``flatness`` times the middle one (a ball of cameras has no orbit plane; ``math.inf`` accepts any
    non-collinear set).
    """
    if positions.shape[0] < 3:
        return None
    positions = positions.double()
    _, s, vh = torch.linalg.svd(positions - positions.mean(0))
    if s[-2] <= 1e-6 * s[0].clamp_min(1e-12) or s[-1] >= flatness * s[-2]:
        return None
    return vh[-1] if torch.dot(vh[-1], cam_up.double()) >= 0 else -vh[-1]  # SVD rows are unit vectors
