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
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.diffusion.clip_metrics import PSNR_CAP
from itergen_ns.itergen.generator import Generator, GeneratorConfig
from itergen_ns.io import atomic_write_text
from itergen_ns.snapshots.format import SnapshotShard, list_shards, load_shard
from itergen_ns.eval.gain_measure import ClipPlan, GainMeasurement, shard_scene
from itergen_ns.eval.gain_predictors import clip_windows, mean_frame
from itergen_ns.eval.gain_summary import PREDICTORS, csv_rows, print_tables, summarize


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
    gen_cfg, generator = _setup_generator(cfg)
    hw = (generator.height, generator.width)
    clip_len = cfg.num_frames or generator.num_frames
    if not cfg.seeds:
        raise ValueError("--seeds needs at least one seed")
    usable = _usable_shards(cfg.data)
    mean_img, mean_source, overlap = _mean_frame_predictor(cfg, usable, hw)
    plan = _plan(cfg, usable, clip_len)
    measurement = GainMeasurement(generator, hw, mean_img, cfg.seeds, cfg.nearest_by)
    measurement.run(plan, cfg.num_grid_clips)
    groups = summarize(measurement.frames)
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
        "scenes": sorted({shard_scene(s) for s, _, _ in plan}),
        "scene_overlap_with_train": overlap,
        "predictors": list(PREDICTORS),
        "grid_rows": ["render", "sample", "nearest_input", "gt"],
        "groups": groups,
    }
    if cfg.keep_frames:
        result["frames"] = measurement.frames
    _write_outputs(Path(cfg.output_dir), result, groups, measurement.grids)
    print_tables(groups, title=f"generator gain of {result['checkpoint'] or 'the random tiny model'} on {cfg.data}")
    CONSOLE.print(
        f"gain: {len(measurement.frames)} non-input frames; mean frame = {mean_source}; "
        f"wrote {Path(cfg.output_dir)}/gain.json, gain.csv"
    )
    return result


# ------------------------------------------------------------------------------------------------- steps
def _setup_generator(cfg: GainConfig) -> Tuple[GeneratorConfig, Generator]:
    """The generator on its device, loaded exactly as itergen loads it (torch threads capped on CPU)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if cfg.cpu_threads > 0 and torch.device(device).type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    gen_cfg = _generator_config(cfg)
    return gen_cfg, gen_cfg.setup(device=device)


def _load_shards(root: Path) -> List[SnapshotShard]:
    """Every readable shard under ``root`` (a corrupt one is skipped with a warning); none is an error."""
    shards = []
    for path in list_shards(root):
        try:
            shards.append(load_shard(path))
        except (ValueError, OSError) as err:
            warnings.warn(f"skipping corrupt snapshot shard {path}: {err}")
    if not shards:
        raise ValueError(f"{root}: no usable snapshot shards (export some with `itergen export-snapshots`)")
    return shards


def _usable_shards(root: Path) -> List[SnapshotShard]:
    """The shards of ``root`` that can be scored: with input views and snapshot steps (others warned about)."""
    shards = _load_shards(root)
    usable = [s for s in shards if len(s.input_indices) > 0 and len(s.steps) > 0]
    for s in shards:
        if not any(s is u for u in usable):
            warnings.warn(f"skipping snapshot shard {s.path}: no input views or no snapshot steps")
    return usable


def _mean_frame_predictor(
    cfg: GainConfig, usable: Sequence[SnapshotShard], hw: Tuple[int, int]
) -> Tuple[Float[Tensor, "3 H W"], str, List[str]]:
    """The mean-frame predictor, where it comes from, and the evaluated scenes also in --train-data."""
    overlap: List[str] = []
    if cfg.train_data is not None:
        train_shards = _load_shards(cfg.train_data)
        overlap = sorted({shard_scene(s) for s in usable} & {shard_scene(s) for s in train_shards})
        if overlap:
            CONSOLE.print(f"[bold red]gain: scenes in both --data and --train-data (not held out): {overlap}")
        mean_img = mean_frame(train_shards, hw)
        mean_source = f"mean of all GT frames of the training root {cfg.train_data}"
    else:
        mean_img = mean_frame(usable, hw, inputs_only=True)
        mean_source = f"mean of the input views of every shard of {cfg.data} (no --train-data given)"
    return mean_img, mean_source, overlap


def _plan(cfg: GainConfig, usable: Sequence[SnapshotShard], clip_len: int) -> List[ClipPlan]:
    """Per shard: the positions of the requested snapshot steps and the clip windows; none is an error."""
    plan = []
    for shard in usable:
        steps = list(range(len(shard.steps)))
        if cfg.snapshot_steps is not None:
            steps = [i for i, s in enumerate(shard.steps) if int(s) in set(cfg.snapshot_steps)]
        if steps:
            plan.append((shard, steps, clip_windows(shard.num_frames, clip_len, cfg.max_clips_per_shard)))
    if not plan:
        raise ValueError(f"{cfg.data}: no shard has the requested snapshot steps {cfg.snapshot_steps}")
    return plan


def _write_outputs(out: Path, result: Dict[str, Any], groups: List[Dict[str, Any]], grids: List[np.ndarray]) -> None:
    """gain.json and gain.csv (each written atomically, never half-written) and gain_grid.png when there are grids."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "gain.json", json.dumps(result, indent=2))
    header, rows = csv_rows(groups)
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


def _jsonable(obj: Any) -> Any:
    """``obj`` as JSON values (dataclasses as dicts of their public fields), for the settings in gain.json."""
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


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tyro.cli(GainConfig).main()


if __name__ == "__main__":
    main()
