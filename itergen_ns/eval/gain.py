"""`itergen gain`: does a sample of P_theta beat the render it is conditioned on? (docs/generator.md, "the measure").

On snapshot clips of held-out scenes, the generator is sampled exactly as itergen samples it (renders of the
snapshot at the clip's poses, the run's input views and poses, the target poses, through
:class:`~itergen_ns.itergen.generator.Generator` with its sampler settings) and every non-input frame is
scored against the ground truth. Beside the sample and its conditioning render, trivial predictors that need
no 3D knowledge are scored on the same frames:

- ``mean_frame``: the per-pixel mean of all ground-truth frames of the *training* snapshot root
  (``--train-data``), or, without it, the mean of the input views of every shard of the evaluated root;
- ``nearest_input``: the conditioning input view nearest to the target camera (camera-centre distance, or
  viewing-direction angle with ``--nearest-by angle``);
- ``first_input``: a copy of the first input view;
- ``autoencoder``: the ground truth encoded and decoded by the model's VAE, the ceiling for any sample;
- ``warped_input``: the render repainted with the nearest input view warped in through the render's depth
  (``itergen_ns.render.warp``; what the "warped_input" map conditions on), equal to the render for shards
  exported without depths.

Reported per snapshot step and input-view count: PSNR/SSIM of each predictor, the generator gain
(sample − render) and the margin of the sample over the better trivial predictor (at 1 view a copy of the
input already beats a sparse render by several dB, so gain over the render alone proves nothing there).
Everything is scored at the generator's resolution, GT and renders resized as the diffusion data loader does.
"""

from __future__ import annotations

import csv
import io
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import tyro
from jaxtyping import Float
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.camera_utils import to_homogeneous
from itergen_ns.diffusion.clip_metrics import PSNR_CAP, frame_metrics
from itergen_ns.diffusion.data import _to_float_images, warp_composites
from itergen_ns.itergen.generator import GeneratorConfig
from itergen_ns.io import atomic_write_text
from itergen_ns.snapshots.format import SnapshotShard, list_shards, load_shard
from itergen_ns.eval.gain_predictors import clip_windows, conditioning_views, mean_frame, nearest_inputs
from itergen_ns.eval.gain_summary import METRICS, PREDICTORS, _csv_rows, print_tables, summarize


def _load_shards(root: Path) -> List[SnapshotShard]:
    shards = []
    for path in list_shards(root):
        try:
            shards.append(load_shard(path))
        except (ValueError, OSError) as err:
            warnings.warn(f"skipping corrupt snapshot shard {path}: {err}")
    if not shards:
        raise ValueError(f"{root}: no usable snapshot shards (export some with `itergen export-snapshots`)")
    return shards


def _scene(shard: SnapshotShard) -> str:
    return str(shard.meta.get("scene", shard.path.name))


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


# -------------------------------------------------------------------------------------------------- CLI
@tyro.conf.configure(tyro.conf.FlagConversionOff)  # booleans as `--flag True`, as with ns-train's GeneratorConfig
@dataclass
class GainConfig:
    """Generator gain of a diffusion checkpoint on held-out snapshot clips, beside trivial predictors."""

    data: Path
    """Snapshot root of held-out scenes (`itergen export-snapshots` output; scenes the model was not trained on)."""
    checkpoint: Optional[Path] = None
    """Model directory from `itergen train-diffusion` (same as --generator.checkpoint)."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """How the model is loaded and sampled; defaults are itergen's (override e.g. --generator.num-inference-steps)."""
    train_data: Optional[Path] = None
    """Training snapshot root: the mean-frame predictor averages its GT frames (default: the evaluated root's input views)."""
    output_dir: Path = Path("outputs/gain")
    """Where gain.json, gain.csv and gain_grid.png are written."""
    max_clips_per_shard: Optional[int] = None
    """Evenly spaced subset of each shard's clips (default: all clips tiling the trajectory)."""
    snapshot_steps: Optional[Tuple[int, ...]] = None
    """Only these snapshot steps (default: every step in the shards)."""
    seeds: Tuple[int, ...] = (0,)
    """Sampler seeds; sample metrics are averaged over them per frame."""
    num_frames: Optional[int] = None
    """Frames per clip (default: the generator's)."""
    nearest_by: Literal["center", "angle"] = "center"
    """Nearest-input predictor: camera-centre distance or viewing-direction angle."""
    num_grid_clips: int = 4
    """Clips shown in gain_grid.png (render | sample | nearest input | GT, last snapshot step, first seed)."""
    keep_frames: bool = True
    """Write per-frame metrics into gain.json (for paired statistics)."""
    device: str = "auto"
    """auto: CUDA when available, else CPU."""
    cpu_threads: int = 1
    """torch threads on CPU (0: torch's default); the tiny model gains nothing from more."""

    def main(self) -> Dict[str, Any]:
        return run_gain(self)


