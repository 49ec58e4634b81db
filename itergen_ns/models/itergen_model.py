"""IterGen's 3D model: the CPU-capable splatfacto plus a loss for views sampled from the diffusion model.

Input views keep splatfacto's (1-λ)·L1 + λ·(1-SSIM). Generated views use MSE + λ_lpips·LPIPS (paper), or
MSE + λ_lpips·(1-SSIM) when LPIPS weights are not available offline. Each source has its own weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Type

import torch

from itergen_ns.models.splatfacto import IterGenSplatfactoModel, IterGenSplatfactoModelConfig

GENERATED_KEY = "is_generated"
"""Batch key the itergen datamanager sets on generated views."""


@dataclass
class IterGenModelConfig(IterGenSplatfactoModelConfig):
    _target: Type = field(default_factory=lambda: IterGenModel)
    generated_lpips_lambda: float = 0.5
    """Weight of LPIPS (or 1-SSIM without LPIPS weights) in the generated-view loss."""
    input_view_weight: float = 1.0
    generated_view_weight: float = 0.5


class IterGenModel(IterGenSplatfactoModel):
    config: IterGenModelConfig

    def generated_view_loss(self, pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """MSE + λ·LPIPS between a render and a generated image, both [H, W, 3] in [0, 1]."""
        mse = torch.mean((pred - target) ** 2)
        a, b = pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]
        net = self.lpips_model
        if net is not None:
            perceptual = net(a * 2 - 1, b * 2 - 1).mean()
        else:
            perceptual = 1 - self.ssim(a, b)
        return {"generated_mse": mse, "generated_perceptual": self.config.generated_lpips_lambda * perceptual}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        if not batch.get(GENERATED_KEY, False):
            losses = super().get_loss_dict(outputs, batch, metrics_dict)
            losses["main_loss"] = self.config.input_view_weight * losses["main_loss"]
            return losses
        target = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        losses = self.generated_view_loss(outputs["rgb"], target[..., :3])
        losses = {k: self.config.generated_view_weight * v for k, v in losses.items()}
        if self.training:
            self.camera_optimizer.get_loss_dict(losses)
        return losses
