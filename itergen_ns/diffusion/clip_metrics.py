"""Per-frame PSNR/SSIM of image batches and the gain of one sampled clip over its render: the measure shared by
the diffusion trainer's validation and ``itergen gain`` (docs/generator.md)."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from jaxtyping import Float
from pytorch_msssim import ssim as _ssim
from torch import Tensor

PSNR_CAP = 100.0
"""PSNR of identical images (MSE floored at 1e-10), so that means over frames stay finite."""


def psnr_frames(pred: Float[Tensor, "N 3 H W"], gt: Float[Tensor, "N 3 H W"]) -> Float[Tensor, " N"]:
    """Per-frame PSNR in dB of images in [0, 1], capped at :data:`PSNR_CAP` for identical frames."""
    mse = ((pred.float() - gt.float()) ** 2).flatten(1).mean(1)
    return (-10.0 * torch.log10(mse.clamp_min(10 ** (-PSNR_CAP / 10)))).clamp(max=PSNR_CAP)


def ssim_frames(pred: Float[Tensor, "N 3 H W"], gt: Float[Tensor, "N 3 H W"]) -> Float[Tensor, " N"]:
    """Per-frame SSIM with the window rule of :func:`itergen_ns.eval.metrics.ssim` (11 px, 7 below 32 px)."""
    win = 11 if min(pred.shape[-2:]) >= 32 else 7
    return _ssim(pred.float(), gt.float(), data_range=1.0, size_average=False, win_size=win)


def frame_metrics(pred: Float[Tensor, "N 3 H W"], gt: Float[Tensor, "N 3 H W"]) -> Dict[str, np.ndarray]:
    """{"psnr": [N], "ssim": [N]} as float64 numpy arrays."""
    return {
        "psnr": psnr_frames(pred, gt).double().cpu().numpy(),
        "ssim": ssim_frames(pred, gt).double().cpu().numpy(),
    }


def clip_gain(
    renders: Float[Tensor, "G 3 H W"],
    sample: Float[Tensor, "G 3 H W"],
    gt: Float[Tensor, "G 3 H W"],
    first_input: Float[Tensor, "1 3 H W"],
) -> Dict[str, float]:
    """Scalars for a validation clip (the trainer logs them): PSNR/SSIM of render, sample and a copy of the
    first input view, the gain (sample − render) and the margin over the input copy; all frames of the clip."""
    out: Dict[str, float] = {}
    for metric, fn in (("psnr", psnr_frames), ("ssim", ssim_frames)):
        r, s, c = (
            float(fn(x.float().cpu(), gt.float().cpu()).mean()) for x in (renders, sample, first_input.expand_as(gt))
        )
        out.update({f"{metric}_render": r, f"{metric}_sample": s, f"{metric}_first_input": c})
        out.update({f"gain_{metric}": s - r, f"margin_{metric}": s - c})
    return out
