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
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import tyro
from jaxtyping import Float, Int
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.camera_utils import to_homogeneous
from itergen_ns.diffusion.clip_metrics import PSNR_CAP, frame_metrics
from itergen_ns.diffusion.data import _to_float_images, warp_composites
from itergen_ns.itergen.generator import GeneratorConfig
from itergen_ns.io import atomic_write_text
from itergen_ns.snapshots.format import SnapshotShard, list_shards, load_shard

PREDICTORS = ("render", "sample", "mean_frame", "nearest_input", "first_input", "autoencoder", "warped_input")
TRIVIAL = ("mean_frame", "nearest_input", "first_input")
METRICS = ("psnr", "ssim")


# ----------------------------------------------------------------------------------- clips and predictors
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


def conditioning_views(input_indices: Sequence[int], max_views: int) -> np.ndarray:
    """The run's input views, or an evenly spaced subset of ``max_views`` when the model takes fewer."""
    views = np.asarray(input_indices, dtype=np.int64)
    if len(views) <= max_views:
        return views
    return views[np.round(np.linspace(0, len(views) - 1, max_views)).astype(int)]


def nearest_inputs(
    target_c2w: Float[np.ndarray, "G 3 4"],
    input_c2w: Float[np.ndarray, "C 3 4"],
    by: Literal["center", "angle"] = "center",
) -> Int[np.ndarray, "G"]:
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


# ------------------------------------------------------------------------------------------- aggregation
def summarize(frames: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean metrics per (step, views) group, per step, per view count and overall ("all"), with gain and margins.

    PSNR is averaged in dB over frames (as nerfstudio and the paper do). ``gain_*`` = sample − render;
    ``margin_*`` = sample − the group's best trivial predictor (named in ``best_trivial_*``);
    ``margin_best_*`` = sample − the best of the render and the trivial predictors.
    """
    if not frames:
        return []
    steps = sorted({f["step"] for f in frames})
    views = sorted({f["views"] for f in frames})
    keys = [(s, v) for s in steps for v in views] + [(s, "all") for s in steps]
    keys += [("all", v) for v in views] + [("all", "all")]
    groups = []
    for step, nv in keys:
        sel = [f for f in frames if step in ("all", f["step"]) and nv in ("all", f["views"])]
        if not sel:
            continue
        row: Dict[str, Any] = {"step": step, "views": nv, "frames": len(sel)}
        for metric in METRICS:
            means = {p: float(np.mean([f[metric][p] for f in sel])) for p in PREDICTORS}
            row[metric] = means
            best = max(TRIVIAL, key=lambda p: means[p])
            row[f"gain_{metric}"] = means["sample"] - means["render"]
            row[f"best_trivial_{metric}"] = best
            row[f"margin_{metric}"] = means["sample"] - means[best]
            row[f"margin_best_{metric}"] = means["sample"] - max(means[best], means["render"])
        groups.append(row)
    return groups


def _csv_rows(groups: List[Dict[str, Any]]) -> Tuple[List[str], List[List[Any]]]:
    header = ["step", "views", "frames"]
    header += [f"{m}_{p}" for m in METRICS for p in PREDICTORS]
    header += [f"{k}_{m}" for m in METRICS for k in ("gain", "best_trivial", "margin", "margin_best")]
    rows = []
    for g in groups:
        row = [g["step"], g["views"], g["frames"]]
        row += [g[m][p] for m in METRICS for p in PREDICTORS]
        row += [g[f"{k}_{m}"] for m in METRICS for k in ("gain", "best_trivial", "margin", "margin_best")]
        rows.append(row)
    return header, rows


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
    from itergen_ns.eval.images import label_image as _label

    scale = max(1, 128 // hw[0])
    grid = clip_grid(rows, scale=scale).copy()
    h, w = hw[0] * scale, hw[1] * scale
    for r, name in enumerate(names):
        grid[r * h : (r + 1) * h, :w] = _label(np.ascontiguousarray(grid[r * h : (r + 1) * h, :w]), name)
    return grid


def _grid_clips(shard_clips: List[Tuple[str, int]], n: int) -> set:
    """(shard, clip) pairs for the picture: the first clip of each shard in turn, then the next, up to ``n``."""
    picked: List[Tuple[str, int]] = []
    depth = 0
    while len(picked) < n and any(depth < c for _, c in shard_clips):
        picked += [(name, depth) for name, c in shard_clips if depth < c][: n - len(picked)]
        depth += 1
    return set(picked)


def print_tables(groups: List[Dict[str, Any]], title: str = "generator gain") -> None:
    """One rich table per metric: each predictor's mean, the gain over the render and the margin over the best
    trivial predictor (named in "vs"); subtotal rows that repeat a single step or view count are left out."""
    short = {"mean_frame": "mean", "nearest_input": "nearest", "first_input": "first", "autoencoder": "AE",
             "warped_input": "warp"}  # fmt: skip
    num_steps = len({g["step"] for g in groups} - {"all"})
    num_views = len({g["views"] for g in groups} - {"all"})
    shown = [
        g
        for g in groups
        if (g["step"] == "all" and g["views"] == "all")
        or (g["step"] != "all" and (g["views"] != "all" or num_views > 1))
        or (g["step"] == "all" and num_steps > 1)
    ]
    for metric, fmt in (("psnr", "{:.2f}"), ("ssim", "{:.3f}")):
        table = Table(title=f"{title}: {metric.upper()}" + (" (dB)" if metric == "psnr" else ""))
        for col in ("step", "views", "frames", "render", "sample", "gain", *short.values(), "margin", "vs"):
            table.add_column(col, justify="left" if col == "vs" else "right")
        for g in shown:
            m = g[metric]
            table.add_row(
                str(g["step"]),
                str(g["views"]),
                str(g["frames"]),
                fmt.format(m["render"]),
                fmt.format(m["sample"]),
                _signed(fmt, g[f"gain_{metric}"]),
                *[fmt.format(m[p]) for p in short],
                _signed(fmt, g[f"margin_{metric}"]),
                short[g[f"best_trivial_{metric}"]],
                style="bold" if g["step"] == "all" and g["views"] == "all" else None,
            )
        CONSOLE.print(table)
    CONSOLE.print(
        "gain = sample - render; margin = sample - best trivial predictor (mean training frame, nearest or first "
        "input view); AE = ground truth through the model's autoencoder (ceiling); warp = the render with the nearest "
        "input warped in through its depth; non-input frames only"
    )


def _signed(fmt: str, value: float) -> str:
    text = fmt.format(value)
    if math.isfinite(value) and value > 0:
        text = "+" + text
    return f"[green]{text}[/green]" if value > 0 else f"[red]{text}[/red]"


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tyro.cli(GainConfig).main()


if __name__ == "__main__":
    main()
