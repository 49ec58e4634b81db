"""Classifier-free guidance with separate scales for the 3D (render) condition and the input-image condition.

With ``p_full = p(render, inputs)``, ``p_no3d = p(no render, inputs)`` and ``p_noin = p(render, no inputs)``::

    p = p_full + (guidance_3d - 1) * (p_full - p_no3d) + (guidance_input - 1) * (p_full - p_noin)

Each scale moves along its own condition's direction, measured from the fully conditional prediction:

* both scales 1: the conditional prediction (no extra branch is evaluated);
* ``guidance_3d = 0`` (input scale 1): the 3D-unconditional prediction ``p_no3d``; values in (0, 1) interpolate
  toward it (trust the current 3D renders less), values > 1 extrapolate away from it;
* ``guidance_input = 0`` (3D scale 1): the input-unconditional prediction ``p_noin``; > 1 is classic CFG on inputs.

The combination is affine with weights summing to 1, so applying it to v-predictions or to denoised x0
estimates (same noisy x, same sigma) gives the same result.
"""

from __future__ import annotations

from typing import List, Optional

from torch import Tensor

BRANCH_FULL = "full"
BRANCH_NO_3D = "no_3d"
BRANCH_NO_INPUT = "no_input"


def guidance_branches(guidance_3d: float, guidance_input: float) -> List[str]:
    """Which conditioning branches the sampler must evaluate for these scales (``full`` always first)."""
    branches = [BRANCH_FULL]
    if guidance_3d != 1.0:
        branches.append(BRANCH_NO_3D)
    if guidance_input != 1.0:
        branches.append(BRANCH_NO_INPUT)
    return branches


def combine_guidance(
    pred_full: Tensor,
    pred_no_3d: Optional[Tensor],
    pred_no_input: Optional[Tensor],
    guidance_3d: float,
    guidance_input: float,
) -> Tensor:
    """The formula of the module docstring; a branch may be None only when its scale is 1."""
    out = pred_full
    if guidance_3d != 1.0:
        if pred_no_3d is None:
            raise ValueError("guidance_3d != 1 needs the 3D-unconditional prediction")
        out = out + (guidance_3d - 1.0) * (pred_full - pred_no_3d)
    if guidance_input != 1.0:
        if pred_no_input is None:
            raise ValueError("guidance_input != 1 needs the input-unconditional prediction")
        out = out + (guidance_input - 1.0) * (pred_full - pred_no_input)
    return out
