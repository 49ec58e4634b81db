"""P_theta(x_g | z_t, x_c, c_g): the render-conditioned video diffusion model as one module.

:class:`IterGenDiffusionModel` is the trainable :class:`~itergen_ns.diffusion.denoiser.IterGenDenoiser` plus the
frozen VAE and image encoders and the scheduler's config. It owns construction (``from_config``,
``from_pretrained``, ``save_pretrained``), the VAE helpers (``encode_latents`` returns scaled latents,
``vae.encode(x).latent_dist.mode() * scaling_factor``) and its sizes. Its parts live in one module each:

* :mod:`~itergen_ns.diffusion.components` -- the model directory layout and the frozen component builders;
* :mod:`~itergen_ns.diffusion.conditioning` -- :class:`Conditioning` and how ``prepare_conditioning`` builds it
  (latent conventions, ``added_time_ids``);
* :mod:`~itergen_ns.diffusion.denoiser` -- the trainable network and its output parameterisation;
* :mod:`~itergen_ns.diffusion.loss` -- the training loss behind ``training_loss``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder, AutoencoderTiny, EulerDiscreteScheduler
from jaxtyping import Float
from torch import Tensor, nn

from itergen_ns.io import atomic_path
from itergen_ns.diffusion.components import (
    MODEL_FILE,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    SUBFOLDERS,
    VAE,
    _build_clip,
    _build_dino,
    _build_vae,
    _cross_attention_dim,
    _image_encoder,
    _scheduler_config,
    read_model_meta,
)
from itergen_ns.diffusion.conditioning import Conditioning, build_conditioning
from itergen_ns.diffusion.configs import (
    RESIDUAL_PARAMETERIZATIONS,
    ComponentSource,
    DiffusionModelConfig,
    config_from_dict,
    config_to_dict,
)
from itergen_ns.diffusion.denoiser import IterGenDenoiser
from itergen_ns.diffusion.image_features import ImageFeatureEncoder
from itergen_ns.diffusion.loss import denoising_loss
from itergen_ns.diffusion.unet import build_unet
from itergen_ns.diffusion.view_tokens import ViewTokenizer
from itergen_ns.diffusion.weights import MissingWeightsError, load_pretrained


class IterGenDiffusionModel(nn.Module):
    """The full model: trainable denoiser + frozen VAE and image encoders + the scheduler's config."""

    def __init__(
        self,
        config: DiffusionModelConfig,
        denoiser: IterGenDenoiser,
        vae: VAE,
        image_encoder: ImageFeatureEncoder,
        scheduler_config: Dict,
    ):
        super().__init__()
        self.config = config
        self.denoiser = denoiser
        self.vae = vae
        self.image_encoder = image_encoder
        self.scheduler_config = dict(scheduler_config)
        self.vae.requires_grad_(False)
        self.vae.eval()

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: DiffusionModelConfig) -> "IterGenDiffusionModel":
        """Build every component: pretrained where the config names weights, seeded random init otherwise."""
        config.validate()
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(config.seed)
            unet = build_unet(config.unet, config.unet_in_channels, config.allow_download, config.latent_channels)
            if config.output_parameterization in RESIDUAL_PARAMETERIZATIONS and config.unet.pretrained is None:
                nn.init.zeros_(unet.conv_out.weight)  # untrained model = identity of the render / input
                nn.init.zeros_(unet.conv_out.bias)
            vae = _build_vae(config.vae, config.allow_download)
            clip = _build_clip(config.clip, config.allow_download)
            dino = _build_dino(config.dino, config.allow_download)
            encoder = _image_encoder(config, clip, dino)
            tokenizer = ViewTokenizer(
                clip_dim=encoder.clip_dim,
                dino_dim=encoder.dino_dim,
                token_dim=_cross_attention_dim(unet),
                max_views=config.max_input_views,
                pose_num_freqs=config.pose_num_freqs,
                pose_hidden_dim=config.pose_hidden_dim,
                pose_translation_scale=config.pose_translation_scale,
            )
        scheduler_config = _scheduler_config(config.scheduler, config.allow_download)
        denoiser = IterGenDenoiser(unet, tokenizer, config.output_parameterization)
        return cls(config, denoiser, vae, encoder, scheduler_config)

    @classmethod
    def from_pretrained(
        cls, path: Union[str, Path], allow_download: bool = False, torch_dtype: Optional[torch.dtype] = None
    ) -> "IterGenDiffusionModel":
        """Load a directory written by :meth:`save_pretrained`; components it does not hold come from their sources."""
        path = Path(path)
        meta = read_model_meta(path)
        config = config_from_dict(meta["config"])
        config.allow_download = allow_download
        local = {key: (path / sub).is_dir() for key, sub in SUBFOLDERS.items()}

        def source(key: str, original: ComponentSource) -> ComponentSource:
            if local[key]:
                return ComponentSource(pretrained=str(path), subfolder=SUBFOLDERS[key])
            if original.pretrained is None:
                raise MissingWeightsError(f"{path}: has no {SUBFOLDERS[key]}/ and the config names no source for it")
            return original

        unet = build_unet(source("unet", config.unet), config.unet_in_channels, allow_download, config.latent_channels)
        vae = _build_vae(source("vae", config.vae), allow_download)
        clip = _build_clip(source("clip", config.clip), allow_download)
        dino = _build_dino(source("dino", config.dino), allow_download)
        encoder = _image_encoder(config, clip, dino)
        tokenizer = load_pretrained(
            "view tokenizer",
            ViewTokenizer.from_pretrained,
            ComponentSource(pretrained=str(path), subfolder=SUBFOLDERS["view_tokenizer"]),
            allow_download=False,
        )
        scheduler_config = meta.get("scheduler") or _scheduler_config(config.scheduler, allow_download)
        denoiser = IterGenDenoiser(unet, tokenizer, config.output_parameterization)
        model = cls(config, denoiser, vae, encoder, scheduler_config).eval()
        # Weights saved in fp16 (the shipped checkpoint) load as float32 unless a dtype is asked for.
        model.to(torch_dtype if torch_dtype is not None else torch.float32)
        return model

    def save_pretrained(
        self,
        path: Union[str, Path],
        include_frozen: Literal["auto", "all", "none"] = "auto",
        dtype: Optional[torch.dtype] = None,
    ) -> Path:
        """Write config JSON + safetensors per component, atomically (temp dir -> rename).

        ``dtype`` (e.g. torch.float16 for a shipped checkpoint) writes a converted copy; this model is unchanged.

        Trainable parts (UNet, view tokenizer) are always written. Frozen parts (VAE, CLIP, DINOv2) are written
        when ``include_frozen="all"``, or with ``"auto"`` only when they have no pretrained source to reload
        them from (random init or fitted); otherwise the saved config references their source.
        """
        path = Path(path)
        if dtype is not None:
            return copy.deepcopy(self).to(dtype).save_pretrained(path, include_frozen)
        frozen = {"vae": self.vae, "clip": self.image_encoder.clip, "dino": self.image_encoder.dino}
        config = dataclasses.replace(self.config)
        with atomic_path(path, directory=True) as tmp:
            self.denoiser.unet.save_pretrained(tmp / SUBFOLDERS["unet"])
            self.denoiser.view_tokenizer.save_pretrained(tmp / SUBFOLDERS["view_tokenizer"])
            for key, module in frozen.items():
                source: ComponentSource = getattr(config, key)
                if include_frozen == "all" or (include_frozen == "auto" and source.pretrained is None):
                    module.save_pretrained(tmp / SUBFOLDERS[key])
            meta = {
                "format": MODEL_FORMAT,
                "version": MODEL_FORMAT_VERSION,
                "config": config_to_dict(config),
                "scheduler": self.scheduler_config,
            }
            (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2))
        return path

    def make_scheduler(self) -> EulerDiscreteScheduler:
        """A fresh (stateless-to-share) Euler/EDM scheduler; one per sampling call keeps threads independent."""
        return EulerDiscreteScheduler.from_config(self.scheduler_config)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def height(self) -> int:
        return self.config.height

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def vae_scale_factor(self) -> int:
        vae_cfg = self.vae.config
        blocks = getattr(vae_cfg, "block_out_channels", None) or vae_cfg.encoder_block_out_channels
        return 2 ** (len(blocks) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def latent_hw(self) -> Tuple[int, int]:
        return self.height // self.vae_scale_factor, self.width // self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def device(self) -> torch.device:
        return self.denoiser.unet.conv_in.weight.device

    # ---------------------------------------------------------------------------------------- VAE helpers
    def resize(self, images: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N 3 h w"]:
        """Resize to the model resolution (antialiased bilinear) when needed."""
        if images.shape[-2:] == (self.height, self.width):
            return images
        return F.interpolate(images.float(), size=(self.height, self.width), mode="bilinear", antialias=True)

    @torch.no_grad()
    def encode_latents(self, images: Float[Tensor, "N 3 H W"], chunk: int = 32) -> Float[Tensor, "N C h w"]:
        """Images in [0, 1] at model resolution -> scaled diffusion latents (posterior mode, or the tiny
        autoencoder's deterministic latents, times scaling_factor)."""
        dtype = self.vae.dtype
        out = []
        for i in range(0, images.shape[0], chunk):
            x = images[i : i + chunk].to(self.vae.device, dtype) * 2.0 - 1.0
            encoded = self.vae.encode(x)
            z = encoded.latents if isinstance(self.vae, AutoencoderTiny) else encoded.latent_dist.mode()
            out.append(z.float())
        return torch.cat(out) * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Float[Tensor, "B G C h w"]) -> Float[Tensor, "B G 3 H W"]:
        """Scaled latents -> images in [0, 1]; the temporal decoder sees each clip as one video."""
        b, g = latents.shape[:2]
        z = (latents.flatten(0, 1) / self.scaling_factor).to(self.vae.device, self.vae.dtype)
        clips = []
        for i in range(b):
            zi = z[i * g : (i + 1) * g]
            if isinstance(self.vae, AutoencoderKLTemporalDecoder):
                clips.append(self.vae.decode(zi, num_frames=g).sample)
            else:
                clips.append(self.vae.decode(zi).sample)
        images = torch.cat(clips).float()
        return ((images + 1.0) / 2.0).clamp(0, 1).reshape(b, g, *images.shape[1:])

    # ------------------------------------------------------------------------------------- conditioning
    def prepare_conditioning(self, *args, **kwargs) -> Conditioning:
        """The full (undropped) conditioning of a batch of clips:
        :func:`~itergen_ns.diffusion.conditioning.build_conditioning` of this model (its arguments after ``model``)."""
        return build_conditioning(self, *args, **kwargs)

    # ----------------------------------------------------------------------------------------- training
    def training_loss(self, *args, **kwargs) -> Tuple[Tensor, Dict[str, float]]:
        """EDM loss on one batch: :func:`~itergen_ns.diffusion.loss.denoising_loss` of this model (its arguments
        after ``model``)."""
        return denoising_loss(self, *args, **kwargs)
