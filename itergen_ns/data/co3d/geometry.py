"""CO3D (PyTorch3D) cameras -> nerfstudio cameras, and the scene normalisation applied to them.

Conventions (pinned by projection tests in tests/test_co3d_dataparser.py):

* PyTorch3D: ``X_cam = X_world @ R + T`` (row vectors), camera axes x left, y up, z forward; the columns of ``R`` are
  the camera axes in world coordinates and the camera centre is ``C = -R @ T``.
* nerfstudio: OpenGL camera-to-world (x right, y up, camera looks along -z). OpenGL axes are PyTorch3D's with x and z
  flipped, so ``c2w[:, :3] = R @ diag(-1, 1, -1)`` and ``c2w[:, 3] = C``.
* NDC -> pixels (PyTorch3D NDC: +x left, +y up): ``f_px = f_ndc * s``, ``c_px = -p_ndc * s + (W/2, H/2)`` with
  ``s = min(W, H)/2`` for ``ndc_isotropic`` and ``s = (W/2, H/2)`` for ``ndc_norm_image_bounds``. Pixel coordinates are
  continuous (pixel centres at +0.5), as in nerfstudio.
* Normalisation: ``x_ns = scale * (A @ x + b)`` with ``[A | b]`` = ``dataparser_transform`` (rigid) and
  ``scale`` = ``dataparser_scale`` -- the form nerfstudio's ``transform_poses_to_original_space`` inverts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from itergen_ns.data.camera_utils import nearest_point_to_axes

_P3D_TO_GL = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)


def pytorch3d_to_opengl_c2w(R: Float[Tensor, "N 3 3"], T: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 4"]:
    """PyTorch3D row-vector extrinsics -> nerfstudio OpenGL camera-to-world matrices (float64)."""
    R = R.double()
    T = T.double()
    centre = -(R @ T[:, :, None])[:, :, 0]
    return torch.cat([R * _P3D_TO_GL, centre[:, :, None]], dim=2)


def ndc_to_pixel_intrinsics(
    focal_ndc: Float[Tensor, "N 2"],
    principal_ndc: Float[Tensor, "N 2"],
    width: Float[Tensor, " N"],
    height: Float[Tensor, " N"],
    formats: Sequence[str],
) -> Float[Tensor, "N 4"]:
    """Per-frame NDC focal length / principal point -> pixel ``(fx, fy, cx, cy)`` (float64)."""
    width = width.double()
    height = height.double()
    iso = torch.tensor([fmt == "ndc_isotropic" for fmt in formats], dtype=torch.bool)
    half_min = torch.minimum(width, height) / 2.0
    s_x = torch.where(iso, half_min, width / 2.0)
    s_y = torch.where(iso, half_min, height / 2.0)
    f = focal_ndc.double()
    p = principal_ndc.double()
    return torch.stack([f[:, 0] * s_x, f[:, 1] * s_y, -p[:, 0] * s_x + width / 2.0, -p[:, 1] * s_y + height / 2.0], 1)


def project_opengl(
    c2w: Float[Tensor, "N 3 4"], intrinsics: Float[Tensor, "N 4"], points: Float[Tensor, "P 3"]
) -> Float[Tensor, "N P 2"]:
    """Pixel coordinates (u, v) of world points in each OpenGL pinhole camera (points behind give garbage)."""
    rot = c2w[:, :3, :3]
    local = torch.einsum("nji,npj->npi", rot, points[None] - c2w[:, None, :3, 3])  # R^T (X - C)
    depth = -local[..., 2]
    u = intrinsics[:, None, 0] * local[..., 0] / depth + intrinsics[:, None, 2]
    v = -intrinsics[:, None, 1] * local[..., 1] / depth + intrinsics[:, None, 3]
    return torch.stack([u, v], dim=-1)


def orbit_up(c2w: Float[Tensor, "N 3 4"]) -> Float[Tensor, "3"]:
    """Normal of the plane the camera centres lie on, signed to agree with the cameras' mean up vector.

    Falls back to the mean camera up when the centres do not span a plane (fewer than 3, or collinear).
    """
    c2w = c2w.double()
    mean_up = c2w[:, :3, 1].mean(0)
    mean_up = mean_up / mean_up.norm().clamp_min(1e-12)
    centres = c2w[:, :3, 3]
    if centres.shape[0] < 3:
        return mean_up
    _, sing, vh = torch.linalg.svd(centres - centres.mean(0), full_matrices=True)
    if sing[1] <= 1e-6 * sing[0].clamp_min(1e-12):
        return mean_up
    normal = vh[2]
    return normal if torch.dot(normal, mean_up) >= 0 else -normal


def rotation_to_z(up: Float[Tensor, "3"]) -> Float[Tensor, "3 3"]:
    """Smallest rotation taking the unit vector ``up`` to +z (nerfstudio's up axis), float64."""
    a = up.double() / up.double().norm()
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    cos = torch.dot(a, z)
    if cos < -1.0 + 1e-12:  # up == -z: half turn about x
        return torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    v = torch.linalg.cross(a, z)
    skew = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + skew + skew @ skew / (1.0 + cos)


@dataclass
class Normalization:
    """``x_ns = scale * (transform[:, :3] @ x + transform[:, 3])`` (transform is rigid, float64)."""

    transform: Float[Tensor, "3 4"]
    scale: float

    def apply_to_poses(self, c2w: Float[Tensor, "N 3 4"]) -> Float[Tensor, "N 3 4"]:
        rot, trans = self.transform[:, :3], self.transform[:, 3]
        out = torch.einsum("ij,njk->nik", rot, c2w.double())
        out[:, :, 3] = (out[:, :, 3] + trans) * self.scale
        return out

    def apply_to_points(self, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 3"]:
        return (points.double() @ self.transform[:, :3].T + self.transform[:, 3]) * self.scale

    def invert_points(self, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 3"]:
        return (points.double() / self.scale - self.transform[:, 3]) @ self.transform[:, :3]


def compute_normalization(
    c2w: Float[Tensor, "N 3 4"],
    center: Optional[Float[Tensor, "3"]] = None,
    orient: bool = True,
    radius: Optional[float] = 1.0,
) -> Normalization:
    """Centre the scene, rotate the orbit normal to +z and scale so the median camera distance equals ``radius``.

    ``center`` defaults to the point nearest to all camera axes; ``radius=None`` keeps the metric scale.
    """
    c2w = c2w.double()
    if center is None:
        center = nearest_point_to_axes(c2w)
    center = center.double()
    rot = rotation_to_z(orbit_up(c2w)) if orient else torch.eye(3, dtype=torch.float64)
    transform = torch.cat([rot, -(rot @ center)[:, None]], dim=1)
    scale = 1.0
    if radius is not None:
        dist = (c2w[:, :3, 3] - center).norm(dim=-1).median()
        scale = float(radius / dist.clamp_min(1e-9))
    return Normalization(transform=transform, scale=scale)
