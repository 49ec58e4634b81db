"""The training objective: EDM v-prediction loss with conditioning dropout on one batch of clips.

``IterGenDiffusionModel.training_loss`` delegates here; the trainer (:mod:`itergen_ns.diffusion.train`) passes
the ``accelerate``-wrapped denoiser. With a residual output parameterisation the loss is the x0 loss with the
EDM weight clipped (``residual_loss_weight_max``), which equals the v loss where the clip does not bite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itergen_ns.diffusion import edm
from itergen_ns.diffusion.conditioning import rand, randn
from itergen_ns.diffusion.configs import RESIDUAL_PARAMETERIZATIONS

if TYPE_CHECKING:
    from itergen_ns.diffusion.model import IterGenDiffusionModel


def denoising_loss(
    model: "IterGenDiffusionModel",
    batch: Dict[str, Tensor],
    generator: Optional[torch.Generator],
    render_noise: Union[float, Tensor],
    drop_inputs: float = 0.1,
    drop_renders: float = 0.1,
    drop_both: float = 0.1,
    denoiser: Optional[nn.Module] = None,
) -> Tuple[Tensor, Dict[str, float]]:
    """EDM v-prediction loss on one batch from :class:`~itergen_ns.diffusion.data.SnapshotClipDataset`.

    Conditioning dropout draws one category per sample: inputs only (``drop_inputs``), renders only
    (``drop_renders``), both (``drop_both``), or none. ``denoiser`` defaults to ``model.denoiser`` (pass the
    accelerate-wrapped one when training). All randomness comes from ``generator``.
    """
    denoiser = denoiser if denoiser is not None else model.denoiser
    device = model.device
    frames = batch["frames"]
    b, g = frames.shape[:2]  # frames may be omitted only when "latents" are given
    if "latents" in batch:  # precomputed scaled latents of the ground-truth frames
        x0 = batch["latents"].to(device, torch.float32)
    else:
        x0 = model.encode_latents(frames.flatten(0, 1).to(device)).reshape(b, g, -1, *model.latent_hw)
    if "render_latents" in batch:
        render_latents = batch["render_latents"].to(device, torch.float32)
    else:
        render_latents = model.encode_latents(batch["renders"].flatten(0, 1).to(device)).reshape(x0.shape)
    cond = model.prepare_conditioning(
        render_latents,
        batch["input_images"],
        batch["input_mask"],
        batch["input_c2w"],
        batch["target_c2w"],
        render_noise,
        generator,
        batch.get("target_intrinsics"),
        batch.get("input_latents"),
        _warped_latents(model, batch, x0.shape),
    )
    u = rand((b,), generator, device)
    drop_in = u < drop_inputs
    drop_r = (u >= drop_inputs) & (u < drop_inputs + drop_renders)
    drop_all = (u >= drop_inputs + drop_renders) & (u < drop_inputs + drop_renders + drop_both)
    cond = cond.with_dropout(keep_render=~(drop_r | drop_all), keep_inputs=~(drop_in | drop_all))
    sigma = edm.sample_sigmas(
        b, model.config.sigma_p_mean, model.config.sigma_p_std, generator, device, *_sigma_range(model)
    )
    eps = randn(x0.shape, generator, device)
    x = x0 + sigma.view(-1, 1, 1, 1, 1) * eps
    pred = denoiser(edm.scale_input(x, sigma), edm.c_noise(sigma), **cond.as_kwargs())
    if model.config.output_parameterization in RESIDUAL_PARAMETERIZATIONS:
        # x0 loss with the EDM weight clipped (the v loss equals it unclipped).
        weight = ((sigma**2 + 1.0) / sigma**2).clamp(max=model.config.residual_loss_weight_max)
        err = (edm.denoised(pred.float(), x, sigma) - x0) ** 2
        loss = (weight.view(-1, 1, 1, 1, 1) * err).mean()
    else:
        loss = F.mse_loss(pred.float(), edm.v_target(x0, x, sigma))
    logs = {"sigma_mean": float(sigma.mean()), "dropped_3d": float((drop_r | drop_all).float().mean())}
    return loss, logs


def _warped_latents(model: "IterGenDiffusionModel", batch: Dict[str, Tensor], shape) -> Optional[Tensor]:
    """Scaled latents of the batch's warp composites: cached ("warped_latents") or encoded ("warped")."""
    if "warped_latents" in batch:
        return batch["warped_latents"].to(model.device, torch.float32)
    if "warped" in batch:
        return model.encode_latents(batch["warped"].flatten(0, 1).to(model.device)).reshape(shape)
    return None


def _sigma_range(model: "IterGenDiffusionModel") -> Tuple[float, float]:
    return float(model.scheduler_config.get("sigma_min") or 0.002), float(
        model.scheduler_config.get("sigma_max") or 700.0
    )
