"""Camera geometry for conditioning: poses relative to the first generated frame, Fourier features, Plücker rays.

All poses are nerfstudio/OpenGL camera-to-world matrices (x right, y up, camera looks along -z). Expressing
every pose in the frame of the first generated camera makes the conditioning invariant to the world frame:
the first generated frame is the identity by construction.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from itergen_ns.data.camera_utils import to_homogeneous


def relative_poses(c2w: Float[Tensor, "*B N 4 4"], reference_c2w: Float[Tensor, "*B 4 4"]) -> Float[Tensor, "*B N 4 4"]:
    """``inv(reference) @ c2w``: each pose expressed in the reference camera's frame (computed in float64)."""
    c2w = to_homogeneous(c2w)
    ref = to_homogeneous(reference_c2w)
    rel = torch.linalg.inv(ref.double())[..., None, :, :] @ c2w.double()
    return rel.to(c2w.dtype)


def fourier_features(x: Float[Tensor, "*B D"], num_freqs: int) -> Float[Tensor, "*B E"]:
    """[x, sin(2^k pi x), cos(2^k pi x)] for k < num_freqs; E = D * (1 + 2 num_freqs)."""
    freqs = (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * math.pi
    angles = x[..., None] * freqs  # [*B, D, F]
    feats = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
    return torch.cat([x, feats], dim=-1)


class PoseEmbedding(nn.Module):
    """Relative pose (top 3x4 of a 4x4) -> Fourier features -> MLP -> token-sized vector.

    The last layer starts at zero so a freshly added pose embedding leaves pretrained token semantics intact.
    """

    def __init__(self, out_dim: int, num_freqs: int = 6, hidden_dim: int = 256, translation_scale: float = 1.0):
        super().__init__()
        self.num_freqs = num_freqs
        self.translation_scale = translation_scale
        in_dim = 12 * (1 + 2 * num_freqs)
        first, last = nn.Linear(in_dim, hidden_dim), nn.Linear(hidden_dim, out_dim)
        self.mlp = nn.Sequential(first, nn.SiLU(), last)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, rel_c2w: Float[Tensor, "*B 4 4"]) -> Float[Tensor, "*B D"]:
        rot = rel_c2w[..., :3, :3].flatten(-2)
        trans = rel_c2w[..., :3, 3] * self.translation_scale
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        x = torch.cat([rot, trans], dim=-1).to(first.weight.dtype)
        return self.mlp(fourier_features(x, self.num_freqs))


def plucker_rays(
    rel_c2w: Float[Tensor, "*B 4 4"],
    intrinsics: Float[Tensor, "*B 4"],
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int],
) -> Float[Tensor, "*B 6 h w"]:
    """Plücker coordinates (d, o x d) of rays through the centres of a ``grid_hw`` grid over the image.

    ``intrinsics`` are fx, fy, cx, cy in pixels of ``image_hw``; pixel centres sit at +0.5 (nerfstudio).
    """
    with torch.autocast(rel_c2w.device.type, enabled=False):  # geometry stays in float32 under mixed precision
        return _plucker(rel_c2w.float(), intrinsics.float(), image_hw, grid_hw)


def _plucker(rel_c2w: Tensor, intrinsics: Tensor, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    height, width = image_hw
    h, w = grid_hw
    dtype, device = rel_c2w.dtype, rel_c2w.device
    v = (torch.arange(h, dtype=dtype, device=device) + 0.5) * (height / h)
    u = (torch.arange(w, dtype=dtype, device=device) + 0.5) * (width / w)
    vv, uu = torch.meshgrid(v, u, indexing="ij")  # [h, w]
    fx, fy, cx, cy = (intrinsics[..., i, None, None] for i in range(4))
    dirs_cam = torch.stack(
        [(uu - cx) / fx, -(vv - cy) / fy, -torch.ones_like(uu).expand_as((uu - cx) / fx)], dim=-1
    )  # [*B, h, w, 3] (OpenGL: y up, looking along -z)
    rot = rel_c2w[..., None, None, :3, :3]
    dirs = (rot @ dirs_cam[..., None])[..., 0]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origin = rel_c2w[..., None, None, :3, 3].expand_as(dirs)
    moment = torch.linalg.cross(origin, dirs, dim=-1)
    return torch.cat([dirs, moment], dim=-1).movedim(-1, -3)
