"""Gaussian rasterization: gsplat on CUDA, a pure-PyTorch differentiable fallback everywhere else.

Public API:
    rasterization(...)        drop-in for ``gsplat.rendering.rasterization``, plus ``backend=``
    torch_rasterization(...)  the pure-PyTorch implementation itself
    resolve_backend / gsplat_cuda_available   which implementation a call will use
    spherical_harmonics / eval_sh_bases       gsplat-convention SH evaluation
    release_workspace()       free this thread's cached CPU compositing scratch buffers
"""

from .composite import release_workspace
from .dispatch import gsplat_cuda_available, rasterization, resolve_backend
from .sh import eval_sh_bases, num_sh_bases, spherical_harmonics
from .torch_rasterizer import torch_rasterization

__all__ = [
    "rasterization",
    "torch_rasterization",
    "resolve_backend",
    "gsplat_cuda_available",
    "spherical_harmonics",
    "eval_sh_bases",
    "num_sh_bases",
    "release_workspace",
]
