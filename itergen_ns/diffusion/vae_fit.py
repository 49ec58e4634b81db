"""Fit a randomly initialised VAE on snapshot frames before diffusion training (tiny config only).

A random VAE cannot reconstruct images, so a model trained in its latent space would generate noise. When
the VAE has no pretrained weights, the trainer first fits it (reconstruction MSE + a small KL term) on
ground-truth frames and renders, then sets ``scaling_factor`` to 1 / std of the latents so diffusion
latents have unit variance (the assumption behind EDM's sigma_data = 1). Afterwards the VAE is frozen.

Every process fits the same VAE on the same data with the same seed; the result is then broadcast from
the main process so all ranks hold bit-identical weights.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast
from diffusers import AutoencoderKLTemporalDecoder
from tqdm.auto import tqdm

from itergen_ns.diffusion.data import SnapshotClipDataset


def fit_vae(
    vae,
    dataset: SnapshotClipDataset,
    steps: int,
    accelerator: Optional[Accelerator] = None,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
    index_offset: int = 10_000_000,
    progress: bool = False,
) -> List[float]:
    """Train ``vae`` in place for ``steps`` clips; returns the per-step reconstruction losses."""
    device = vae.device
    vae.requires_grad_(True)
    vae.train()
    params = [p for p in vae.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    losses: List[float] = []
    for step in tqdm(range(steps), desc="fitting VAE", disable=not progress):
        item = dataset[index_offset + step]
        x = torch.cat([item["frames"], item["renders"]]).to(device, vae.dtype) * 2.0 - 1.0
        num_frames = item["frames"].shape[0]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        if isinstance(vae, AutoencoderKLTemporalDecoder):
            recon = vae.decode(z, num_frames=num_frames).sample
        else:
            recon = vae.decode(z).sample
        rec = F.mse_loss(recon.float(), x.float())
        loss = rec + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(rec.item())
    vae.requires_grad_(False)
    vae.eval()
    with torch.no_grad():
        if accelerator is not None and accelerator.num_processes > 1:
            for p in vae.parameters():
                p.data.copy_(broadcast(p.data, from_process=0))
        latents = []
        for i in range(min(8, len(dataset))):
            item = dataset[index_offset + steps + i]
            latents.append(vae.encode(item["frames"].to(device, vae.dtype) * 2.0 - 1.0).latent_dist.mode().float())
        std = torch.cat(latents).std().clamp_min(1e-4)
    vae.register_to_config(scaling_factor=float(1.0 / std))
    return losses
