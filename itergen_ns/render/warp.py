"""Depth-based warping of an input view into target cameras: the geometric use of the inputs.

The generator's render condition says where the current 3D state puts surfaces; the input views say what those
surfaces look like. ``warp_nearest_input`` joins the two: every target pixel with a rendered surface is
unprojected with the render's depth, projected into the nearest input camera and coloured from the input image
there (bilinear), unless it falls outside the input frame or behind the input view's own rendered surface
(occlusion test against the input camera's render depth). Elsewhere the render itself is kept, so the result is
"the render, repainted with the input's pixels where the geometry says they are visible": a full image that the
frozen autoencoder can encode like any other frame.

Conventions: nerfstudio/OpenGL camera-to-world (x right, y up, camera looks along -z), intrinsics
``(fx, fy, cx, cy)`` in pixels with pixel centres at ``+0.5``, depth = distance along the viewing axis (what
gsplat's ``RGB+ED`` mode renders), 0 where no surface was rendered.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from itergen_ns.data.camera_utils import to_homogeneous

OCCLUSION_TOLERANCE = 0.05
"""Relative depth slack of the occlusion test: a point counts as visible in the input view when its depth there
is at most (1 + tolerance) x the input render's depth at that pixel."""


def unproject(
    depth: Float[Tensor, "B H W"], c2w: Float[Tensor, "B R 4"], intrinsics: Float[Tensor, "B 4"]
) -> Float[Tensor, "B H W 3"]:
    """World points of every pixel at ``depth`` along the camera's viewing axis."""
    b, h, w = depth.shape
    dev = depth.device
    v, u = torch.meshgrid(torch.arange(h, device=dev) + 0.5, torch.arange(w, device=dev) + 0.5, indexing="ij")
    fx, fy, cx, cy = (intrinsics[:, i].view(b, 1, 1) for i in range(4))
    cam = torch.stack([(u - cx) / fx * depth, -(v - cy) / fy * depth, -depth], dim=-1)  # OpenGL camera frame
    pose = to_homogeneous(c2w.float())
    return torch.einsum("bij,bhwj->bhwi", pose[:, :3, :3], cam) + pose[:, None, None, :3, 3]


def project(
    points: Float[Tensor, "B H W 3"], c2w: Float[Tensor, "B R 4"], intrinsics: Float[Tensor, "B 4"]
) -> Tuple[Float[Tensor, "B H W 2"], Float[Tensor, "B H W"]]:
    """Pixel coordinates (x, y; centres at +0.5) and depth of world ``points`` in the cameras ``c2w``."""
    w2c = torch.linalg.inv(to_homogeneous(c2w.float()))
    cam = torch.einsum("bij,bhwj->bhwi", w2c[:, :3, :3], points) + w2c[:, None, None, :3, 3]
    z = -cam[..., 2]
    safe = torch.where(z.abs() > 1e-8, z, torch.full_like(z, 1e-8))
    b = points.shape[0]
    fx, fy, cx, cy = (intrinsics[:, i].view(b, 1, 1) for i in range(4))
    xy = torch.stack([fx * cam[..., 0] / safe + cx, -fy * cam[..., 1] / safe + cy], dim=-1)
    return xy, z


def _sample(image: Float[Tensor, "B C H W"], xy: Float[Tensor, "B h w 2"], mode: str = "bilinear") -> Tensor:
    h, w = image.shape[-2:]
    grid = torch.stack([xy[..., 0] / w * 2 - 1, xy[..., 1] / h * 2 - 1], dim=-1)
    return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=False)


def warp_image(
    source: Float[Tensor, "B 3 Hs Ws"],
    source_c2w: Float[Tensor, "B R 4"],
    source_intrinsics: Float[Tensor, "B 4"],
    target_depth: Float[Tensor, "B H W"],
    target_c2w: Float[Tensor, "B R 4"],
    target_intrinsics: Float[Tensor, "B 4"],
    source_depth: Optional[Float[Tensor, "B Hs Ws"]] = None,
    tolerance: float = OCCLUSION_TOLERANCE,
) -> Tuple[Float[Tensor, "B 3 H W"], Bool[Tensor, "B H W"]]:
    """Backward-warp ``source`` into the target cameras through ``target_depth``; returns the warped image and
    where it is valid (a surface in the target, in front of and inside the source camera, not occluded there
    when ``source_depth`` is given)."""
    points = unproject(target_depth.float(), target_c2w, target_intrinsics.float())
    xy, z = project(points, source_c2w, source_intrinsics.float())
    hs, ws = source.shape[-2:]
    valid = (target_depth > 0) & (z > 1e-6)
    valid &= (xy[..., 0] >= 0) & (xy[..., 0] <= ws) & (xy[..., 1] >= 0) & (xy[..., 1] <= hs)
    if source_depth is not None:
        seen = _sample(source_depth[:, None].float(), xy, mode="nearest")[:, 0]
        valid &= (seen > 0) & (z <= seen * (1.0 + tolerance))
    warped = _sample(source.float(), xy)
    return warped * valid[:, None], valid


def nearest_input_index(
    input_c2w: Float[Tensor, "*B K R 4"],
    target_c2w: Float[Tensor, "*B G R 4"],
    input_mask: Optional[Bool[Tensor, "*B K"]] = None,
) -> Int[Tensor, "*B G"]:
    """Per target, the index of the (valid) input camera whose centre is nearest (Euclidean)."""
    dist = torch.cdist(target_c2w[..., :3, 3].float(), input_c2w[..., :3, 3].to(target_c2w.device).float())
    if input_mask is not None:
        dist = dist.masked_fill(~input_mask.to(dist.device)[..., None, :], float("inf"))
    return dist.argmin(dim=-1)


def warp_nearest_input(
    renders: Float[Tensor, "G 3 H W"],
    target_depth: Float[Tensor, "G H W"],
    target_c2w: Float[Tensor, "G R 4"],
    target_intrinsics: Float[Tensor, "G 4"],
    input_images: Float[Tensor, "K 3 Hi Wi"],
    input_c2w: Float[Tensor, "K R 4"],
    input_intrinsics: Float[Tensor, "K 4"],
    input_depth: Optional[Float[Tensor, "K Hi Wi"]] = None,
    input_mask: Optional[Bool[Tensor, " K"]] = None,
) -> Tuple[Float[Tensor, "G 3 H W"], Bool[Tensor, "G H W"]]:
    """The renders with the nearest input view's pixels warped in where the render's geometry sees them.

    Returns the composite image in [0, 1] and the mask of pixels taken from the input view.
    """
    idx = nearest_input_index(input_c2w, target_c2w, input_mask).to(input_images.device)
    depth = input_depth[idx] if input_depth is not None else None
    warped, valid = warp_image(
        input_images[idx], input_c2w[idx], input_intrinsics[idx], target_depth, target_c2w, target_intrinsics, depth
    )
    composite = torch.where(valid[:, None], warped, renders.float())
    return composite.clamp(0, 1), valid
