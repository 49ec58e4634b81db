"""What the diffusion trainer builds before its loop: the clip dataset, the latent cache, the optimisation state.

Each is a function of the run's config and model only, so the trainer reads as set-up, resume, loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from itergen_ns.diffusion.configs import DiffusionModelConfig
from itergen_ns.diffusion.data import SnapshotClipDataset
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.train_config import TrainDiffusionConfig


def vae_fit_steps(cfg: TrainDiffusionConfig, model_config: DiffusionModelConfig) -> int:
    """Steps fitting a from-scratch VAE before the denoiser trains (400 by default; none for a pretrained VAE)."""
    if cfg.vae_fit_steps is not None:
        return cfg.vae_fit_steps
    return 400 if model_config.vae.pretrained is None else 0


def build_dataset(
    cfg: TrainDiffusionConfig, model: IterGenDiffusionModel, use_render_latents: bool, length: int = 1_000_000
) -> SnapshotClipDataset:
    """Training clips from the snapshot shards at ``cfg.data``, shaped for ``model``."""
    return SnapshotClipDataset(
        cfg.data,
        model.height,
        model.width,
        model.num_frames,
        model.config.max_input_views,
        seed=cfg.seed,
        frame_stride=cfg.frame_stride,
        extra_input_prob=cfg.extra_input_prob,
        latent_shape=(model.latent_channels, *model.latent_hw),
        use_render_latents=use_render_latents,
        length=length,
        warped_input=model.config.needs_depth,
    )


def build_latent_cache(
    dataset: SnapshotClipDataset,
    model: IterGenDiffusionModel,
    model_config: DiffusionModelConfig,
    cache_dir: Optional[Path],
    progress: bool,
) -> List[Any]:
    """Every shard's frames encoded once by the (frozen, pretrained) VAE, tagged so another VAE never reuses it."""
    from itergen_ns.diffusion.latent_cache import build_latent_cache as build

    tag = f"{model_config.vae.pretrained}|{model.latent_channels}x{model.latent_hw}|{model.scaling_factor}"
    return build(
        dataset.shards,
        (model.height, model.width),
        lambda images: model.encode_latents(images.to(model.device)).cpu(),
        tag,
        cache_dir=cache_dir,
        progress=progress,
        warped=model.config.needs_depth,
    )


def build_optimisation(
    cfg: TrainDiffusionConfig, denoiser: torch.nn.Module, num_processes: int
) -> Tuple[torch.optim.Optimizer, Any, Optional[EMAModel]]:
    """AdamW over the trainable denoiser weights, the diffusers LR schedule (per process step) and the EMA."""
    optimizer = torch.optim.AdamW(
        [p for p in denoiser.parameters() if p.requires_grad],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * num_processes,
        num_training_steps=cfg.max_steps * num_processes,
    )
    ema = None
    if cfg.use_ema:
        ema = EMAModel(denoiser.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=cfg.ema_power)
    return optimizer, lr_scheduler, ema
