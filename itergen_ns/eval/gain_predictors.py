"""The clips ``itergen gain`` scores and the trivial predictors it scores beside the sample: which windows of a
trajectory form clips, which input views condition them, the nearest input view, the mean frame."""

from __future__ import annotations

from typing import Iterable, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


from itergen_ns.diffusion.data import _to_float_images
from itergen_ns.snapshots.format import SnapshotShard


def clip_windows(num_frames: int, clip_len: int, max_clips: Optional[int] = None) -> List[np.ndarray]:
    """Consecutive windows of ``clip_len`` frames tiling the trajectory (the last one aligned to its end).

    With ``max_clips``, an evenly spaced subset of the windows. A trajectory shorter than ``clip_len`` is one
    clip of all its frames.
    """
    if num_frames <= clip_len:
        windows = [np.arange(num_frames)]
    else:
        starts = list(range(0, num_frames - clip_len + 1, clip_len))
        if starts[-1] + clip_len < num_frames:
            starts.append(num_frames - clip_len)
        windows = [s + np.arange(clip_len) for s in starts]
    if max_clips is not None and 0 < max_clips < len(windows):
        keep = np.unique(np.round(np.linspace(0, len(windows) - 1, max_clips)).astype(int))
        windows = [windows[i] for i in keep]
    return windows


def conditioning_views(input_indices: Union[Sequence[int], np.ndarray], max_views: int) -> np.ndarray:
    """The run's input views, or an evenly spaced subset of ``max_views`` when the model takes fewer."""
    views = np.asarray(input_indices, dtype=np.int64)
    if len(views) <= max_views:
        return views
    return views[np.round(np.linspace(0, len(views) - 1, max_views)).astype(int)]


def nearest_inputs(
    target_c2w: Float[np.ndarray, "G 3 4"],
    input_c2w: Float[np.ndarray, "C 3 4"],
    by: Literal["center", "angle"] = "center",
) -> Int[np.ndarray, " G"]:
    """Position (into the inputs) of the input camera nearest to each target camera.

    ``center``: smallest camera-centre distance, ties broken by viewing-direction angle; ``angle``: smallest
    angle between viewing directions (the OpenGL -z axes), ties broken by distance.
    """
    t, c = np.asarray(target_c2w, np.float64), np.asarray(input_c2w, np.float64)
    dist = np.linalg.norm(t[:, None, :3, 3] - c[None, :, :3, 3], axis=-1)
    cos = np.einsum("gi,ci->gc", t[:, :3, 2], c[:, :3, 2]) / (
        np.linalg.norm(t[:, None, :3, 2], axis=-1) * np.linalg.norm(c[None, :, :3, 2], axis=-1)
    )
    angle = np.arccos(np.clip(cos, -1.0, 1.0))
    primary, secondary = (dist, angle) if by == "center" else (angle, dist)
    return np.array([np.lexsort((secondary[g], primary[g]))[0] for g in range(len(t))], dtype=np.int64)


def mean_frame(
    shards: Iterable[SnapshotShard], hw: Tuple[int, int], inputs_only: bool = False, chunk: int = 64
) -> Float[Tensor, "3 H W"]:
    """Per-pixel mean of the ground-truth frames of ``shards`` at resolution ``hw`` (only input views if asked)."""
    total, count = torch.zeros(3, *hw, dtype=torch.float64), 0
    for shard in shards:
        idx = np.asarray(shard.input_indices) if inputs_only else np.arange(shard.num_frames)
        for i in range(0, len(idx), chunk):
            x = _to_float_images(shard.images[np.sort(idx[i : i + chunk])], hw)
            total += x.double().sum(0)
            count += x.shape[0]
    if count == 0:
        raise ValueError("no frames to average for the mean-frame predictor")
    return (total / count).float()