def _generator_config(cfg: GainConfig) -> GeneratorConfig:
    gen = dataclasses.replace(cfg.generator)
    if cfg.checkpoint is not None:
        if gen.checkpoint is not None and Path(gen.checkpoint) != Path(cfg.checkpoint):
            raise ValueError(f"--checkpoint {cfg.checkpoint} and --generator.checkpoint {gen.checkpoint} differ")
        gen.checkpoint = cfg.checkpoint
    if gen.checkpoint is None and not gen.random_init:
        raise ValueError(
            "itergen gain needs a model: --checkpoint DIR (from `itergen train-diffusion`), or "
            "--generator.random-init True for the untrained tiny model"
        )
    return gen


def run_gain(cfg: GainConfig) -> Dict[str, Any]:
    """Score every (shard, snapshot step, clip, seed); print the tables and write gain.json/.csv/_grid.png."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if cfg.cpu_threads > 0 and torch.device(device).type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    gen_cfg = _generator_config(cfg)
    generator = gen_cfg.setup(device=device)
    model = generator.pipe.model
    hw = (generator.height, generator.width)
    clip_len = cfg.num_frames or generator.num_frames
    if not cfg.seeds:
        raise ValueError("--seeds needs at least one seed")

    shards = _load_shards(cfg.data)
    usable = [s for s in shards if len(s.input_indices) > 0 and len(s.steps) > 0]
    for s in shards:
        if not any(s is u for u in usable):
            warnings.warn(f"skipping snapshot shard {s.path}: no input views or no snapshot steps")
    overlap: List[str] = []
    if cfg.train_data is not None:
        train_shards = _load_shards(cfg.train_data)
        overlap = sorted({_scene(s) for s in usable} & {_scene(s) for s in train_shards})
        if overlap:
            CONSOLE.print(f"[bold red]gain: scenes in both --data and --train-data (not held out): {overlap}")
        mean_img = mean_frame(train_shards, hw)
        mean_source = f"mean of all GT frames of the training root {cfg.train_data}"
    else:
        mean_img = mean_frame(usable, hw, inputs_only=True)
        mean_source = f"mean of the input views of every shard of {cfg.data} (no --train-data given)"

    plan = []  # (shard, step positions, clips)
    for shard in usable:
        steps = list(range(len(shard.steps)))
        if cfg.snapshot_steps is not None:
            steps = [i for i, s in enumerate(shard.steps) if int(s) in set(cfg.snapshot_steps)]
        if steps:
            plan.append((shard, steps, clip_windows(shard.num_frames, clip_len, cfg.max_clips_per_shard)))
    if not plan:
        raise ValueError(f"{cfg.data}: no shard has the requested snapshot steps {cfg.snapshot_steps}")
    total = sum(len(steps) * len(clips) for _, steps, clips in plan) * len(cfg.seeds)
    grid_keys = _grid_clips([(s.path.name, len(c)) for s, _, c in plan], cfg.num_grid_clips)

    frames: List[Dict[str, Any]] = []
    grids: List[np.ndarray] = []
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    clip_counter = 0
    with Progress(*columns, console=CONSOLE) as progress:
        task = progress.add_task("generator gain", total=total)
        for shard, step_positions, clips in plan:
            all_inputs = set(int(i) for i in shard.input_indices)
            views = conditioning_views(shard.input_indices, generator.max_input_views)
            input_images = _to_float_images(shard.images[views], hw)
            input_c2w = np.asarray(shard.c2w[views], np.float32)
            input_poses = to_homogeneous(torch.from_numpy(np.asarray(input_c2w, np.float32)))
            scored: set = set()
            for ci, window in enumerate(clips):
                clip_counter += 1
                keep = np.array([int(f) not in all_inputs and int(f) not in scored for f in window])
                scored.update(int(f) for f in window)
                gt = _to_float_images(shard.images[window], hw)
                target_c2w = np.asarray(shard.c2w[window], np.float32)
                nearest = nearest_inputs(target_c2w, input_c2w, cfg.nearest_by)
                extra = {}
                if getattr(generator, "needs_intrinsics", False):  # Plücker maps: intrinsics in pixels of hw
                    src_h, src_w = shard.images.shape[1:3]
                    scale = np.array([hw[1] / src_w, hw[0] / src_h] * 2, np.float32)
                    extra["target_intrinsics"] = torch.from_numpy(
                        np.asarray(shard.intrinsics[window], np.float32) * scale
                    )
                ae = model.decode_latents(model.encode_latents(gt.to(model.device))[None])[0].float().cpu()
                fixed = {
                    "mean_frame": frame_metrics(mean_img.expand_as(gt), gt),
                    "nearest_input": frame_metrics(input_images[nearest], gt),
                    "first_input": frame_metrics(input_images[:1].expand_as(gt), gt),
                    "autoencoder": frame_metrics(ae, gt),
                }
                for si in step_positions:
                    step = int(shard.steps[si])
                    renders = _to_float_images(shard.renders[si, window], hw)
                    warped = renders if shard.depths is None else warp_composites(shard, si, window, hw, views)
                    if shard.depths is not None:
                        extra["warped_inputs"] = warped
                    per = {"render": frame_metrics(renders, gt), "warped_input": frame_metrics(warped, gt), **fixed}
                    seed_metrics = []
                    for k, seed in enumerate(cfg.seeds):
                        progress.update(task, description=f"{shard.path.name} step {step} clip {ci + 1}/{len(clips)}")
                        sample = (
                            generator.sample(
                                renders,
                                input_images,
                                input_poses,
                                to_homogeneous(torch.from_numpy(np.asarray(target_c2w, np.float32))),
                                seed=int(seed) * 100003 + clip_counter,
                                **extra,
                            )
                            .float()
                            .clamp(0, 1)
                            .cpu()
                        )
                        seed_metrics.append(frame_metrics(sample, gt))
                        if k == 0 and si == step_positions[-1] and (shard.path.name, ci) in grid_keys:
                            names = [f"render {shard.path.name} step {step}", "sample", "nearest input", "GT"]
                            grids.append(_labelled_grid([renders, sample, input_images[nearest], gt], names, hw))
                        progress.advance(task)
                    per["sample"] = {m: np.mean([s[m] for s in seed_metrics], axis=0) for m in METRICS}
                    for j in np.flatnonzero(keep):
                        frames.append(
                            {
                                "shard": shard.path.name,
                                "scene": _scene(shard),
                                "step": step,
                                "views": int(len(views)),
                                "clip": ci,
                                "frame": int(window[j]),
                                **{m: {p: float(per[p][m][j]) for p in PREDICTORS} for m in METRICS},
                            }
                        )

    groups = summarize(frames)
    result = {
        "data": str(cfg.data),
        "train_data": None if cfg.train_data is None else str(cfg.train_data),
        "checkpoint": None if gen_cfg.checkpoint is None else str(gen_cfg.checkpoint),
        "generator": _jsonable(gen_cfg),
        "sampling": _jsonable(getattr(generator, "sampling", None)),
        "resolution": list(hw),
        "num_frames": clip_len,
        "seeds": list(cfg.seeds),
        "psnr_cap": PSNR_CAP,
        "mean_frame_source": mean_source,
        "nearest_by": cfg.nearest_by,
        "scenes": sorted({_scene(s) for s, _, _ in plan}),
        "scene_overlap_with_train": overlap,
        "predictors": list(PREDICTORS),
        "grid_rows": ["render", "sample", "nearest_input", "gt"],
        "groups": groups,
    }
    if cfg.keep_frames:
        result["frames"] = frames
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "gain.json", json.dumps(result, indent=2))  # never a half-written result
    header, rows = _csv_rows(groups)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(out / "gain.csv", buf.getvalue())
    if grids:
        import imageio.v2 as imageio

        width = max(g.shape[1] for g in grids)
        gap = np.full((4, width, 3), 255, np.uint8)
        padded = [np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0)), constant_values=255) for g in grids]
        imageio.imwrite(out / "gain_grid.png", np.concatenate([x for g in padded for x in (g, gap)][:-1], axis=0))
    print_tables(groups, title=f"generator gain of {result['checkpoint'] or 'the random tiny model'} on {cfg.data}")
    CONSOLE.print(f"gain: {len(frames)} non-input frames; mean frame = {mean_source}; wrote {out}/gain.json, gain.csv")
    return result


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


def _grid_clips(shard_clips: List[Tuple[str, int]], n: int) -> set:
    """(shard, clip) pairs for the picture: the first clip of each shard in turn, then the next, up to ``n``."""
    picked: List[Tuple[str, int]] = []
    depth = 0
    while len(picked) < n and any(depth < c for _, c in shard_clips):
        picked += [(name, depth) for name, c in shard_clips if depth < c][: n - len(picked)]
        depth += 1
    return set(picked)


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tyro.cli(GainConfig).main()


if __name__ == "__main__":
    main()
