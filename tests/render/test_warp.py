"""Depth-based warping of the nearest input view into target cameras (``itergen_ns.render.warp``)."""

from __future__ import annotations

import torch

from itergen_ns.render.warp import nearest_input_index, project, unproject, warp_image, warp_nearest_input

H = W = 16
K = torch.tensor([[10.0, 10.0, W / 2, H / 2]])


def shifted(x: float) -> torch.Tensor:
    """OpenGL camera-to-world looking along -z from (x, 0, 0)."""
    c2w = torch.eye(4)[:3].clone()
    c2w[0, 3] = x
    return c2w[None]


def test_unproject_then_project_is_the_identity_for_a_rotated_camera():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen))
    q = q * torch.sign(torch.det(q))
    c2w = torch.cat([q, torch.tensor([[0.3], [-0.2], [1.0]])], dim=1)[None]
    depth = 1 + torch.rand(1, H, W, generator=gen)
    xy, z = project(unproject(depth, c2w, K), c2w, K)
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    torch.testing.assert_close(xy[0], torch.stack([u, v], dim=-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(z, depth, atol=1e-5, rtol=0)


def test_a_sideways_camera_sees_the_plane_shifted_by_f_t_over_d():
    """Plane at depth 2, target camera 0.4 to the right, f = 10: target pixel u shows source pixel u + 2."""
    source = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(1))
    depth = torch.full((1, H, W), 2.0)
    warped, valid = warp_image(source, shifted(0.0), K, depth, shifted(0.4), K)
    torch.testing.assert_close(warped[0, :, :, : W - 2], source[0, :, :, 2:], atol=1e-5, rtol=0)
    assert bool(valid[0, :, : W - 2].all()) and not bool(valid[0, :, W - 2 :].any())  # off the source frame
    assert float(warped[0, :, :, W - 2 :].abs().sum()) == 0.0


def test_no_surface_and_occluded_points_are_not_warped():
    source = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(2))
    depth = torch.full((1, H, W), 2.0)
    depth[0, :4] = 0.0  # no rendered surface in the top rows
    source_depth = torch.full((1, H, W), 2.0)
    source_depth[0, :, 8:] = 1.0  # an occluder in front of the plane on the source's right half
    _, valid = warp_image(source, shifted(0.0), K, depth, shifted(0.0), K, source_depth)
    assert not bool(valid[0, :4].any())
    assert bool(valid[0, 4:, :8].all()) and not bool(valid[0, :, 8:].any())


def test_warp_nearest_input_keeps_the_render_where_the_input_does_not_see():
    gen = torch.Generator().manual_seed(3)
    renders = torch.rand(2, 3, H, W, generator=gen)
    inputs = torch.rand(2, 3, H, W, generator=gen)
    input_c2w = torch.cat([shifted(0.0), shifted(5.0)])
    target_c2w = torch.cat([shifted(0.4), shifted(4.6)])
    depth = torch.full((2, H, W), 2.0)
    assert nearest_input_index(input_c2w, target_c2w).tolist() == [0, 1]
    assert nearest_input_index(input_c2w, target_c2w, torch.tensor([True, False])).tolist() == [0, 0]
    out, taken = warp_nearest_input(renders, depth, target_c2w, K.repeat(2, 1), inputs, input_c2w, K.repeat(2, 1))
    torch.testing.assert_close(out[0, :, :, : W - 2], inputs[0, :, :, 2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, :, :, W - 2 :], renders[0, :, :, W - 2 :])  # off the input frame: render
    torch.testing.assert_close(out[1, :, :, 2:], inputs[1, :, :, :-2], atol=1e-5, rtol=0)  # input 1, 2 px left
    assert int(taken[0].sum()) == H * (W - 2)
