"""Pure-PyTorch stand-in for ``gsplat.rendering.rasterization`` (gsplat 1.4.0 contract), for CPU runs.

Same arguments, same outputs, same ``info`` keys that splatfacto and gsplat's DefaultStrategy read
(``means2d`` is the non-leaf [C, N, 2] pixel-space tensor whose ``.grad`` is dL/d(pixel position)).
Pipeline: projection (autograd) -> colours / SH (autograd) -> tile binning (no grad) -> chunked
compositing with a hand-written backward (bounded memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Literal

from .binning import build_tile_plan
from .composite import rasterize_to_pixels
from .projection import project_gaussians, quat_scale_to_covar
from .sh import spherical_harmonics

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
# pixel-slots per compositing chunk: 1 MB float32 scratch tensors stay cache-friendly; measured fastest on CPU
DEFAULT_CHUNK_ELEMS = 1 << 18


def default_sub_tile(tile_size: int) -> int:
    """Work-tile edge used on CPU: 4 px (measured fastest), or the largest of 2, 1 dividing ``tile_size``."""
    return next(s for s in (4, 2, 1) if tile_size % s == 0)


def _gaussian_colors(
    means: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    sh_degree: Optional[int],
    cam_ids: Optional[Tensor],
    gauss_ids: Optional[Tensor],
    n_cameras: int,
) -> Tensor:
    """Per-(camera, Gaussian) colours: [C, N, D] unpacked, or [nnz, D] for the given packed ids.

    SH colours use the direction from the camera centre to the mean, then ``clamp_min(c + 0.5, 0)``
    exactly as gsplat's ``rasterization`` does after ``spherical_harmonics``.
    """
    packed = cam_ids is not None
    per_camera = colors.dim() == (3 if sh_degree is None else 4)
    if packed:
        feats = colors[cam_ids, gauss_ids] if per_camera else colors[gauss_ids]
    else:
        feats = colors if per_camera else colors.expand((n_cameras,) + colors.shape)
    if sh_degree is None:
        return feats
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[gauss_ids] - campos[cam_ids] if packed else means[None] - campos[:, None]
    return torch.clamp_min(spherical_harmonics(sh_degree, dirs, feats) + 0.5, 0.0)


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, covars, sh_degree, render_mode) -> None:
    """Shape checks mirroring gsplat's asserts, as ValueErrors."""
    n, c = means.shape[0], viewmats.shape[0]
    ok = means.shape == (n, 3) and opacities.shape == (n,) and viewmats.shape == (c, 4, 4) and Ks.shape == (c, 3, 3)
    if covars is None:
        ok = ok and quats.shape == (n, 4) and scales.shape == (n, 3)
    else:
        ok = ok and covars.shape == (n, 3, 3)
    if not ok:
        raise ValueError("bad Gaussian / camera tensor shapes")
    if sh_degree is None:
        ok = (colors.dim() == 2 and colors.shape[0] == n) or (colors.dim() == 3 and colors.shape[:2] == (c, n))
    else:
        ok = (colors.dim() == 3 and colors.shape[0] == n and colors.shape[2] == 3) or (
            colors.dim() == 4 and colors.shape[:2] == (c, n) and colors.shape[3] == 3
        )
        ok = ok and (sh_degree + 1) ** 2 <= colors.shape[-2]
    if not ok:
        raise ValueError(f"bad colors shape {tuple(colors.shape)} for sh_degree={sh_degree}")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")


def torch_rasterization(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, " N"],
    colors: Tensor,
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = True,
    tile_size: int = 16,
    backgrounds: Optional[Float[Tensor, "C D"]] = None,
    render_mode: RenderMode = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: Literal["pinhole", "ortho", "fisheye"] = "pinhole",
    covars: Optional[Float[Tensor, "N 3 3"]] = None,
    *,
    sub_tile: Optional[int] = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> Tuple[Float[Tensor, "C H W X"], Float[Tensor, "C H W 1"], Dict[str, Any]]:
    """Rasterize N 3D Gaussians into C images; see ``gsplat.rendering.rasterization`` for the contract.

    ``sparse_grad`` and ``channel_chunk`` are CUDA memory knobs and are ignored (gradients are dense);
    ``distributed`` and the fisheye camera are not supported. Extra keywords: ``sub_tile`` (work-tile
    edge, must divide ``tile_size``) and ``chunk_elems`` (pixel-slots per compositing chunk: the
    memory/speed trade-off).
    """
    del sparse_grad, channel_chunk
    if distributed:
        raise NotImplementedError("distributed rasterization needs gsplat's CUDA backend")
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, covars, sh_degree, render_mode)
    n_cams, n = viewmats.shape[0], means.shape[0]
    sub_tile = default_sub_tile(tile_size) if sub_tile is None else sub_tile

    if covars is None:
        covars = quat_scale_to_covar(quats, scales)
    proj = project_gaussians(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        radius_clip=radius_clip, calc_compensations=rasterize_mode == "antialiased",
        camera_model=camera_model,  # type: ignore[arg-type]  # fisheye was rejected by _check_inputs
    )  # fmt: skip
    opac = opacities.expand(n_cams, n)
    if proj.compensations is not None:
        opac = opac * proj.compensations

    depth_only = render_mode in ("D", "ED")  # colours are not rendered: skip their (SH) evaluation
    feats_of = None if depth_only else (lambda c, g: _gaussian_colors(means, colors, viewmats, sh_degree, c, g, n_cams))
    vis = _visible_gaussians(proj, opac, feats_of, packed)
    f_feats, bg = _channels_to_render(render_mode, vis.feats, vis.depths, backgrounds, n_cams)
    plan = build_tile_plan(
        vis.means2d.detach(), vis.conics.detach(), vis.opacities.detach(), vis.radii, vis.depths.detach(),
        vis.camera_of, n_cams, width, height, tile_size=tile_size, sub_tile=sub_tile, chunk_elems=chunk_elems,
    )  # fmt: skip
    render_colors, render_alphas = rasterize_to_pixels(
        vis.means2d, vis.conics, f_feats, vis.opacities, plan, backgrounds=bg,
        absgrad_target=vis.info["means2d"] if absgrad else None,
    )  # fmt: skip
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )
    tile_w, tile_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    info: Dict[str, Any] = {
        **vis.info,
        "tile_width": tile_w,
        "tile_height": tile_h,
        "tiles_per_gauss": _tiles_per_gauss(vis.info["means2d"].detach(), vis.info["radii"], tile_size, tile_w, tile_h),
        "isect_ids": None,  # CUDA sort keys: the torch path bins with `tile_plan` instead
        "flatten_ids": None,
        "isect_offsets": None,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": n_cams,
        "tile_plan": plan,
    }
    return render_colors, render_alphas, info


