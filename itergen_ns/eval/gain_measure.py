"""The measurement loop of ``itergen gain``: sample the generator on every planned clip exactly as itergen samples
it and score each non-input frame of the sample beside its render and the trivial predictors
(:mod:`itergen_ns.eval.gain_predictors`), plus the labelled grids of the picture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from jaxtyping import Float
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.camera_utils import to_homogeneous
from itergen_ns.diffusion.clip_metrics import frame_metrics
from itergen_ns.diffusion.data import _to_float_images, warp_composites
from itergen_ns.itergen.generator import Generator
from itergen_ns.snapshots.format import SnapshotShard
from itergen_ns.eval.gain_predictors import conditioning_views, nearest_inputs
from itergen_ns.eval.gain_summary import METRICS, PREDICTORS

ClipPlan = Tuple[SnapshotShard, List[int], List[np.ndarray]]
"""One shard's share of the work: the shard, the positions of its scored snapshot steps, its clip windows."""

FrameScores = Dict[str, np.ndarray]
"""Per-frame values of each metric for one predictor on one clip."""


def shard_scene(shard: SnapshotShard) -> str:
    """The scene a shard was exported from (its folder name when the metadata does not say)."""
    return str(shard.meta.get("scene", shard.path.name))


@dataclass
class _Inputs:
    """A shard's conditioning: the input views the generator sees, as images, camera-to-worlds and poses."""

    all_inputs: Set[int]
    views: np.ndarray
    images: Tensor
    c2w: np.ndarray
    poses: Tensor


@dataclass
class _Clip:
    """One clip of a shard: its frames, which of them are scored, the ground truth and the target cameras."""

    shard: SnapshotShard
    index: int
    num_clips: int
    counter: int
    """1-based position of the clip over the whole plan (part of the sampler seed)."""
    window: np.ndarray
    keep: np.ndarray
    gt: Tensor
    target_c2w: np.ndarray
    nearest: np.ndarray
    extra: Dict[str, Tensor]
    """Extra sampler inputs: target intrinsics (Plücker maps) and the warped inputs of the current step."""


