"""Initial point clouds: object bounds from cameras, colours by projection, background shell."""

from __future__ import annotations

import math

import torch

from nerfstudio.cameras.cameras import Cameras, CameraType

from itergen_ns.data.camera_utils import look_at
from itergen_ns.data.init_points import (
    background_shell_points,
    estimate_object_bounds,
    project_colours,
    random_points_in_bounds,
)


def orbit_cameras(n: int, radius: float = 3.0, centre=(0.2, -0.1, 0.3), size: int = 32) -> Cameras:
    c = torch.tensor(centre)
    poses = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = c + torch.tensor([radius * math.cos(a), radius * math.sin(a), 0.8])
        poses.append(look_at(eye, c, torch.tensor([0.0, 0.0, 1.0])))
    return Cameras(
        camera_to_worlds=torch.stack(poses),
        fx=30.0,
        fy=30.0,
        cx=size / 2,
        cy=size / 2,
        width=size,
        height=size,
        camera_type=CameraType.PERSPECTIVE,
    )


def test_object_bounds_centre_and_radius() -> None:
    cams = orbit_cameras(4)
    centre, radius = estimate_object_bounds(cams, fill=0.7)
    assert torch.allclose(centre, torch.tensor([0.2, -0.1, 0.3]), atol=1e-4)
    dist = math.sqrt(3.0**2 + 0.8**2)
    assert math.isclose(radius, 0.7 * dist * 16 / 30, rel_tol=1e-4)


def test_colours_come_from_the_image_the_point_projects_into() -> None:
    cams = orbit_cameras(1)
    image = torch.zeros(32, 32, 3, dtype=torch.uint8)
    image[16, 16] = torch.tensor([200, 10, 30], dtype=torch.uint8)  # the principal point's pixel
    centre = torch.tensor([[0.2, -0.1, 0.3]])  # on the optical axis -> projects to (16, 16)
    behind = 2 * cams.camera_to_worlds[0, :, 3] - centre[0]  # behind the camera -> grey
    colours = project_colours(torch.cat([centre, behind[None]]), cams, [image])
    assert colours[0].tolist() == [200, 10, 30]
    assert colours[1].tolist() == [128, 128, 128]


def test_random_points_inside_bounds_and_shell_outside() -> None:
    cams = orbit_cameras(3)
    images = [torch.full((32, 32, 3), 77, dtype=torch.uint8)] * 3
    centre, radius = estimate_object_bounds(cams)
    xyz, rgb = random_points_in_bounds(cams, images, 500, seed=1)
    assert (xyz - centre).norm(dim=-1).max() <= radius + 1e-5
    assert (rgb == 77).all()  # all object points are seen by some input
    shell, shell_rgb = background_shell_points(cams, images, 300, seed=1)
    dist = (cams.camera_to_worlds[:, :, 3] - centre).norm(dim=-1).mean()
    assert torch.allclose((shell - centre).norm(dim=-1), torch.full((300,), 2 * float(dist)), rtol=1e-4)
    seen = (shell_rgb == 77).all(dim=-1)
    assert 0 < int(seen.sum()) < 300  # only the part of the shell behind the object is visible
    again, _ = background_shell_points(cams, images, 300, seed=1)
    assert torch.equal(shell, again)
