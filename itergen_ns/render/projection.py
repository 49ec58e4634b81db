"""Differentiable EWA projection of 3D Gaussians to image-space 2D Gaussians (gsplat 1.4 conventions).

Mirrors gsplat's ``fully_fused_projection`` (unpacked) with plain autograd: world->camera (OpenCV),
pinhole Jacobian with the 1.3x-FOV clamp on x/z and y/z, ``eps2d`` blur on the 2D covariance (plus
the Mip-Splatting opacity compensation), 3-sigma integer radius from the largest eigenvalue, and
culling (near/far, degenerate covariance, radius_clip, off-image). Culled entries get radius 0 and
zeroed means2d/depths/conics, as gsplat returns them.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import Literal


class Projection(NamedTuple):
    """Per-camera projected Gaussians (all [C, N, ...], invalid entries have radii == 0)."""

    radii: Int[Tensor, "C N"]
    means2d: Float[Tensor, "C N 2"]
    depths: Float[Tensor, "C N"]
    conics: Float[Tensor, "C N 3"]
    compensations: Optional[Float[Tensor, "C N"]]


def quat_to_rotmat(quats: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3 3"]:
    """Rotation matrices from (unnormalised) wxyz quaternions."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def quat_scale_to_covar(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """World covariance ``R S S^T R^T`` from rotation quaternions and per-axis scales."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    # elementwise instead of a batched 3x3 matmul: much faster on CPU for large N
    return (m[..., :, None, :] * m[..., None, :, :]).sum(-1)


Cov2d = tuple[Float[Tensor, "C N"], Float[Tensor, "C N"], Float[Tensor, "C N"]]  # (xx, xy, yy)


def _pinhole(
    means_c: Float[Tensor, "C N 3"],
    covars_c: Float[Tensor, "C N 9"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
) -> tuple[Float[Tensor, "C N 2"], Cov2d]:
    """Perspective projection of means and local-affine (EWA) projection ``J Sigma J^T`` of covariances."""
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    x, y, z = means_c.unbind(-1)
    rz = 1.0 / z
    # gsplat clamps the Jacobian's evaluation point to 1.3x the field of view to keep far
    # off-screen Gaussians from blowing up; the mean itself is projected unclamped.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.minimum(torch.maximum(x * rz, -(cx / fx + 0.3 * tan_fovx)), (width - cx) / fx + 0.3 * tan_fovx)
    ty = z * torch.minimum(torch.maximum(y * rz, -(cy / fy + 0.3 * tan_fovy)), (height - cy) / fy + 0.3 * tan_fovy)
    # J = [[j00, 0, j02], [0, j11, j12]]
    j00, j11 = fx * rz, fy * rz
    j02, j12 = -fx * tx * rz * rz, -fy * ty * rz * rz
    s00, s01, s02, _, s11, s12, _, _, s22 = covars_c.unbind(-1)
    cxx = j00 * (j00 * s00 + 2 * j02 * s02) + j02 * j02 * s22
    cxy = j00 * (j11 * s01 + j12 * s02) + j02 * (j11 * s12 + j12 * s22)
    cyy = j11 * (j11 * s11 + 2 * j12 * s12) + j12 * j12 * s22
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    return means2d, (cxx, cxy, cyy)


def _ortho(
    means_c: Float[Tensor, "C N 3"], covars_c: Float[Tensor, "C N 9"], Ks: Float[Tensor, "C 3 3"]
) -> tuple[Float[Tensor, "C N 2"], Cov2d]:
    """Orthographic projection: fx, fy scale camera x, y to pixels; cx, cy offset them."""
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    means2d = torch.stack([means_c[..., 0] * fx + Ks[:, 0, 2, None], means_c[..., 1] * fy + Ks[:, 1, 2, None]], -1)
    return means2d, (fx * fx * covars_c[..., 0], fx * fy * covars_c[..., 1], fy * fy * covars_c[..., 4])


def project_gaussians(
    means: Float[Tensor, "N 3"],
    covars: Float[Tensor, "N 3 3"],
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
    camera_model: Literal["pinhole", "ortho"] = "pinhole",
) -> Projection:
    """Project world-space Gaussians into C cameras (OpenCV world-to-camera ``viewmats``)."""
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    n_cams = viewmats.shape[0]
    means_c = torch.matmul(means, rot.transpose(1, 2)) + trans[:, None, :]  # [C, N, 3]
    # R Sigma R^T for every camera as one GEMM: vec(R S R^T) = (R kron R) vec(S)
    rr = (rot[:, :, None, :, None] * rot[:, None, :, None, :]).reshape(n_cams, 9, 9)
    covars_c = torch.matmul(covars.reshape(-1, 9), rr.transpose(1, 2))  # [C, N, 9]
    depths = means_c[..., 2]
    in_depth = (depths >= near_plane) & (depths <= far_plane)
    if camera_model == "pinhole":
        # keep culled entries finite so their (masked) gradients stay finite too
        safe = torch.where(in_depth[..., None], means_c, means_c.new_tensor([0.0, 0.0, 1.0]))
        means2d, (a, b, c) = _pinhole(safe, covars_c, Ks, width, height)
    elif camera_model == "ortho":
        means2d, (a, b, c) = _ortho(means_c, covars_c, Ks)
    else:
        raise NotImplementedError(f"camera_model={camera_model!r} is not supported by the torch rasterizer")

    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    compensations = None
    if calc_compensations:
        compensations = torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))

    with torch.no_grad():  # 3-sigma radius of the blurred covariance (not differentiable, as in gsplat)
        half_tr = 0.5 * (a + c)
        v1 = half_tr + torch.sqrt(torch.clamp(half_tr * half_tr - det, min=0.01))
        radius = torch.ceil(3.0 * torch.sqrt(v1))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_image = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
        valid = valid & (radius > radius_clip) & on_image
        radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)

    means2d = torch.where(valid[..., None], means2d, torch.zeros_like(means2d))
    depths = torch.where(valid, depths, torch.zeros_like(depths))
    conics = torch.where(valid[..., None], conics, torch.zeros_like(conics))
    if compensations is not None:
        compensations = torch.where(valid, compensations, torch.zeros_like(compensations))
    return Projection(radii, means2d, depths, conics, compensations)
