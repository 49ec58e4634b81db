"""Training clips for P_theta drawn from snapshot shards (docs/architecture.md, "Snapshots"), read only through ``snapshots.format``.

One item = one shard, a clip of G consecutive frames along its trajectory (random start, random direction,
random stride in ``frame_stride``), one snapshot step, and the input views of that shard's splatfacto run
(optionally plus other frames of the sequence), all resized to the model resolution.

Items are a pure function of ``(seed, index)``, so a run that resumes at step s and reads indices from
``s * batch_size * world_size`` on sees exactly the data the interrupted run would have seen.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from itergen_ns.data.framing import frame_image, frame_intrinsics
from itergen_ns.render.warp import warp_nearest_input
from itergen_ns.snapshots.format import SnapshotShard, list_shards, load_shard


class EmptyDatasetError(ValueError):
    """No usable snapshot shard was found."""


def _to_float_images(arr: np.ndarray, hw: Tuple[int, int]) -> Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, h, w] in [0, 1], framed like every other view of the project
    (``itergen_ns.data.framing``: centred window of the output's aspect, resized with antialiasing)."""
    x = torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0
    return torch.stack([frame_image(img, hw) for img in x]).permute(0, 3, 1, 2).clamp(0, 1).contiguous()


def _framed_depths(arr: np.ndarray, hw: Tuple[int, int]) -> Tensor:
    """float16 depths [N, H, W] -> float [N, h, w], framed like the images (nearest: no depth is blended with
    the 0 of "no surface")."""
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return torch.stack([frame_image(d[..., None], hw, mode="nearest")[..., 0] for d in x])


def warp_composites(
    shard: SnapshotShard, step_idx: int, frames: np.ndarray, hw: Tuple[int, int], inputs: Optional[np.ndarray] = None
) -> Tensor:
    """The renders of ``frames`` at snapshot ``step_idx`` repainted with the run's nearest input view warped
    through the render depths (``itergen_ns.render.warp``), at model resolution: float [G, 3, h, w] in [0, 1].

    Needs the shard's ``depths``; the input views are the run's own (``input_indices``, or ``inputs``), whose
    depths at the same step give the occlusion test, exactly what itergen has at sampling time.
    """
    if shard.depths is None:
        raise ValueError(f"{shard.path}: no depths.npy (export the snapshots again for the warped_input map)")
    src_h, src_w = shard.images.shape[1:3]
    inputs = np.asarray(shard.input_indices if inputs is None else inputs, dtype=np.int64)
    if len(inputs) == 0:
        inputs = np.asarray([0])
    frames = np.asarray(frames, dtype=np.int64)

    def intrinsics(idx: np.ndarray) -> Tensor:
        return frame_intrinsics(torch.from_numpy(np.asarray(shard.intrinsics[idx], np.float32)), src_w, src_h, hw)

    def c2w(idx: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(shard.c2w[idx], np.float32))

    composite, _ = warp_nearest_input(
        _to_float_images(shard.renders[step_idx, frames], hw),
        _framed_depths(shard.depths[step_idx, frames], hw),
        c2w(frames),
        intrinsics(frames),
        _to_float_images(shard.images[inputs], hw),
        c2w(inputs),
        intrinsics(inputs),
        _framed_depths(shard.depths[step_idx, inputs], hw),
    )
    return composite