@dataclass
class _VisibleGaussians:
    """Per-(camera, Gaussian) 2D splats flattened to one list (packed: only visible pairs), with their camera."""

    means2d: Tensor
    conics: Tensor
    opacities: Tensor
    depths: Tensor
    feats: Optional[Tensor]
    radii: Tensor
    camera_of: Tensor
    info: Dict[str, Any]  # gsplat's per-Gaussian outputs, in its packed or [C, N] layout


def _visible_gaussians(proj: Any, opac: Tensor, feats_of: Optional[Callable], packed: bool) -> _VisibleGaussians:
    """Flatten the projection (packed: the visible (camera, Gaussian) pairs; else all C x N) for tile binning."""
    n_cams, n = proj.radii.shape[:2]
    if packed:
        cam_ids, gauss_ids = torch.nonzero(proj.radii > 0, as_tuple=True)
        radii = proj.radii[cam_ids, gauss_ids]
        means2d, depths = proj.means2d[cam_ids, gauss_ids], proj.depths[cam_ids, gauss_ids]
        conics, opac = proj.conics[cam_ids, gauss_ids], opac[cam_ids, gauss_ids]
        feats = None if feats_of is None else feats_of(cam_ids, gauss_ids)
        flat = (means2d, conics, opac, depths, feats, radii)
        flat_cams = cam_ids
    else:
        cam_ids = gauss_ids = None  # type: ignore[assignment]
        radii, means2d, depths, conics = proj.radii, proj.means2d, proj.depths, proj.conics
        opac = opac.contiguous()
        feats = None if feats_of is None else feats_of(None, None)
        flat = tuple(  # type: ignore[assignment]  # the same six, each [C * N, ...]
            None if x is None else x.reshape((n_cams * n,) + x.shape[2:])
            for x in (means2d, conics, opac, depths, feats, radii)
        )
        flat_cams = torch.arange(n_cams, device=proj.radii.device).repeat_interleave(n)
    info = {"camera_ids": cam_ids, "gaussian_ids": gauss_ids, "radii": radii, "means2d": means2d,
            "depths": depths, "conics": conics, "opacities": opac}  # fmt: skip
    return _VisibleGaussians(*flat, camera_of=flat_cams, info=info)


def _channels_to_render(
    render_mode: RenderMode, feats: Optional[Tensor], depths: Tensor, backgrounds: Optional[Tensor], n_cams: int
) -> Tuple[Tensor, Optional[Tensor]]:
    """The per-splat channels composited for ``render_mode`` (colour, colour + depth or depth) and their background."""
    bg = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        assert feats is not None
        feats = torch.cat([feats, depths[:, None]], dim=-1)
        bg = None if bg is None else torch.cat([bg, bg.new_zeros((n_cams, 1))], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[:, None]
        bg = None if bg is None else bg.new_zeros((n_cams, 1))
    assert feats is not None
    return feats, bg


@torch.no_grad()
def _tiles_per_gauss(means2d: Tensor, radii: Tensor, tile_size: int, tile_w: int, tile_h: int) -> Tensor:
    """Number of ``tile_size`` tiles each Gaussian's 3-sigma square touches (gsplat's rule), int32."""
    r = radii.to(means2d.dtype) / tile_size
    t = means2d / tile_size
    lo_x, hi_x = torch.floor(t[..., 0] - r).clamp(0, tile_w), torch.ceil(t[..., 0] + r).clamp(0, tile_w)
    lo_y, hi_y = torch.floor(t[..., 1] - r).clamp(0, tile_h), torch.ceil(t[..., 1] + r).clamp(0, tile_h)
    count = (hi_x - lo_x) * (hi_y - lo_y) * (radii > 0)
    return count.to(torch.int32)
