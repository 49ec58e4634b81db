"""Latents of every snapshot frame and render, encoded once per training run by a frozen pretrained VAE.

With a pretrained autoencoder (TAEF2) the latents of a shard never change during training, and encoding a
batch of clips at 128 px costs far more than the small UNet's step on a CPU. The trainer therefore encodes each
shard once (ground-truth frames and the renders of every snapshot step, framed exactly as
:class:`~itergen_ns.diffusion.data.SnapshotClipDataset` frames them) and keeps fp16 latents in memory; with a
``cache_dir`` each shard's latents are also saved (write to a temporary name, then rename) so a resumed run
does not encode again. A cache file records the shard and the model's latent shape, and is ignored when they
do not match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from itergen_ns.diffusion.data import _to_float_images, warp_composites
from itergen_ns.io import atomic_torch_save, remove_dead_temporaries
from itergen_ns.snapshots.format import SnapshotShard

Encoder = Callable[[Tensor], Tensor]
"""Images [N, 3, h, w] in [0, 1] at model resolution -> scaled latents [N, C, h', w']."""


@dataclass
class ShardLatents:
    """fp16 latents of one shard: its ground-truth frames and its renders at every snapshot step."""

    frames: Float[Tensor, "N C h w"]
    renders: Float[Tensor, "S N C h w"]
    warped: Optional[Float[Tensor, "S N C h w"]] = None
    """Latents of the warp composites (render + nearest input warped in), for the "warped_input" map."""


def _cache_key(shard: SnapshotShard, hw: Tuple[int, int], tag: str) -> str:
    ident = f"{Path(shard.path).resolve()}|{shard.renders.shape}|{hw}|{tag}"
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def encode_shard(
    shard: SnapshotShard, hw: Tuple[int, int], encode: Encoder, chunk: int = 64, warped: bool = False
) -> ShardLatents:
    """Encode one shard's frames and renders (framed like the dataset) with ``encode``; with ``warped``, also
    the warp composites of every frame at every step."""

    def run(arr) -> Tensor:
        out = [encode(_to_float_images(arr[i : i + chunk], hw)).half() for i in range(0, len(arr), chunk)]
        return torch.cat(out)

    frames = run(shard.images)
    steps, n = shard.renders.shape[:2]
    renders = run(shard.renders.reshape(steps * n, *shard.renders.shape[2:]))
    warped_latents = None
    if warped:
        everything = np.arange(n)
        warped_latents = torch.stack(
            [
                torch.cat(
                    [
                        encode(warp_composites(shard, s, everything[i : i + chunk], hw)).half()
                        for i in range(0, n, chunk)
                    ]
                )
                for s in range(steps)
            ]  # fmt: skip
        )
    return ShardLatents(frames=frames, renders=renders.reshape(steps, n, *renders.shape[1:]), warped=warped_latents)


def build_latent_cache(
    shards: Sequence[SnapshotShard],
    hw: Tuple[int, int],
    encode: Encoder,
    tag: str,
    cache_dir: Optional[Path] = None,
    progress: bool = True,
    warped: bool = False,
) -> List[ShardLatents]:
    """Latents of every shard, read from ``cache_dir`` where a matching file exists, encoded (and saved) otherwise.

    ``tag`` names the encoder (e.g. the VAE source and latent shape) so a cache of another model is never used;
    ``warped`` adds the warp composites' latents (part of the cache key).
    """
    tag = f"{tag}|warped" if warped else tag
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(cache_dir)  # left by a killed run (a live writer's are locked)
    out: List[ShardLatents] = []
    for shard in tqdm(shards, desc="encoding snapshot latents", disable=not progress, dynamic_ncols=True):
        file = cache_dir / f"{Path(shard.path).name}-{_cache_key(shard, hw, tag)}.pt" if cache_dir else None
        if file is not None and file.exists():
            data = torch.load(file, weights_only=True)
            out.append(ShardLatents(frames=data["frames"], renders=data["renders"], warped=data.get("warped")))
            continue
        latents = encode_shard(shard, hw, encode, warped=warped)
        if file is not None:
            data = {"frames": latents.frames, "renders": latents.renders}
            if latents.warped is not None:
                data["warped"] = latents.warped
            atomic_torch_save(data, file)
        out.append(latents)
    return out
