"""The denoising UNet: diffusers ``UNetSpatioTemporalConditionModel``, built at random or loaded and widened.

Input channels per frame are ``[noisy latent (C) | render latent (C) | extra maps (E) | nearest-input latent]``
(C = 4 for SVD's VAE, 32 for TAEF2).
SVD's ``conv_in`` has 8 channels ``[noisy latent | conditioning-image latent]``; we map them one to one:
noisy -> noisy, and SVD's conditioning-image channels -> our render latent (both are a clean-ish,
noise-augmented latent of "what the frame should look like", fed unscaled as in SVD). The weights for the
E extra channels start at zero, so the widened UNet computes exactly the pretrained function at init.
"""

from __future__ import annotations

import torch
from diffusers import UNetSpatioTemporalConditionModel
from torch import nn

from itergen_ns.diffusion.configs import ComponentSource
from itergen_ns.diffusion.weights import load_pretrained


def widen_conv_in(unet: UNetSpatioTemporalConditionModel, in_channels: int) -> UNetSpatioTemporalConditionModel:
    """Grow ``conv_in`` to ``in_channels`` inputs; existing channels keep their weights, new ones are zero."""
    old = unet.conv_in
    if in_channels == old.in_channels:
        return unet
    if in_channels < old.in_channels:
        raise ValueError(f"UNet has {old.in_channels} input channels, cannot narrow it to {in_channels}")
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def build_unet(
    source: ComponentSource, in_channels: int, allow_download: bool, out_channels: int = 4
) -> UNetSpatioTemporalConditionModel:
    """Load (and widen) a pretrained UNet, or build one at random from ``source.kwargs`` (``out_channels`` =
    the VAE's latent channels unless the kwargs say otherwise)."""
    if source.pretrained:
        unet = load_pretrained(
            "UNet (UNetSpatioTemporalConditionModel)",
            UNetSpatioTemporalConditionModel.from_pretrained,
            source,
            allow_download,
        )
        return widen_conv_in(unet, in_channels)
    kwargs = dict(source.kwargs)
    kwargs["in_channels"] = in_channels
    kwargs.setdefault("out_channels", out_channels)
    return UNetSpatioTemporalConditionModel(**kwargs)
