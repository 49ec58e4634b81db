"""Bin projected Gaussians into small pixel tiles, depth-sorted and padded, in memory-bounded chunks.

A Gaussian is listed in a tile only if it can actually change a pixel there under gsplat's rules:
(1) gsplat itself would visit it: the tile lies inside one of the ``tile_size`` tiles touched by the
Gaussian's 3-sigma bounding square (gsplat evaluates a Gaussian at *every* pixel of those tiles);
(2) its alpha can reach 1/255 there: some pixel centre of the tile lies inside both the bounding
box and the bounding circle of the ellipse ``sigma <= log(255 * opacity)``. Pixels failing (2) get
alpha < 1/255, which gsplat skips, so pruning them is exact (up to a 1% safety margin that only
adds work); the work tile (``sub_tile``, 4 px by default) can therefore be smaller than ``tile_size``,
which cuts the evaluated (pixel, Gaussian) pairs ~2x against 16 px tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
from jaxtyping import Float, Int
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0


@dataclass
class TileChunk:
    """A group of work tiles with the same padded list length K."""

    tile_ids: Int[Tensor, " t"]  # global work-tile index: cam * n_tiles + ty * n_tx + tx
    items: Int[Tensor, "t K"]  # int32 flat Gaussian index per slot, front to back; padding = n_items


@dataclass
class TilePlan:
    """Which Gaussians each work tile composites, grouped into memory-bounded chunks."""

    n_cameras: int
    width: int
    height: int
    sub_tile: int
    n_tx: int
    n_ty: int
    n_items: int
    chunks: List[TileChunk] = field(default_factory=list)
    n_pairs: int = 0  # total (tile, Gaussian) entries before padding

    @property
    def n_tiles(self) -> int:
        """Work tiles per camera."""
        return self.n_tx * self.n_ty


def _pixel_span(
    centre: Tensor, extent: Tensor, radius: Tensor, tile_size: int, n_tiles: int, size: int
) -> tuple[Tensor, Tensor]:
    """Inclusive pixel index range along one axis that a Gaussian can touch (may be empty: lo > hi)."""
    lo = torch.ceil(centre - extent - 0.5)
    hi = torch.floor(centre + extent - 0.5)
    # gsplat's tile test, computed the way its kernel does (float tile coordinates, clamped)
    t_c, t_r = centre / tile_size, radius / tile_size
    t_lo = torch.floor(t_c - t_r).clamp(0, n_tiles)
    t_hi = torch.ceil(t_c + t_r).clamp(0, n_tiles)
    lo = torch.maximum(lo, t_lo * tile_size).clamp(min=0)
    hi = torch.minimum(hi, t_hi * tile_size - 1).clamp(max=size - 1)
    return lo.long(), hi.long()


@torch.no_grad()
def build_tile_plan(
    means2d: Float[Tensor, "M 2"],
    conics: Float[Tensor, "M 3"],
    opacities: Float[Tensor, " M"],
    radii: Int[Tensor, " M"],
    depths: Float[Tensor, " M"],
    camera_ids: Int[Tensor, " M"],
    n_cameras: int,
    width: int,
    height: int,
    tile_size: int = 16,
    sub_tile: int = 4,
    chunk_elems: int = 1 << 18,
) -> TilePlan:
    """Depth-sorted per-tile Gaussian lists, grouped so each chunk holds <= ``chunk_elems`` pixel-slots.

    ``sub_tile`` must divide ``tile_size`` so work tiles nest inside gsplat's tiles.
    """
    if tile_size % sub_tile != 0:
        raise ValueError(f"sub_tile ({sub_tile}) must divide tile_size ({tile_size})")
    n_tx, n_ty = math.ceil(width / sub_tile), math.ceil(height / sub_tile)
    plan = TilePlan(n_cameras, width, height, sub_tile, n_tx, n_ty, means2d.shape[0])

    idx = torch.nonzero((radii > 0) & (opacities >= ALPHA_MIN)).squeeze(1)
    # front-to-back per camera; stable sorts keep index order on depth ties, as gsplat's radix sort does
    idx = idx[torch.sort(depths[idx], stable=True).indices]
    if n_cameras > 1:
        idx = idx[torch.sort(camera_ids[idx], stable=True).indices]
    tile, item = _expand_pairs(plan, idx, means2d, conics, opacities, radii, camera_ids, tile_size)
    plan.n_pairs = tile.numel()
    if plan.n_pairs > 0:
        tile, order = torch.sort(tile, stable=True)  # stable: keeps depth order inside each tile
        plan.chunks = _padded_chunks(plan, tile, item.index_select(0, order), chunk_elems)
    return plan


def _expand_pairs(
    plan: TilePlan,
    idx: Int[Tensor, " n"],
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    radii: Tensor,
    camera_ids: Tensor,
    tile_size: int,
) -> tuple[Int[Tensor, " p"], Int[Tensor, " p"]]:
    """(global work tile, flat Gaussian index) pairs for the depth-ordered items ``idx``, in item order."""
    s, device = plan.sub_tile, means2d.device
    mean, con = means2d.index_select(0, idx).float(), conics.index_select(0, idx).float()
    opa, rad = opacities.index_select(0, idx).float(), radii.index_select(0, idx).float()
    # alpha >= 1/255  <=>  sigma <= log(255 * opacity); inflate a little so rounding never drops a pixel
    s_lim = torch.log(opa / ALPHA_MIN).clamp(min=0) * 1.01 + 1e-2
    det = (con[:, 0] * con[:, 2] - con[:, 1] ** 2).clamp(min=1e-20)
    ext_x = torch.sqrt(2 * s_lim * con[:, 2] / det) + 1e-3
    ext_y = torch.sqrt(2 * s_lim * con[:, 0] / det) + 1e-3
    tw, th = math.ceil(plan.width / tile_size), math.ceil(plan.height / tile_size)
    x0, x1 = _pixel_span(mean[:, 0], ext_x, rad, tile_size, tw, plan.width)
    y0, y1 = _pixel_span(mean[:, 1], ext_y, rad, tile_size, th, plan.height)
    # the ellipse lies inside the circle of radius^2 = 2 s_lim / lambda_min(conic) around the mean
    half_tr, half_diff = 0.5 * (con[:, 0] + con[:, 2]), 0.5 * (con[:, 0] - con[:, 2])
    lam_min = (half_tr - torch.sqrt(half_diff * half_diff + con[:, 1] ** 2)).clamp(min=1e-12)
    keep = torch.nonzero((x1 >= x0) & (y1 >= y0)).squeeze(1)
    # (1-D gathers throughout: columns of a gathered [n, k] table would be strided and much slower)
    x0, x1, y0, y1 = (v.index_select(0, keep) for v in (x0, x1, y0, y1))
    mx, my, r2 = (v.index_select(0, keep) for v in (mean[:, 0], mean[:, 1], 2 * s_lim / lam_min))
    item = idx.index_select(0, keep).int()
    sx0, sy0 = (x0 // s).int(), (y0 // s).int()
    nx, ny = (x1 // s).int() - sx0 + 1, (y1 // s).int() - sy0 + 1
    counts = nx * ny

    # enumerate each item's block of work tiles (int32 maths: several times faster on CPU)
    owner = torch.repeat_interleave(torch.arange(item.numel(), device=device, dtype=torch.int32), counts)
    starts = torch.cumsum(counts, 0, dtype=torch.int32) - counts
    local = torch.arange(owner.numel(), device=device, dtype=torch.int32) - starts.index_select(0, owner)
    nx_o = nx.index_select(0, owner)
    ly = torch.floor(local.float() / nx_o.float()).int()  # exact for these small integers
    tx, ty = sx0.index_select(0, owner) + (local - ly * nx_o), sy0.index_select(0, owner) + ly
    # drop tiles whose pixel centres are all farther than that circle: the block's corners, mostly
    cx, cy = tx.float() * s + 0.5, ty.float() * s + 0.5  # first pixel centre of the tile
    mx_o, my_o = mx.index_select(0, owner), my.index_select(0, owner)
    gap_x = (cx - mx_o).clamp_(min=0) + (mx_o - cx - (s - 1)).clamp_(min=0)
    gap_y = (cy - my_o).clamp_(min=0) + (my_o - cy - (s - 1)).clamp_(min=0)
    sel = torch.nonzero(gap_x * gap_x + gap_y * gap_y <= r2.index_select(0, owner)).squeeze(1)
    owner, tx, ty = owner.index_select(0, sel), tx.index_select(0, sel), ty.index_select(0, sel)
    cam = camera_ids.index_select(0, item).int().index_select(0, owner) if plan.n_cameras > 1 else 0
    tile = cam * plan.n_tiles + ty * plan.n_tx + tx
    return tile, item.index_select(0, owner)


def _padded_chunks(plan: TilePlan, tile: Tensor, item: Tensor, chunk_elems: int) -> List[TileChunk]:
    """Pad each busy tile's (tile-sorted) list to its chunk's longest and group tiles of similar length."""
    device, n_pairs = tile.device, tile.numel()
    per_tile = torch.bincount(tile, minlength=plan.n_cameras * plan.n_tiles)
    offsets = torch.cumsum(per_tile, 0) - per_tile
    busy = torch.nonzero(per_tile).squeeze(1)
    busy = busy[torch.sort(per_tile[busy], descending=True, stable=True).indices]
    busy_counts = per_tile[busy].tolist()
    sentinel = torch.tensor(plan.n_items, device=device, dtype=torch.int32)
    chunks, start = [], 0
    while start < len(busy_counts):
        k = busy_counts[start]  # longest list in the chunk (sorted descending)
        stop = min(len(busy_counts), start + max(1, chunk_elems // (k * plan.sub_tile**2)))
        tids = busy[start:stop]
        slot = torch.arange(k, device=device)
        pos = (offsets[tids][:, None] + slot[None, :]).clamp(max=n_pairs - 1)
        items = torch.where(slot[None, :] < per_tile[tids][:, None], item[pos], sentinel)
        chunks.append(TileChunk(tids, items))
        start = stop
    return chunks
