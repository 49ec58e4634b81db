"""Front-to-back alpha compositing of 2D Gaussians over a TilePlan, with a hand-written backward.

Forward and backward both walk the plan chunk by chunk and never hold more than one chunk's
[tiles, pixels, K] tensors, so memory stays bounded whatever the scene size (the backward recomputes
per-chunk alphas instead of storing them, as gsplat does). Per pixel it follows gsplat's kernel:
``alpha = min(0.999, o * exp(-sigma))``, skipped when ``alpha < 1/255``, stop before the Gaussian
that would bring transmittance to <= 1e-4, ``colour = sum w_i c_i + T_final * background``.

CPU cost is dominated by full passes over [t, s, s, K] tensors, so the code keeps them few: sigma is
assembled from per-row / per-column pieces (a work tile is an s x s pixel grid), big temporaries are
updated in place, and the backward reduces over pixels row- and column-wise instead of per pixel.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .binning import ALPHA_MIN, TileChunk, TilePlan

ALPHA_MAX = 0.999
T_MIN = 1e-4


@functools.lru_cache(maxsize=None)
def _below(value: float, dtype: torch.dtype) -> float:
    """Largest ``dtype`` number strictly below ``value`` (so ``x > _below(v)`` means ``x >= v``)."""
    v = torch.tensor(value, dtype=dtype)
    return torch.nextafter(v, torch.tensor(-float("inf"), dtype=dtype)).item()


@functools.lru_cache(maxsize=None)
def _above(value: float, dtype: torch.dtype) -> float:
    """Smallest ``dtype`` number strictly above ``value``."""
    v = torch.tensor(value, dtype=dtype)
    return torch.nextafter(v, torch.tensor(float("inf"), dtype=dtype)).item()


class _Workspace(threading.local):
    """Per-thread scratch buffers reused across chunks and calls.

    Freshly allocated multi-MB tensors are page-faulted in on first touch, which on CPU costs more than
    the arithmetic done on them; recycling a few chunk-sized buffers removes that cost. Per thread, so
    renders from several threads (e.g. an async generator) do not share scratch memory.
    """

    def __init__(self) -> None:
        self.store: dict = {}

    def get(self, n: int, numel: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        """``n`` flat buffers of ``numel`` elements (contents undefined)."""
        key = (dtype, device)
        buf = self.store.get(key)
        if buf is None or buf.shape[0] < n or buf.shape[1] < numel:
            rows = max(n, 0 if buf is None else buf.shape[0])
            cols = max(numel, 0 if buf is None else buf.shape[1])
            buf = torch.empty((rows, cols), dtype=dtype, device=device)
            self.store[key] = buf
        return [buf[i, :numel] for i in range(n)]


_WORKSPACE = _Workspace()


def release_workspace() -> None:
    """Free this thread's cached compositing scratch buffers."""
    _WORKSPACE.store.clear()


