"""Cross-attention tokens of the input views: 3 projected features per view + relative-pose embedding + a null token.

Sequence layout for K view slots: ``[null, (clip_1, dcls_1, dpatch_1), ..., (clip_K, dcls_K, dpatch_K)]``,
i.e. ``1 + 3K`` tokens of the UNet's ``cross_attention_dim``.

Variable number of views without an attention mask: ``UNetSpatioTemporalConditionModel.forward`` takes no
encoder mask, so unused slots are set to exactly zero. The UNet's cross-attention ``to_k``/``to_v`` have no
bias, so a zero token has a zero key and a zero value: it adds nothing to the attended value and only a
constant exp(0) term to the softmax normaliser (an attention sink whose weight the model learns to expect,
since every sample has the same 1 + 3K slots in training and sampling). The learned null token is always
present so that a sample with no views at all (input-unconditional branch) still has one informative key.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from jaxtyping import Bool, Float
from torch import Tensor, nn

from itergen_ns.diffusion.image_features import ViewFeatures
from itergen_ns.diffusion.poses import PoseEmbedding


class ViewTokenizer(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' own pattern
    """Trainable map from per-view features and relative poses to cross-attention tokens."""

    @register_to_config
    def __init__(
        self,
        clip_dim: int,
        dino_dim: int,
        token_dim: int,
        max_views: int,
        pose_num_freqs: int = 6,
        pose_hidden_dim: int = 256,
        pose_translation_scale: float = 1.0,
    ):
        super().__init__()
        self.proj_clip = nn.Linear(clip_dim, token_dim)
        self.proj_dino_cls = nn.Linear(dino_dim, token_dim)
        self.proj_dino_patch = nn.Linear(dino_dim, token_dim)
        self.pose_embed = PoseEmbedding(token_dim, pose_num_freqs, pose_hidden_dim, pose_translation_scale)
        self.null_token = nn.Parameter(torch.zeros(1, 1, token_dim))
        if clip_dim == token_dim:
            # SVD feeds CLIP image_embeds straight into cross-attention: start from that mapping.
            nn.init.eye_(self.proj_clip.weight)
            nn.init.zeros_(self.proj_clip.bias)
        # DINOv2 tokens start as zero tokens; their projections learn from there without perturbing a pretrained UNet.
        for lin in (self.proj_dino_cls, self.proj_dino_patch):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def num_tokens(self) -> int:
        return 1 + 3 * self.config.max_views

    def forward(
        self,
        features: ViewFeatures,
        rel_poses: Float[Tensor, "B K 4 4"],
        mask: Bool[Tensor, "B K"],
    ) -> Float[Tensor, "B T D"]:
        b, k = mask.shape
        if k != self.config.max_views:
            raise ValueError(f"expected {self.config.max_views} view slots, got {k}")
        dtype = self.proj_clip.weight.dtype
        tokens = torch.stack(
            [
                self.proj_clip(features.clip.to(dtype)),
                self.proj_dino_cls(features.dino_cls.to(dtype)),
                self.proj_dino_patch(features.dino_patch.to(dtype)),
            ],
            dim=2,
        )  # [B, K, 3, D]
        tokens = tokens + self.pose_embed(rel_poses)[:, :, None]
        tokens = tokens * mask[:, :, None, None].to(dtype)
        null = self.null_token.to(dtype).expand(b, 1, -1)
        return torch.cat([null, tokens.flatten(1, 2)], dim=1)
