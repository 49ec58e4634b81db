"""The pretrained TAEF2 tiny autoencoder (distilled from the FLUX.2 VAE) as a diffusers ``AutoencoderTiny``.

TAEF2 is taesd's ``flux_2`` variant: diffusers' ``AutoencoderTiny(latent_channels=32)`` plus a residual
"pool" branch (1x1 conv, GroupNorm, ReLU, 1x1 conv) in the three deepest encoder and decoder blocks, which plain
``AutoencoderTiny`` lacks. :class:`AutoencoderTinyPool` adds it back; :func:`load_taef2` fills it from the
vendored weights in :data:`TAEF2_DIR`. API as diffusers: ``encode(x).latents`` for x in [-1, 1] gives raw
latents [B, 32, H/8, W/8] (roughly in [-3, 3]); ``decode(z).sample`` gives images in about [-1, 1].
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from diffusers import AutoencoderTiny
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
from jaxtyping import Float
from torch import nn

from itergen_ns.diffusion.weights import MissingWeightsError

TAEF2_DIR: Path = Path(__file__).resolve().parents[1] / "weights" / "taef2"
"""Vendored weights: ``taef2_encoder.pth``, ``taef2_decoder.pth`` and ``LICENSE`` (MIT)."""

TAEF2_SOURCE = "https://github.com/madebyollin/taesd (commit 5cccb12dc72074a4be35680c3b108548a7c69978)"

TAEF2_SHA256: Dict[str, str] = {
    "taef2_encoder.pth": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "taef2_decoder.pth": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}

TAEF2_CONFIG: Dict[str, object] = dict(
    latent_channels=32,
    encoder_block_out_channels=(64, 64, 64, 64),
    decoder_block_out_channels=(64, 64, 64, 64),
    num_encoder_blocks=(1, 3, 3, 3),
    num_decoder_blocks=(3, 3, 3, 1),
    upsampling_scaling_factor=2,
    upsample_fn="nearest",
    act_fn="relu",
    latent_magnitude=3,
    latent_shift=0.5,
    scaling_factor=1.0,
)
"""``AutoencoderTiny`` kwargs of TAEF2 (the diffusers defaults except ``latent_channels``)."""

TAEF2_POOL_LAYERS: Tuple[Tuple[int, ...], Tuple[int, ...]] = ((11, 12, 13), (2, 3, 4))
"""Indices into ``encoder.layers`` and ``decoder.layers`` of the blocks with the pool branch."""


class AutoencoderTinyPoolBlock(AutoencoderTinyBlock):
    """``AutoencoderTinyBlock`` with taesd's residual pool branch: ``x <- x + pool(x)`` before the block body."""

    def __init__(self, channels: int, act_fn: str, groups: int = 4, expansion: int = 4):
        super().__init__(channels, channels, act_fn)
        hidden = channels * expansion
        self.pool = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.GroupNorm(groups, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: Float[torch.Tensor, "B C H W"]) -> Float[torch.Tensor, "B C H W"]:
        return super().forward(x + self.pool(x))


def _add_pool(layers: nn.Sequential, indices: Sequence[int], act_fn: str, where: str) -> None:
    for i in indices:
        block = layers[i] if 0 <= i < len(layers) else None
        if not isinstance(block, AutoencoderTinyBlock) or not isinstance(block.skip, nn.Identity):
            raise ValueError(
                f"{where}.layers[{i}] is not an AutoencoderTinyBlock with equal in/out channels: {block!r}"
            )
        layers[i] = AutoencoderTinyPoolBlock(block.conv[0].out_channels, act_fn)


