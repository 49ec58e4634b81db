"""``rasterization``: gsplat's CUDA rasterizer when it can run, the pure-PyTorch one otherwise.

Importing this module never builds or loads gsplat's CUDA extension; that happens lazily, the first
time a CUDA tensor is rendered with ``backend="auto"`` or ``"gsplat"``.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import Literal

from .torch_rasterizer import RenderMode, torch_rasterization

Backend = Literal["auto", "gsplat", "torch"]


@functools.lru_cache(maxsize=None)
def gsplat_cuda_available() -> bool:
    """True if torch sees a GPU and gsplat's compiled (or JIT-buildable) CUDA extension loads."""
    if not torch.cuda.is_available():
        return False
    try:
        from gsplat.cuda._backend import _C  # noqa: PLC0415  (lazy: may trigger gsplat's JIT build)
    except Exception:  # noqa: BLE001  any failure to load the extension means "not usable"
        return False
    return _C is not None


def resolve_backend(device: torch.device, backend: Backend = "auto") -> Literal["gsplat", "torch"]:
    """Which implementation ``rasterization`` will use for tensors on ``device``."""
    if backend == "torch":
        return "torch"
    if backend == "gsplat":
        if device.type != "cuda" or not gsplat_cuda_available():
            raise RuntimeError("backend='gsplat' needs CUDA tensors and a working gsplat CUDA extension")
        return "gsplat"
    if backend != "auto":
        raise ValueError(f"unknown backend {backend!r}")
    return "gsplat" if device.type == "cuda" and gsplat_cuda_available() else "torch"


def rasterization(
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
    backend: Backend = "auto",
    **torch_options: Any,
) -> Tuple[Float[Tensor, "C H W X"], Float[Tensor, "C H W 1"], Dict[str, Any]]:
    """Drop-in for ``gsplat.rendering.rasterization`` (same arguments and returns) that also runs on CPU.

    ``backend``: "auto" (gsplat on CUDA when usable, else torch), "gsplat" or "torch" to force one.
    ``torch_options`` (``sub_tile``, ``chunk_elems``) tune the torch path and are ignored by gsplat.
    """
    kwargs: Dict[str, Any] = dict(
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree,
        packed=packed, tile_size=tile_size, backgrounds=backgrounds, render_mode=render_mode,
        sparse_grad=sparse_grad, absgrad=absgrad, rasterize_mode=rasterize_mode, channel_chunk=channel_chunk,
        distributed=distributed, camera_model=camera_model, covars=covars,
    )  # fmt: skip
    if resolve_backend(means.device, backend) == "gsplat":
        from gsplat.rendering import rasterization as gsplat_rasterization  # noqa: PLC0415

        return gsplat_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs)
    return torch_rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs, **torch_options
    )
