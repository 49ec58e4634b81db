"""itergen_ns.diffusion: the render-conditioned video diffusion model P_theta(x_g | z_t, x_c, c_g).

Layout (diffusers-style separation):

* ``configs``   -- :class:`DiffusionModelConfig` and its component sources
* ``presets``   -- the named presets ``tiny`` / ``taef2`` / ``svd`` and the shipped generator's location
* ``model``     -- :class:`IterGenDiffusionModel` (denoiser + frozen VAE / CLIP / DINOv2)
* ``components``, ``conditioning``, ``denoiser``, ``loss`` -- its parts: model directory and builders,
  :class:`Conditioning`, the trainable network, the training loss
* ``pipeline``  -- :class:`IterGenVideoPipeline`, the sampler with two-scale classifier-free guidance
* ``sampling``  -- :class:`SamplingConfig`, the one set of sampler settings, saved with each model
* ``latent_cache``, ``taef2``, ``weights`` -- cached training latents, the TAEF2 autoencoder, weight loading
* ``guidance``, ``edm``, ``poses``, ``view_tokens``, ``image_features``, ``unet`` -- single-purpose parts
* ``data``, ``train``, ``vae_fit``, ``visualize`` -- the standalone training script and its helpers
"""

from itergen_ns.diffusion.configs import ComponentSource, DiffusionModelConfig
from itergen_ns.diffusion.presets import MODEL_CONFIGS, get_model_config, svd_config, tiny_config
from itergen_ns.diffusion.guidance import combine_guidance
from itergen_ns.diffusion.conditioning import Conditioning
from itergen_ns.diffusion.denoiser import IterGenDenoiser
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.pipeline import IterGenVideoPipeline
from itergen_ns.diffusion.weights import MissingWeightsError

__all__ = [
    "MODEL_CONFIGS",
    "ComponentSource",
    "Conditioning",
    "DiffusionModelConfig",
    "IterGenDenoiser",
    "IterGenDiffusionModel",
    "IterGenVideoPipeline",
    "MissingWeightsError",
    "combine_guidance",
    "get_model_config",
    "svd_config",
    "tiny_config",
]
