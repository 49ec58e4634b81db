"""CO3D (PyTorch3D) cameras -> nerfstudio cameras (the scene normalisation lives in ``data/normalization.py``).

Conventions (pinned by projection tests in tests/data/test_co3d_dataparser.py):

* PyTorch3D: ``X_cam = X_world @ R + T`` (row vectors), camera axes x left, y up, z forward; the columns of ``R`` are
  the camera axes in world coordinates and the camera centre is ``C = -R @ T``.
* nerfstudio: OpenGL camera-to-world (x right, y up, camera looks along -z). OpenGL axes are PyTorch3D's with x and z
  flipped, so ``c2w[:, :3] = R @ diag(-1, 1, -1)`` and ``c2w[:, 3] = C``.
* NDC -> pixels (PyTorch3D NDC: +x left, +y up): ``f_px = f_ndc * s``, ``c_px = -p_ndc * s + (W/2, H/2)`` with
  ``s = min(W, H)/2`` for ``ndc_isotropic`` and ``s = (W/2, H/2)`` for ``ndc_norm_image_bounds``. Pixel coordinates are
  continuous (pixel centres at +0.5), as in nerfstudio.
* Normalisation (``itergen_ns/data/normalization.py``, computed from the input cameras only):
  ``x_ns = scale * (A @ x + b)`` with ``[A | b]`` = ``dataparser_transform`` (rigid) and ``scale`` =
  ``dataparser_scale`` -- the form nerfstudio's ``transform_poses_to_original_space`` inverts.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from itergen_ns.data.normalization import Normalization, compute_normalization, orbit_up, rotation_to_z

__all__ = [
    "pytorch3d_to_opengl_c2w",
    "ndc_to_pixel_intrinsics",
    "project_opengl",
    "Normalization",
    "compute_normalization",
    "orbit_up",
    "rotation_to_z",
]

_P3D_TO_GL = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)


def pytorch3d_to_opengl_c2w(R: Float[Tensor, "N 3 3"], T: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 4"]:
    """PyTorch3D row-vector extrinsics -> nerfstudio OpenGL camera-to-world matrices (float64)."""
    R = R.double()
    T = T.double()
    centre = -(R * T[:, None, :]).sum(-1)  # -R @ T, elementwise so a frame's bits never depend on the batch
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
