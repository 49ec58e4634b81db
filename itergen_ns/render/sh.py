"""Real spherical harmonics (degrees 0-4) with gsplat's basis constants and sign convention.

gsplat evaluates colour as ``sum_k B_k(dir) * coeff_k`` with the Sloan (JCGT 2013) polynomials and
the sign pattern of the Inria 3DGS code (e.g. band 1 = C1 * (-y, z, -x)); splatfacto's SH features
are trained against exactly this basis, so the CPU path must use the same one.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

SH_C0 = 0.2820947917738781
SH_C1 = 0.48860251190292


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients for a given degree, ``(degree + 1) ** 2``."""
    return (degree + 1) ** 2


def eval_sh_bases(degree: int, dirs: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch K"]:
    """SH basis values at (not necessarily unit) directions; K = (degree + 1) ** 2.

    Directions are normalised here (with a floor on the norm so a zero vector gives finite values).
    """
    if not 0 <= degree <= 4:
        raise ValueError(f"SH degree must be in [0, 4], got {degree}")
    out = [torch.full(dirs.shape[:-1], SH_C0, dtype=dirs.dtype, device=dirs.device)]
    if degree == 0:
        return out[0][..., None]
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(-1)
    out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        z2 = z * z
        tmp_b = -1.092548430592079 * z
        c1 = x * x - y * y
        s1 = 2.0 * x * y
        sh6 = 0.9461746957575601 * z2 - 0.3153915652525201
        out += [0.5462742152960395 * s1, tmp_b * y, sh6, tmp_b * x, 0.5462742152960395 * c1]
    if degree >= 3:
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        tmp_b3 = 1.445305721320277 * z
        c2 = x * c1 - y * s1
        s2 = x * s1 + y * c1
        sh12 = z * (1.865881662950577 * z2 - 1.119528997770346)
        out += [
            -0.5900435899266435 * s2,
            tmp_b3 * s1,
            tmp_c * y,
            sh12,
            tmp_c * x,
            tmp_b3 * c1,
            -0.5900435899266435 * c2,
        ]
    if degree >= 4:
        tmp_d = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tmp_c4 = 3.31161143515146 * z2 - 0.47308734787878
        tmp_b4 = -1.770130769779931 * z
        c3 = x * c2 - y * s2
        s3 = x * s2 + y * c2
        sh20 = 1.984313483298443 * z * sh12 - 1.006230589874905 * sh6
        out += [
            0.6258357354491763 * s3,
            tmp_b4 * s2,
            tmp_c4 * s1,
            tmp_d * y,
            sh20,
            tmp_d * x,
            tmp_c4 * c1,
            tmp_b4 * c2,
            0.6258357354491763 * c3,
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(
    degree: int, dirs: Float[Tensor, "*batch 3"], coeffs: Float[Tensor, "*batch K 3"]
) -> Float[Tensor, "*batch 3"]:
    """Colour from SH coefficients using the first ``(degree + 1) ** 2`` bands (no +0.5 offset).

    Same contract as ``gsplat.spherical_harmonics``: extra coefficients beyond the degree are ignored.
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"need at least {k} SH coefficients for degree {degree}, got {coeffs.shape[-2]}")
    bases = eval_sh_bases(degree, dirs)  # [..., k]
    if coeffs.shape[-2] != k:  # (slicing only when needed: its backward materialises a zero tensor)
        coeffs = coeffs[..., :k, :]
    return (bases[..., None] * coeffs).sum(dim=-2)
