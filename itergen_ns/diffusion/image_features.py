"""Frozen image encoders that describe each input view by three vectors: CLIP embedding, DINOv2 CLS, DINOv2 patch mean.

CLIP (``CLIPVisionModelWithProjection.image_embeds``) is the global semantic embedding SVD was trained on;
DINOv2 adds a geometry-aware global token and the mean of its patch tokens (a cheap summary of local
appearance). Images arrive as float RGB in [0, 1]; each encoder gets its own resize + normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformers import CLIPVisionModelWithProjection, Dinov2Model


@dataclass
class ViewFeatures:
    """Per-view feature vectors, batch-shaped ``[*B, D]`` (padded views hold zeros)."""

    clip: Float[Tensor, "*B Dc"]
    dino_cls: Float[Tensor, "*B Dd"]
    dino_patch: Float[Tensor, "*B Dd"]

    def to(self, *args, **kwargs) -> "ViewFeatures":
        return ViewFeatures(*(t.to(*args, **kwargs) for t in (self.clip, self.dino_cls, self.dino_patch)))

    def repeat(self, n: int) -> "ViewFeatures":
        """Stack ``n`` copies along the batch dimension (classifier-free guidance branches)."""
        return ViewFeatures(*(torch.cat([t] * n) for t in (self.clip, self.dino_cls, self.dino_patch)))


def _prepare(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype) -> Tensor:
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((images.float().clamp(0, 1) - mean_t) / std_t).to(dtype)


class ImageFeatureEncoder(nn.Module):
    """CLIP + DINOv2 wrapper; parameters are frozen (requires_grad False), the module runs in eval mode."""

    def __init__(
        self,
        clip: CLIPVisionModelWithProjection,
        dino: Dinov2Model,
        clip_image_size: int,
        dino_image_size: int,
        clip_mean: Sequence[float],
        clip_std: Sequence[float],
        dino_mean: Sequence[float],
        dino_std: Sequence[float],
    ):
        super().__init__()
        self.clip = clip
        self.dino = dino
        self.clip_image_size = clip_image_size
        self.dino_image_size = dino_image_size
        self.clip_mean, self.clip_std = tuple(clip_mean), tuple(clip_std)
        self.dino_mean, self.dino_std = tuple(dino_mean), tuple(dino_std)
        self.requires_grad_(False)
        self.eval()

    @property
    def clip_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    @property
    def dino_dim(self) -> int:
        return int(self.dino.config.hidden_size)

    def train(self, mode: bool = True) -> "ImageFeatureEncoder":
        return super().train(False)  # frozen encoders stay in eval mode

    @torch.no_grad()
    def encode(self, images: Float[Tensor, "N 3 H W"]) -> ViewFeatures:
        """Features of a flat batch of images in [0, 1]."""
        clip_dtype = next(self.clip.parameters()).dtype
        dino_dtype = next(self.dino.parameters()).dtype
        clip_in = _prepare(images, self.clip_image_size, self.clip_mean, self.clip_std, clip_dtype)
        dino_in = _prepare(images, self.dino_image_size, self.dino_mean, self.dino_std, dino_dtype)
        clip_emb = self.clip(pixel_values=clip_in).image_embeds
        hidden = self.dino(pixel_values=dino_in).last_hidden_state  # [N, 1 + P, D], layer-normed
        return ViewFeatures(
            clip=clip_emb.float(), dino_cls=hidden[:, 0].float(), dino_patch=hidden[:, 1:].mean(1).float()
        )

    @torch.no_grad()
    def encode_views(self, images: Float[Tensor, "B K 3 H W"], mask: Bool[Tensor, "B K"]) -> ViewFeatures:
        """Features of the valid views only; padded slots get zero vectors."""
        b, k = mask.shape
        out = ViewFeatures(
            clip=images.new_zeros(b, k, self.clip_dim, dtype=torch.float32),
            dino_cls=images.new_zeros(b, k, self.dino_dim, dtype=torch.float32),
            dino_patch=images.new_zeros(b, k, self.dino_dim, dtype=torch.float32),
        )
        if mask.any():
            feats = self.encode(images[mask])
            out.clip[mask] = feats.clip
            out.dino_cls[mask] = feats.dino_cls
            out.dino_patch[mask] = feats.dino_patch
        return out