class AutoencoderTinyPool(AutoencoderTiny):
    """``AutoencoderTiny`` whose blocks at ``encoder_pool_layers`` / ``decoder_pool_layers`` carry the pool branch.

    The two index lists are recorded in the config, so ``save_pretrained`` / ``from_pretrained`` round-trip.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: Tuple[int, ...] = (64, 64, 64, 64),
        decoder_block_out_channels: Tuple[int, ...] = (64, 64, 64, 64),
        act_fn: str = "relu",
        upsample_fn: str = "nearest",
        latent_channels: int = 4,
        upsampling_scaling_factor: int = 2,
        num_encoder_blocks: Tuple[int, ...] = (1, 3, 3, 3),
        num_decoder_blocks: Tuple[int, ...] = (3, 3, 3, 1),
        latent_magnitude: int = 3,
        latent_shift: float = 0.5,
        force_upcast: bool = False,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        encoder_pool_layers: Tuple[int, ...] = TAEF2_POOL_LAYERS[0],
        decoder_pool_layers: Tuple[int, ...] = TAEF2_POOL_LAYERS[1],
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            encoder_block_out_channels=encoder_block_out_channels,
            decoder_block_out_channels=decoder_block_out_channels,
            act_fn=act_fn,
            upsample_fn=upsample_fn,
            latent_channels=latent_channels,
            upsampling_scaling_factor=upsampling_scaling_factor,
            num_encoder_blocks=num_encoder_blocks,
            num_decoder_blocks=num_decoder_blocks,
            latent_magnitude=latent_magnitude,
            latent_shift=latent_shift,
            force_upcast=force_upcast,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        )
        _add_pool(self.encoder.layers, encoder_pool_layers, act_fn, "encoder")
        _add_pool(self.decoder.layers, decoder_pool_layers, act_fn, "decoder")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def taef2_state_dict(
    weights_dir: Optional[Union[str, Path]] = None, verify_sha256: bool = True
) -> Dict[str, torch.Tensor]:
    """The two taesd state dicts (float32) renamed to diffusers keys: encoder ``k.*`` -> ``encoder.layers.k.*``,
    decoder ``k.*`` -> ``decoder.layers.(k-1).*`` (taesd's decoder layer 0, the tanh clamp, is built into
    diffusers' ``DecoderTiny.forward``)."""
    folder = Path(TAEF2_DIR if weights_dir is None else weights_dir)
    state: Dict[str, torch.Tensor] = {}
    for part, offset in (("encoder", 0), ("decoder", -1)):
        name = f"taef2_{part}.pth"
        path = folder / name
        if not path.is_file():
            raise MissingWeightsError(
                f"TAEF2 {part} weights not found: {path} (get {', '.join(TAEF2_SHA256)} from {TAEF2_SOURCE})"
            )
        if verify_sha256 and _sha256(path) != TAEF2_SHA256[name]:
            raise ValueError(f"sha256 of {path} is {_sha256(path)}, expected {TAEF2_SHA256[name]} ({TAEF2_SOURCE})")
        for key, value in torch.load(path, map_location="cpu", weights_only=True).items():
            index, rest = key.split(".", 1)
            state[f"{part}.layers.{int(index) + offset}.{rest}"] = value.float()
    return state


def load_taef2(weights_dir: Optional[Union[str, Path]] = None, verify_sha256: bool = True) -> AutoencoderTinyPool:
    """Pretrained TAEF2 (float32, CPU, eval mode, frozen) from ``weights_dir`` (default :data:`TAEF2_DIR`).

    Raises ``FileNotFoundError`` (:class:`MissingWeightsError`) naming a missing file, ``ValueError`` naming a file
    whose sha256 differs (skip the check with ``verify_sha256=False``).
    """
    state = taef2_state_dict(weights_dir, verify_sha256)
    encoder_pool_layers, decoder_pool_layers = TAEF2_POOL_LAYERS
    vae = AutoencoderTinyPool(
        **TAEF2_CONFIG, encoder_pool_layers=encoder_pool_layers, decoder_pool_layers=decoder_pool_layers
    )
    vae.load_state_dict(state, strict=True)
    return vae.eval().requires_grad_(False)
