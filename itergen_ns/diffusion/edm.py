"""EDM noise parameterisation with v-prediction, exactly as Stable Video Diffusion and diffusers' EulerDiscreteScheduler.

Noisy latents are ``x = x0 + sigma * eps``. The network F sees ``c_in(sigma) * x`` at timestep
``c_noise(sigma) = 0.25 ln sigma`` and predicts v; the denoised estimate is
``D = c_skip * x + c_out * F`` with (sigma_data = 1)::

    c_in = 1 / sqrt(sigma^2 + 1)     c_skip = 1 / (sigma^2 + 1)     c_out = -sigma / sqrt(sigma^2 + 1)

These are the formulas of ``EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous")``
(``scale_model_input`` and ``step``), so a model trained with :func:`v_target` samples correctly with it.
Training minimises ``||F - v_target||^2``, which equals the EDM-weighted loss
``(sigma^2 + 1) / sigma^2 * ||D - x0||^2``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def _b(sigma: Tensor, ndim: int) -> Tensor:
    return sigma.reshape(sigma.shape + (1,) * (ndim - sigma.ndim))


def c_in(sigma: Tensor) -> Tensor:
    return 1.0 / (sigma**2 + 1.0).sqrt()


def c_skip(sigma: Tensor) -> Tensor:
    return 1.0 / (sigma**2 + 1.0)


def c_out(sigma: Tensor) -> Tensor:
    return -sigma / (sigma**2 + 1.0).sqrt()


def c_noise(sigma: Tensor) -> Tensor:
    """UNet timestep for noise level sigma (SVD's continuous timesteps)."""
    return 0.25 * sigma.log()


def scale_input(x: Float[Tensor, " B *S"], sigma: Float[Tensor, " B"]) -> Float[Tensor, " B *S"]:
    return x * _b(c_in(sigma), x.ndim).to(x.dtype)


def denoised(model_output: Float[Tensor, " B *S"], x: Float[Tensor, " B *S"], sigma: Float[Tensor, " B"]) -> Tensor:
    """x0 estimate from the v-prediction ``model_output`` at noisy ``x``."""
    return _b(c_skip(sigma), x.ndim) * x + _b(c_out(sigma), x.ndim) * model_output


def v_target(x0: Float[Tensor, " B *S"], x: Float[Tensor, " B *S"], sigma: Float[Tensor, " B"]) -> Tensor:
    """The model output F for which ``denoised(F, x, sigma) == x0``."""
    return (x0 - _b(c_skip(sigma), x.ndim) * x) / _b(c_out(sigma), x.ndim)


def sample_sigmas(
    batch: int,
    p_mean: float,
    p_std: float,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
) -> Float[Tensor, " B"]:
    """Training noise levels: ln sigma ~ N(p_mean, p_std^2), clamped to the sampler's range."""
    gen_device = generator.device if generator is not None else torch.device(device)
    log_sigma = torch.randn(batch, generator=generator, device=gen_device) * p_std + p_mean
    return log_sigma.exp().clamp(sigma_min, sigma_max).to(device)
