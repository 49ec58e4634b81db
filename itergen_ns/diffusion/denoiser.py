"""The trainable network and its output parameterisation (the part ``accelerate`` wraps for training).

:class:`IterGenDenoiser` is ``UNetSpatioTemporalConditionModel`` + :class:`ViewTokenizer`: it maps (scaled noisy
latents, timestep, conditioning) to a v-prediction. With a residual output parameterisation the UNet predicts a
correction to an identity (the render or the nearest input view) and :func:`residual_to_v` turns it into the
v-prediction with that denoised estimate, so the scheduler, the guidance and the v loss stay unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from itergen_ns.diffusion import edm
from itergen_ns.diffusion.configs import RESIDUAL_PARAMETERIZATIONS
from itergen_ns.diffusion.image_features import ViewFeatures
from itergen_ns.diffusion.view_tokens import ViewTokenizer


class IterGenDenoiser(nn.Module):
    """Trainable network: UNet over ``[c_in * x | render | extras | input map]`` cross-attending to view tokens.

    ``parameterization="render_residual"`` turns the UNet output F into the v-prediction whose denoised
    estimate is ``render_base + F`` (so the scheduler, the guidance and the v loss are unchanged).
    """

    def __init__(self, unet, view_tokenizer: ViewTokenizer, parameterization: str = "v"):
        super().__init__()
        self.unet = unet
        self.view_tokenizer = view_tokenizer
        self.parameterization = parameterization

    def forward(
        self,
        sample: Float[Tensor, "B G C h w"],
        timestep: Float[Tensor, " B"],
        render_cond: Float[Tensor, "B G C h w"],
        extra_maps: Optional[Float[Tensor, "B G E h w"]],
        clip_features: Float[Tensor, "B K Dc"],
        dino_cls: Float[Tensor, "B K Dd"],
        dino_patch: Float[Tensor, "B K Dd"],
        rel_poses: Float[Tensor, "B K 4 4"],
        view_mask: Bool[Tensor, "B K"],
        added_time_ids: Float[Tensor, "B 3"],
        input_map: Optional[Float[Tensor, "B G C h w"]] = None,
        render_base: Optional[Float[Tensor, "B G C h w"]] = None,
    ) -> Float[Tensor, "B G C h w"]:
        """v-prediction for ``sample`` already scaled by ``c_in`` at timestep ``c_noise(sigma)``."""
        dtype = self.unet.conv_in.weight.dtype
        parts = [sample, render_cond] + [m for m in (extra_maps, input_map) if m is not None]
        unet_in = torch.cat([p.to(dtype) for p in parts], dim=2)
        tokens = self.view_tokenizer(ViewFeatures(clip_features, dino_cls, dino_patch), rel_poses, view_mask)
        out = self.unet(
            unet_in,
            timestep.to(sample.device, torch.float32),
            encoder_hidden_states=tokens.to(dtype),
            added_time_ids=added_time_ids.to(dtype),
            return_dict=False,
        )[0]
        if self.parameterization in RESIDUAL_PARAMETERIZATIONS:
            if render_base is None:
                raise ValueError(f"the {self.parameterization} parameterization needs render_base (its identity)")
            out = residual_to_v(out.float(), sample.float(), timestep, render_base.float())
        return out


def residual_to_v(
    correction: Float[Tensor, " B *S"], scaled_sample: Float[Tensor, " B *S"], timestep: Tensor, base: Tensor
) -> Float[Tensor, " B *S"]:
    """The v-prediction whose EDM denoised estimate is ``base + correction``.

    ``scaled_sample = c_in(sigma) * x`` and ``timestep = c_noise(sigma) = 0.25 ln sigma`` as the UNet sees them.
    """
    sigma = (4.0 * timestep.float().to(scaled_sample.device)).exp().reshape(-1, *([1] * (scaled_sample.ndim - 1)))
    x = scaled_sample / edm.c_in(sigma)
    return edm.v_target(base + correction, x, sigma.reshape(-1))