class _ChunkState:
    """Per-chunk compositing quantities; full tensors are [t, s, s, K] = (tile, row, column, slot).

    Masks are applied with ``threshold`` (``x if x > th else 0``) and ``sign`` rather than boolean
    indexing: on CPU a boolean ``where`` / ``masked_fill`` costs several times an arithmetic pass.
    Full-size tensors live in workspace buffers, valid until the next chunk is processed.
    """

    N_BUFFERS = 6

    def __init__(self, plan: TilePlan, chunk: TileChunk, means2d: Tensor, conics: Tensor, opacities: Tensor):
        s, dtype = plan.sub_tile, means2d.dtype
        items = chunk.items
        t, k = items.shape
        full = (t, s, s, k)
        self.buffers = [b.view(full) for b in _WORKSPACE.get(self.N_BUFFERS, t * s * s * k, dtype, means2d.device)]
        local = chunk.tile_ids % plan.n_tiles
        origin_x = ((local % plan.n_tx) * s).to(dtype)
        origin_y = ((local // plan.n_tx) * s).to(dtype)
        centre = torch.arange(s, device=items.device, dtype=dtype) + 0.5  # pixel centres in the tile
        flat = items.view(-1)
        m = means2d.index_select(0, flat).view(t, k, 2)
        q = conics.index_select(0, flat).view(t, k, 3)
        # mean - pixel centre, per column (dx) and per row (dy); exact: tile origins are integers
        self.dx = (m[:, None, :, 0] - origin_x[:, None, None]) - centre[None, :, None]  # [t, s, K]
        self.dy = (m[:, None, :, 1] - origin_y[:, None, None]) - centre[None, :, None]
        self.qa, self.qb, self.qc = q[:, None, :, 0], q[:, None, :, 1], q[:, None, :, 2]  # [t, 1, K]
        self.opac = opacities.index_select(0, flat).view(t, k)
        alpha_raw, weights, one_minus, t_excl = self.buffers[:4]
        # log(o) - sigma = log(o) - (0.5 a dx^2 + 0.5 c dy^2 + b dx dy), assembled from row / column pieces,
        # so one exp gives alpha_raw = o * exp(-sigma) (padding: log 0 = -inf -> 0). gsplat also skips
        # sigma < 0, which a positive-definite conic only produces through rounding; not emulated.
        row = torch.log(self.opac)[:, None, :] - 0.5 * self.qc * self.dy * self.dy  # [t, s(y), K]
        torch.add(row[:, :, None], (-0.5 * self.qa * self.dx * self.dx)[:, None], out=alpha_raw)
        alpha_raw.addcmul_((-self.qb * self.dx)[:, None], self.dy[:, :, None]).exp_()
        alpha = torch.threshold(alpha_raw, _below(ALPHA_MIN, dtype), 0.0, out=weights)  # gsplat skips < 1/255
        alpha.clamp_(max=ALPHA_MAX)
        torch.sub(1.0, alpha, out=one_minus)
        # transmittance after each slot; gsplat stops *before* the Gaussian that takes it to <= 1e-4,
        # so zeroing those entries (a suffix along K) zeroes exactly the excluded slots' weights
        torch.cumprod(one_minus, dim=-1, out=t_excl)
        F.threshold_(t_excl, T_MIN, 0.0).div_(one_minus)  # type: ignore[attr-defined]  # in torch, not its stubs
        self.weights = alpha.mul_(t_excl)
        self.alpha_raw, self.one_minus, self.t_excl = alpha_raw, one_minus, t_excl
        self.spare = self.buffers[4:]
        self.shape = (t, s * s, k)

    def flat(self, x: Tensor) -> Tensor:
        """[t, s, s, K] -> [t, P, K] view."""
        return x.view(self.shape)

    def live_alpha_(self) -> Tensor:
        """-alpha_raw (= -o exp(-sigma) = d alpha / d sigma) where the slot has a gradient, else 0.

        A slot has one when it was composited (weight > 0) and not clamped at 0.999. Computed in place of
        ``alpha_raw``, which is no longer available afterwards.
        """
        g = F.threshold_(self.alpha_raw.neg_(), -_above(ALPHA_MAX, self.alpha_raw.dtype), 0.0)  # type: ignore[attr-defined]
        return g.mul_(torch.sign(self.weights, out=self.spare[0]))


def _to_image(plan: TilePlan, tiles: Tensor) -> Tensor:
    """[C * n_tiles, P, D] tile-major buffer -> [C, H, W, D] image (cropping the tile padding)."""
    s, d = plan.sub_tile, tiles.shape[-1]
    img = tiles.reshape(plan.n_cameras, plan.n_ty, plan.n_tx, s, s, d).permute(0, 1, 3, 2, 4, 5)
    img = img.reshape(plan.n_cameras, plan.n_ty * s, plan.n_tx * s, d)
    return img[:, : plan.height, : plan.width].contiguous()


def _to_tiles(plan: TilePlan, img: Tensor) -> Tensor:
    """Inverse of :func:`_to_image` (zero-padding to whole tiles)."""
    s, d = plan.sub_tile, img.shape[-1]
    pad_h, pad_w = plan.n_ty * s - plan.height, plan.n_tx * s - plan.width
    img = torch.nn.functional.pad(img, (0, 0, 0, pad_w, 0, pad_h))
    tiles = img.reshape(plan.n_cameras, plan.n_ty, s, plan.n_tx, s, d).permute(0, 1, 3, 2, 4, 5)
    return tiles.reshape(plan.n_cameras * plan.n_tiles, s * s, d)


def _pad(x: Tensor) -> Tensor:
    """Append one zero row: the padding slot (index n_items) then reads an inert Gaussian (opacity 0)."""
    return torch.cat([x, x.new_zeros((1,) + x.shape[1:])], dim=0)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        means2d: Tensor,
        conics: Tensor,
        colors: Tensor,
        opacities: Tensor,
        backgrounds: Optional[Tensor],
        plan: TilePlan,
        absgrad_target: Optional[Tensor],
    ) -> tuple[Tensor, Tensor]:
        n_tiles_all, pix, d = plan.n_cameras * plan.n_tiles, plan.sub_tile**2, colors.shape[-1]
        m_p, q_p, o_p = _pad(means2d), _pad(conics), _pad(opacities)
        c_p = _pad(torch.cat([colors, colors.new_ones((colors.shape[0], 1))], dim=-1))  # last: sum of weights
        out = colors.new_zeros((n_tiles_all, pix, d + 1))
        for chunk in plan.chunks:
            st = _ChunkState(plan, chunk, m_p, q_p, o_p)
            feats = c_p.index_select(0, chunk.items.view(-1)).view(chunk.items.shape + (d + 1,))
            out[chunk.tile_ids] = torch.bmm(st.flat(st.weights), feats)
        out = _to_image(plan, out)
        render, alpha = out[..., :d].contiguous(), out[..., d:].contiguous()  # alpha = sum of weights
        t_img = 1.0 - alpha  # final transmittance
        if backgrounds is not None:
            render = render + t_img * backgrounds[:, None, None, :]
        ctx.plan = plan
        ctx.absgrad_target = absgrad_target
        ctx.has_bg = backgrounds is not None
        saved_bg = backgrounds if backgrounds is not None else colors.new_zeros(0)
        ctx.save_for_backward(means2d, conics, colors, opacities, saved_bg, t_img)
        return render, alpha

    @staticmethod
    def backward(ctx: Any, g_render: Tensor, g_alpha: Tensor):  # type: ignore[override]
        means2d, conics, colors, opacities, backgrounds, t_img = ctx.saved_tensors
        plan: TilePlan = ctx.plan
        n, d = means2d.shape[0], colors.shape[-1]
        m_p, q_p, o_p, c_p = _pad(means2d), _pad(conics), _pad(opacities), _pad(colors)
        g_c_tiles = _to_tiles(plan, g_render.contiguous())  # [C*n_tiles, P, D]
        # dL/dT_final per pixel: background term minus the alpha-output term (alpha = 1 - T_final)
        g_t = -g_alpha
        if ctx.has_bg:
            g_t = g_t + (g_render * backgrounds[:, None, None, :]).sum(-1, keepdim=True)
        g_t_tiles = _to_tiles(plan, g_t.contiguous())[..., 0]  # [C*n_tiles, P]
        t_final_tiles = _to_tiles(plan, t_img)[..., 0]  # [C*n_tiles, P]

        v_means = means2d.new_zeros((n + 1, 2))
        v_abs = means2d.new_zeros((n + 1, 2)) if ctx.absgrad_target is not None else None
        v_conics = conics.new_zeros((n + 1, 3))
        v_colors = colors.new_zeros((n + 1, d))
        v_opac = opacities.new_zeros((n + 1,))
        for chunk in plan.chunks:
            st = _ChunkState(plan, chunk, m_p, q_p, o_p)
            t, p, k = st.shape
            s = plan.sub_tile
            flat = chunk.items.view(-1)
            flat_long = flat.long()  # index_add_ with an int32 index takes a slow path on CPU
            g_c = g_c_tiles[chunk.tile_ids]  # [t, P, D]
            weights = st.flat(st.weights)
            v_colors.index_add_(0, flat_long, torch.bmm(weights.transpose(1, 2), g_c).reshape(-1, d))
            # no gradient through skipped / post-termination slots (weight 0) or clamped alphas
            dalpha_dsigma = st.flat(st.live_alpha_())

            # dL/dalpha_k = T_k (c_k.g) - (sum_{j>k} w_j c_j.g + T_final dL/dT_final) / (1 - alpha_k)
            cg_buf, after_buf = st.spare
            feats = c_p.index_select(0, flat).view(t, k, d)
            cg = torch.bmm(g_c, feats.transpose(1, 2), out=cg_buf.view(t, p, k))  # [t, P, K]
            after = torch.cumsum(weights.mul_(cg), dim=-1, out=after_buf.view(t, p, k))  # weights consumed
            tail = after[..., -1:] + (t_final_tiles[chunk.tile_ids] * g_t_tiles[chunk.tile_ids])[..., None]
            torch.sub(tail, after, out=after)  # sum over later slots, plus the background / alpha term
            v_alpha = cg.mul_(st.flat(st.t_excl)).addcdiv_(after, st.flat(st.one_minus), value=-1.0)
            h = v_alpha.mul_(dalpha_dsigma).view(t, s, s, k)  # v_sigma = dL/dsigma

            # reductions over the tile's pixels, row- and column-wise (dx varies per column, dy per row)
            h_col, h_row = h.sum(dim=1), h.sum(dim=2)  # [t, s(x), K], [t, s(y), K]
            sx, sy = (h_col * st.dx).sum(1), (h_row * st.dy).sum(1)
            sxx, syy = (h_col * st.dx * st.dx).sum(1), (h_row * st.dy * st.dy).sum(1)
            sxy = (torch.mul(h, st.dx[:, None], out=after.view(t, s, s, k)).sum(dim=2) * st.dy).sum(1)
            # dsigma/dopacity-path: alpha = o exp(-sigma)  =>  dL/do = -sum v_sigma / o
            v_opac.index_add_(0, flat_long, (-h_col.sum(dim=1) / st.opac.clamp(min=1e-30)).reshape(-1))
            # dsigma/dmean = (a dx + b dy, b dx + c dy) ; dsigma/dconic = (dx^2 / 2, dx dy, dy^2 / 2)
            qa, qb, qc = st.qa[:, 0], st.qb[:, 0], st.qc[:, 0]
            v_means.index_add_(0, flat_long, torch.stack([qa * sx + qb * sy, qb * sx + qc * sy], dim=-1).view(-1, 2))
            v_conics.index_add_(0, flat_long, torch.stack([0.5 * sxx, sxy, 0.5 * syy], dim=-1).view(-1, 3))
            if v_abs is not None:
                hx = h * (st.qa * st.dx)[:, None] + h * (st.qb * st.dy)[:, :, None]
                hy = h * (st.qb * st.dx)[:, None] + h * (st.qc * st.dy)[:, :, None]
                ga = torch.stack([hx.abs().sum(dim=(1, 2)), hy.abs().sum(dim=(1, 2))], dim=-1)
                v_abs.index_add_(0, flat_long, ga.view(-1, 2))

        v_bg = None
        if ctx.has_bg and ctx.needs_input_grad[4]:
            v_bg = (g_render * t_img).sum(dim=(1, 2))
        if v_abs is not None:
            ctx.absgrad_target.absgrad = v_abs[:n].reshape(ctx.absgrad_target.shape)
        return v_means[:n], v_conics[:n], v_colors[:n], v_opac[:n], v_bg, None, None


def rasterize_to_pixels(
    means2d: Float[Tensor, "M 2"],
    conics: Float[Tensor, "M 3"],
    colors: Float[Tensor, "M D"],
    opacities: Float[Tensor, " M"],
    plan: TilePlan,
    backgrounds: Optional[Float[Tensor, "C D"]] = None,
    absgrad_target: Optional[Tensor] = None,
) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"]]:
    """Composite flat Gaussians (indexed by ``plan``) into C images; differentiable in all tensor inputs.

    ``absgrad_target``: if given, the backward stores sum-over-pixels |dL/dmeans2d| on it as ``.absgrad``
    (reshaped to its shape), matching gsplat's ``absgrad=True`` contract.
    """
    return _Composite.apply(means2d, conics, colors, opacities, backgrounds, plan, absgrad_target)