class SnapshotClipDataset(Dataset):
    """Map-style dataset of training clips; ``len`` is a virtual epoch (items are random draws keyed by index)."""

    def __init__(
        self,
        root: Path,
        height: int,
        width: int,
        num_frames: int,
        max_input_views: int,
        seed: int = 0,
        frame_stride: Tuple[int, int] = (1, 1),
        extra_input_prob: float = 0.0,
        latent_shape: Optional[Tuple[int, int, int]] = None,
        use_render_latents: bool = True,
        length: int = 1_000_000,
        warped_input: bool = False,
    ):
        """``latent_shape`` = (C, h, w) of the model; precomputed ``render_latents`` are used only if every shard
        has them at exactly that shape (otherwise renders are encoded by the trainer). ``warped_input``: serve
        the warp composites of the "warped_input" map (every shard needs ``depths``)."""
        self.root = Path(root)
        self.hw = (height, width)
        self.num_frames = num_frames
        self.max_input_views = max_input_views
        self.seed = seed
        self.frame_stride = (int(frame_stride[0]), int(max(frame_stride)))
        self.extra_input_prob = extra_input_prob
        self.length = length
        self.warped_input = warped_input
        self.shards: List[SnapshotShard] = []
        min_span = (num_frames - 1) * self.frame_stride[0] + 1
        skipped: List[str] = []  # why shards were left out: warnings, or the error's reason if none is left
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            paths = list_shards(self.root)
        skipped += [str(w.message) for w in caught]
        for path in paths:
            try:
                shard = load_shard(path)
            except (ValueError, OSError) as err:
                skipped.append(f"skipping corrupt snapshot shard {path}: {err}")
                continue
            if shard.num_frames < min_span:
                skipped.append(
                    f"skipping snapshot shard {path}: {shard.num_frames} frames < {min_span} needed per clip"
                )
                continue
            if len(shard.steps) == 0:
                skipped.append(f"skipping snapshot shard {path}: no snapshot steps")
                continue
            if warped_input and shard.depths is None:
                skipped.append(f"skipping snapshot shard {path}: no depths.npy (needed by the warped_input map)")
                continue
            self.shards.append(shard)
        if not self.shards:
            why = f"; {len(skipped)} skipped, first: {skipped[0]}" if skipped else ""
            raise EmptyDatasetError(
                f"no usable snapshot shards under {self.root} (need finished shards with >= {min_span} frames); "
                f"export some with `itergen export-snapshots`{why}"
            )
        for message in skipped:
            warnings.warn(message)
        self.use_render_latents = bool(
            use_render_latents
            and latent_shape is not None
            and all(
                s.render_latents is not None and tuple(s.render_latents.shape[2:]) == tuple(latent_shape)
                for s in self.shards
            )
        )
        self.latents: Optional[list] = None

    def with_seed(self, seed: int, length: int) -> "SnapshotClipDataset":
        """The same shards (and attached latents) drawn with another seed: validation clips never see a shard
        list that changed on disk since training started."""
        other = copy.copy(self)
        other.seed, other.length = int(seed), int(length)
        return other

    def attach_latents(self, latents: list) -> None:
        """Serve ground-truth, render and input-view latents from a cache (one ``ShardLatents`` per shard, in
        ``self.shards`` order; see :mod:`itergen_ns.diffusion.latent_cache`)."""
        if len(latents) != len(self.shards):
            raise ValueError(f"latent cache has {len(latents)} shards, dataset {len(self.shards)}")
        self.latents = list(latents)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        shard_idx = int(rng.integers(len(self.shards)))
        shard = self.shards[shard_idx]
        frames = self._clip_indices(rng, shard.num_frames)
        step_idx = int(rng.integers(len(shard.steps)))
        views = self._input_views(rng, shard)
        src_h, src_w = shard.images.shape[1:3]

        k = self.max_input_views
        input_images = torch.zeros(k, 3, *self.hw)
        input_images[: len(views)] = _to_float_images(shard.images[views], self.hw)
        input_c2w = torch.eye(4).repeat(k, 1, 1)
        input_c2w[: len(views), :3] = torch.from_numpy(np.asarray(shard.c2w[views], np.float32))
        input_mask = torch.zeros(k, dtype=torch.bool)
        input_mask[: len(views)] = True
        target_c2w = torch.eye(4).repeat(len(frames), 1, 1)
        target_c2w[:, :3] = torch.from_numpy(np.asarray(shard.c2w[frames], np.float32))
        item = {
            "frames": _to_float_images(shard.images[frames], self.hw),
            "renders": _to_float_images(shard.renders[step_idx, frames], self.hw),
            "input_images": input_images,
            "input_mask": input_mask,
            "input_c2w": input_c2w,
            "target_c2w": target_c2w,
            "target_intrinsics": frame_intrinsics(
                torch.from_numpy(np.asarray(shard.intrinsics[frames], np.float32)), src_w, src_h, self.hw
            ).float(),
            "step": torch.tensor(int(shard.steps[step_idx])),
        }
        if self.latents is not None:
            cached = self.latents[shard_idx]
            item["latents"] = cached.frames[frames].float()
            item["render_latents"] = cached.renders[step_idx, frames].float()
            input_latents = torch.zeros(k, *cached.frames.shape[1:])
            input_latents[: len(views)] = cached.frames[views].float()
            item["input_latents"] = input_latents
            if cached.warped is not None:
                item["warped_latents"] = cached.warped[step_idx, frames].float()
        elif self.use_render_latents:
            assert shard.render_latents is not None  # use_render_latents is only set for shards that have them
            item["render_latents"] = torch.from_numpy(np.asarray(shard.render_latents[step_idx, frames], np.float32))
        if self.warped_input and "warped_latents" not in item:
            item["warped"] = warp_composites(shard, step_idx, frames, self.hw)
        return item

    def _clip_indices(self, rng: np.random.Generator, num_frames: int) -> np.ndarray:
        """G consecutive frames (with a random stride that fits), random start, random direction."""
        g = self.num_frames
        max_fit = (num_frames - 1) // max(g - 1, 1) if g > 1 else 1
        stride = int(rng.integers(self.frame_stride[0], min(self.frame_stride[1], max(max_fit, 1)) + 1))
        span = (g - 1) * stride + 1
        start = int(rng.integers(0, num_frames - span + 1))
        idx = start + stride * np.arange(g)
        if rng.random() < 0.5:
            idx = idx[::-1].copy()
        return idx

    def _input_views(self, rng: np.random.Generator, shard: SnapshotShard) -> np.ndarray:
        """The run's input views first (a random subset if there are more than K), then optional extra frames."""
        views = np.asarray(shard.input_indices, dtype=np.int64)
        k = self.max_input_views
        if len(views) > k:
            views = np.sort(rng.choice(views, size=k, replace=False))
        if len(views) == 0:
            views = rng.choice(shard.num_frames, size=1)
        if len(views) < k and self.extra_input_prob > 0 and rng.random() < self.extra_input_prob:
            others = np.setdiff1d(np.arange(shard.num_frames), views)
            if len(others):
                extra = rng.choice(
                    others, size=int(rng.integers(1, min(k - len(views), len(others)) + 1)), replace=False
                )
                views = np.concatenate([views, extra])
        return views


class StepSampler(Sampler[int]):
    """Sequential indices ``start, start+1, ...``: with index-keyed items this makes data order resumable."""

    def __init__(self, start: int, length: int):
        self.start = int(start)
        self.length = int(length)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.start + self.length))

    def __len__(self) -> int:
        return self.length