class GainMeasurement:
    """Samples the generator on every planned clip and scores it beside the render and the trivial predictors;
    collects one record per scored non-input frame (``frames``) and the picture's grids (``grids``)."""

    def __init__(
        self,
        generator: Generator,
        hw: Tuple[int, int],
        mean_img: Float[Tensor, "3 H W"],
        seeds: Sequence[int],
        nearest_by: Literal["center", "angle"],
    ) -> None:
        self.generator = generator
        self.model = generator.pipe.model
        self.hw = hw
        self.mean_img = mean_img
        self.seeds = seeds
        self.nearest_by = nearest_by
        self.frames: List[Dict[str, Any]] = []
        self.grids: List[np.ndarray] = []
        self._grid_keys: Set[Tuple[str, int]] = set()
        self._progress: Optional[Progress] = None
        self._task: Any = None
        self._clip_counter = 0

    def run(self, plan: Sequence[ClipPlan], num_grid_clips: int) -> None:
        """Measure every (shard, snapshot step, clip, seed) of ``plan`` with a progress bar over the samples."""
        total = sum(len(steps) * len(clips) for _, steps, clips in plan) * len(self.seeds)
        self._grid_keys = _grid_clips([(s.path.name, len(c)) for s, _, c in plan], num_grid_clips)
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("samples"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=CONSOLE) as progress:
            self._progress = progress
            self._task = progress.add_task("generator gain", total=total)
            for shard, step_positions, clips in plan:
                self._measure_shard(shard, step_positions, clips)
        self._progress = None

    def _measure_shard(self, shard: SnapshotShard, step_positions: List[int], clips: List[np.ndarray]) -> None:
        """Every clip of one shard; a frame shared by two clips is scored only in the first."""
        views = conditioning_views(shard.input_indices, self.generator.max_input_views)
        input_c2w = np.asarray(shard.c2w[views], np.float32)
        inputs = _Inputs(
            all_inputs=set(int(i) for i in shard.input_indices),
            views=views,
            images=_to_float_images(shard.images[views], self.hw),
            c2w=input_c2w,
            poses=to_homogeneous(torch.from_numpy(np.asarray(input_c2w, np.float32))),
        )
        scored: Set[int] = set()
        for ci, window in enumerate(clips):
            self._clip_counter += 1
            keep = np.array([int(f) not in inputs.all_inputs and int(f) not in scored for f in window])
            scored.update(int(f) for f in window)
            clip = self._clip(shard, ci, len(clips), window, keep, inputs)
            fixed = self._fixed_scores(clip, inputs)
            for si in step_positions:
                in_grid = si == step_positions[-1] and (shard.path.name, ci) in self._grid_keys
                self._measure_step(clip, inputs, si, fixed, in_grid)

    def _clip(
        self, shard: SnapshotShard, ci: int, num_clips: int, window: np.ndarray, keep: np.ndarray, inputs: _Inputs
    ) -> _Clip:
        """A clip's ground truth at the generator's resolution, its target cameras and nearest inputs."""
        hw = self.hw
        gt = _to_float_images(shard.images[window], hw)
        target_c2w = np.asarray(shard.c2w[window], np.float32)
        nearest = nearest_inputs(target_c2w, inputs.c2w, self.nearest_by)
        extra: Dict[str, Tensor] = {}
        if getattr(self.generator, "needs_intrinsics", False):  # Plücker maps: intrinsics in pixels of hw
            src_h, src_w = shard.images.shape[1:3]
            scale = np.array([hw[1] / src_w, hw[0] / src_h] * 2, np.float32)
            extra["target_intrinsics"] = torch.from_numpy(np.asarray(shard.intrinsics[window], np.float32) * scale)
        return _Clip(shard, ci, num_clips, self._clip_counter, window, keep, gt, target_c2w, nearest, extra)

    def _fixed_scores(self, clip: _Clip, inputs: _Inputs) -> Dict[str, FrameScores]:
        """Scores of the predictors that do not depend on the snapshot step (the trivial ones and the VAE)."""
        gt, model = clip.gt, self.model
        ae = model.decode_latents(model.encode_latents(gt.to(model.device))[None])[0].float().cpu()
        return {
            "mean_frame": frame_metrics(self.mean_img.expand_as(gt), gt),
            "nearest_input": frame_metrics(inputs.images[clip.nearest], gt),
            "first_input": frame_metrics(inputs.images[:1].expand_as(gt), gt),
            "autoencoder": frame_metrics(ae, gt),
        }

    def _measure_step(
        self, clip: _Clip, inputs: _Inputs, si: int, fixed: Dict[str, FrameScores], in_grid: bool
    ) -> None:
        """One snapshot step of a clip: the render, its warped repaint, the seed-averaged sample; then records."""
        shard = clip.shard
        step = int(shard.steps[si])
        renders = _to_float_images(shard.renders[si, clip.window], self.hw)
        warped = renders if shard.depths is None else warp_composites(shard, si, clip.window, self.hw, inputs.views)
        if shard.depths is not None:
            clip.extra["warped_inputs"] = warped
        per = {"render": frame_metrics(renders, clip.gt), "warped_input": frame_metrics(warped, clip.gt), **fixed}
        seed_metrics = [
            self._sample(clip, inputs, renders, step, int(seed), k == 0 and in_grid)
            for k, seed in enumerate(self.seeds)
        ]
        per["sample"] = {m: np.mean([s[m] for s in seed_metrics], axis=0) for m in METRICS}
        for j in np.flatnonzero(clip.keep):
            self.frames.append(
                {
                    "shard": shard.path.name,
                    "scene": shard_scene(shard),
                    "step": step,
                    "views": int(len(inputs.views)),
                    "clip": clip.index,
                    "frame": int(clip.window[j]),
                    **{m: {p: float(per[p][m][j]) for p in PREDICTORS} for m in METRICS},
                }
            )

    def _sample(
        self, clip: _Clip, inputs: _Inputs, renders: Tensor, step: int, seed: int, to_grid: bool
    ) -> FrameScores:
        """One sample of the generator for the clip at this step, scored; added to the picture if asked."""
        assert self._progress is not None
        name = clip.shard.path.name
        self._progress.update(self._task, description=f"{name} step {step} clip {clip.index + 1}/{clip.num_clips}")
        sample = (
            self.generator.sample(
                renders,
                inputs.images,
                inputs.poses,
                to_homogeneous(torch.from_numpy(np.asarray(clip.target_c2w, np.float32))),
                seed=int(seed) * 100003 + clip.counter,
                **clip.extra,
            )
            .float()
            .clamp(0, 1)
            .cpu()
        )
        metrics = frame_metrics(sample, clip.gt)
        if to_grid:
            names = [f"render {name} step {step}", "sample", "nearest input", "GT"]
            self.grids.append(_labelled_grid([renders, sample, inputs.images[clip.nearest], clip.gt], names, self.hw))
        self._progress.advance(self._task)
        return metrics


def _labelled_grid(rows: Sequence[Float[Tensor, "G 3 H W"]], names: Sequence[str], hw: Tuple[int, int]) -> np.ndarray:
    """Rows of a clip as one image (cells enlarged to >= 128 px, as the validation grids), each row named."""
    from itergen_ns.diffusion.visualize import clip_grid
    from itergen_ns.eval.images import label_image

    scale = max(1, 128 // hw[0])
    grid = clip_grid(rows, scale=scale).copy()
    h, w = hw[0] * scale, hw[1] * scale
    for r, name in enumerate(names):
        grid[r * h : (r + 1) * h, :w] = label_image(np.ascontiguousarray(grid[r * h : (r + 1) * h, :w]), name)
    return grid


def _grid_clips(shard_clips: List[Tuple[str, int]], n: int) -> Set[Tuple[str, int]]:
    """(shard, clip) pairs for the picture: the first clip of each shard in turn, then the next, up to ``n``."""
    picked: List[Tuple[str, int]] = []
    depth = 0
    while len(picked) < n and any(depth < c for _, c in shard_clips):
        picked += [(name, depth) for name, c in shard_clips if depth < c][: n - len(picked)]
        depth += 1
    return set(picked)
