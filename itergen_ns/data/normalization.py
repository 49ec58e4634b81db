"""Scene normalisation of the dataparsers, computed from the *input* cameras only.

A run's 3D frame must not depend on where the held-out cameras are (that would leak evaluation poses into
the reconstruction and into the generated poses), so both parsers compute one ``Normalization`` from the
train-split cameras and apply it to every split:

* centre: the point nearest to all input optical axes (``nearest_point_to_axes``). With one input camera that is
  the point on its optical axis at the camera's distance from the world origin (CO3D and the procedural scenes
  have roughly object-centred worlds); with ``radius`` set, that distance only fixes the metric scale
  (``dataparser_scale``), the normalised input pose is the same for any choice.
* up: the normal of the plane of the input camera centres (>= 3 non-collinear inputs), signed like their mean up
  vector; with 1-2 inputs the mean camera up (one input: its own up vector). It is rotated to +z.
* scale: the median input-camera distance to the centre becomes ``radius``.

``x_ns = scale * (transform[:, :3] @ x + transform[:, 3])``, the form nerfstudio's
``transform_poses_to_original_space`` inverts (``dataparser_transform`` / ``dataparser_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import math

import torch
from jaxtyping import Float
from torch import Tensor

from itergen_ns.data.camera_utils import nearest_point_to_axes, orbit_plane_normal


def orbit_up(c2w: Float[Tensor, "N 3 4"]) -> Float[Tensor, "3"]:
    """Normal of the plane the camera centres lie on, signed to agree with the cameras' mean up vector.

    Falls back to the mean camera up when the centres do not span a plane (fewer than 3, or collinear).
    """
    c2w = c2w.double()
    mean_up = c2w[:, :3, 1].mean(0)
    mean_up = mean_up / mean_up.norm().clamp_min(1e-12)
    normal = orbit_plane_normal(c2w[:, :3, 3], mean_up, flatness=math.inf)
    return mean_up if normal is None else normal


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
        """Camera-to-world matrices in the normalised frame (float64), each frame independently of the others."""
        rot, trans = self.transform[:, :3], self.transform[:, 3]
        c2w = c2w.double()
        out = torch.empty_like(c2w)
        for i in range(c2w.shape[0]):  # per frame, so a pose's bits never depend on the batch it came in
            out[i] = rot @ c2w[i]
            out[i, :, 3] = (out[i, :, 3] + trans) * self.scale
        return out

    def apply_to_points(self, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 3"]:
        return (points.double() @ self.transform[:, :3].T + self.transform[:, 3]) * self.scale

    def invert_points(self, points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 3"]:
        return (points.double() / self.scale - self.transform[:, 3]) @ self.transform[:, :3]

    def after(self, transform: Float[Tensor, "3 4"], scale: float = 1.0) -> "Normalization":
        """This normalisation applied after ``x' = scale * (transform @ [x; 1])`` (e.g. a dataset's own transform)."""
        t = transform.double()
        rot = self.transform[:, :3] @ t[:, :3]
        trans = self.transform[:, :3] @ t[:, 3] * scale + self.transform[:, 3]
        return Normalization(torch.cat([rot, (trans / scale)[:, None]], dim=1), self.scale * scale)


def compute_normalization(
    c2w: Float[Tensor, "N 3 4"],
    center: Optional[Float[Tensor, "3"]] = None,
    orient: bool = True,
    radius: Optional[float] = 1.0,
) -> Normalization:
    """Centre the scene, rotate the orbit normal to +z and scale so the median camera distance equals ``radius``.

    Pass the *input* cameras only (see the module docstring). ``center`` defaults to the point nearest to all
    camera axes; ``radius=None`` keeps the metric scale.
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
