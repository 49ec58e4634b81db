"""One (scene, run) of an export: train splatfacto from C views, capture snapshots, write the run's shard.

Snapshots are taken before the optimiser step of iteration ``s`` (i.e. after exactly ``s`` steps) and once more
after training; rendering does not touch the random state, so snapshots never change the training run itself.
The shard is written through ``ShardWriter`` (atomic), and the run's nerfstudio folder is removed afterwards
unless ``--keep-runs``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, cast

import numpy as np

from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig

from itergen_ns.engine.runner import TrainSpec, apply_overrides, build_config, train
from itergen_ns.models.rendering import render_all_frames
from itergen_ns.snapshots.export_plan import RunPlan, plan_run, scene_key
from itergen_ns.snapshots.format import ShardMeta, ShardWriter, shard_exists
from itergen_ns.snapshots.scene_frames import (
    RenderLatentEncoder,
    SceneError,
    SceneFrames,
    input_indices,
    load_scene_frames,
)

if TYPE_CHECKING:
    from itergen_ns.snapshots.exporter import ExportSnapshotsConfig


def export_one(
    config: "ExportSnapshotsConfig", scene: Path, run: int, encoder: Optional[RenderLatentEncoder] = None
) -> Optional[Path]:
    """Train one run and write its shard (with ``encoder``: also render latents); None if it already exists."""
    plan = plan_run(config, scene, run)
    if shard_exists(config.out, plan.name):
        return None
    run_dir = Path(config.work_dir or config.out / "runs")
    trainer_config = run_config(config, plan, config.parser_for(scene), run_dir)
    frames = _load_frames(plan, trainer_config)
    start = time.time()
    try:
        with ShardWriter(config.out, plan.name) as writer:
            return _write_shard(writer, config, plan, trainer_config, frames, encoder, start)
    except FileExistsError:
        if shard_exists(config.out, plan.name):  # an overlapping export into the same root finished it first
            return None
        raise
    finally:
        if not config.keep_runs:
            shutil.rmtree(run_dir / plan.name, ignore_errors=True)


def run_config(
    config: "ExportSnapshotsConfig", plan: RunPlan, parser: DataParserConfig, run_dir: Path
) -> TrainerConfig:
    """The nerfstudio config of one run: C input views of the scene, seeded, overrides applied last."""
    spec = TrainSpec(
        method=config.method,
        data=plan.scene,
        output_dir=run_dir,
        num_input_views=plan.num_views,
        input_view_seed=plan.seed,
        steps=config.max_steps,
        seed=plan.seed,
        experiment_name=plan.name,
        vis="tensorboard",
    )
    trainer_config = build_config(spec)
    manager: Any = trainer_config.pipeline.datamanager
    manager.dataparser = parser
    if hasattr(manager, "init_seed"):
        manager.init_seed = plan.seed
    apply_overrides(trainer_config, cast(Dict[str, object], config.overrides))
    manager = trainer_config.pipeline.datamanager  # the split the datamanager will set, so load_scene_frames sees it
    manager.dataparser.num_input_views = manager.num_input_views
    manager.dataparser.input_view_seed = manager.input_view_seed
    manager.dataparser.input_views = manager.input_views
    return trainer_config


def _load_frames(plan: RunPlan, trainer_config: TrainerConfig) -> SceneFrames:
    """Every frame of the scene as the run's parser (overrides in) sees it; SceneError for a bad or too small scene."""
    manager: Any = trainer_config.pipeline.datamanager
    try:
        frames = load_scene_frames(plan.scene, manager.dataparser)
    except (ValueError, OSError) as err:  # bad files of this scene: named in the message, the others go on
        raise SceneError(" ".join(str(err).split("\n"))) from err
    if frames.num_frames < plan.num_views + 1:
        raise SceneError(
            f"scene {plan.scene}: {frames.num_frames} frames, need at least {plan.num_views + 1} for "
            f"{plan.num_views} input view(s) plus one other frame"
        )
    return frames


def _write_shard(
    writer: ShardWriter,
    config: "ExportSnapshotsConfig",
    plan: RunPlan,
    trainer_config: TrainerConfig,
    frames: SceneFrames,
    encoder: Optional[RenderLatentEncoder],
    start: float,
) -> Path:
    """Store the frames, train while filling the memory-mapped renders and depths, add latents, commit."""
    steps = plan.steps
    writer.save("images", frames.images)
    writer.save("c2w", frames.c2w)
    writer.save("intrinsics", frames.intrinsics)
    writer.save("steps", np.asarray(steps, dtype=np.int64))
    if frames.masks is not None:
        writer.save("masks", frames.masks)
    renders = writer.open("renders", (len(steps), frames.num_frames, *frames.size, 3), np.uint8)
    depths = writer.open("depths", (len(steps), frames.num_frames, *frames.size), np.float16)
    model, inputs = train_with_snapshots(trainer_config, frames, renders, depths, plan, config.every, config.max_steps)
    writer.save("input_indices", np.asarray(inputs, dtype=np.int64))
    renders.flush()
    depths.flush()
    del depths
    if encoder is not None:
        latents = writer.open("render_latents", (len(steps), frames.num_frames, *encoder.shape), np.float16)
        for k in range(len(steps)):
            latents[k] = encoder(renders[k])
        latents.flush()
        del latents
    del renders
    return writer.commit(_shard_meta(config, plan, frames, inputs, int(model.num_points), encoder, start))


def train_with_snapshots(
    trainer_config: TrainerConfig,
    frames: SceneFrames,
    renders: np.ndarray,
    depths: np.ndarray,
    plan: RunPlan,
    every: int,
    max_steps: int,
) -> Tuple[Any, List[int]]:
    """Run the training with snapshot callbacks (renders and surface depths of every frame at every snapshot
    step); returns (model, input indices)."""
    state: Dict[str, Any] = {}

    def on_setup(trainer) -> None:
        state["model"] = trainer.pipeline.model
        state["inputs"] = input_indices(frames, trainer.pipeline.datamanager)
        if len(state["inputs"]) != plan.num_views:
            raise RuntimeError(f"scene {frames.scene}: asked for {plan.num_views} input views, the run has "
                               f"{len(state['inputs'])}")  # fmt: skip

    def snapshot(step: int) -> None:
        k = plan.steps.index(step)
        render_all_frames(state["model"], frames.cameras, renders[k], depth_out=depths[k])

    callback = TrainingCallback(
        [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], snapshot, update_every_num_iters=every
    )
    train(trainer_config, [callback], on_setup=on_setup)
    model = state["model"]
    model.step = max_steps  # the state after max_steps steps (SH degree schedule as during training)
    render_all_frames(model, frames.cameras, renders[-1], depth_out=depths[-1])
    return model, list(state["inputs"])


def _shard_meta(
    config: "ExportSnapshotsConfig",
    plan: RunPlan,
    frames: SceneFrames,
    inputs: List[int],
    num_gaussians: int,
    encoder: Optional[RenderLatentEncoder],
    start: float,
) -> ShardMeta:
    """``meta.json`` of the run's shard (``seconds``: since ``start``, the run's first write)."""
    return ShardMeta(
        scene=scene_key(plan.scene),
        source=str(plan.scene),
        run=plan.run,
        seed=plan.seed,
        method=config.method,
        num_frames=frames.num_frames,
        height=frames.size[0],
        width=frames.size[1],
        num_input_views=plan.num_views,
        input_indices=inputs,
        steps=plan.steps,
        max_steps=config.max_steps,
        every=config.every,
        num_gaussians=num_gaussians,
        frame_files=[_relative(p, plan.scene) for p in frames.filenames],
        has_masks=frames.masks is not None,
        render_latents=None
        if encoder is None
        else {"checkpoint": str(encoder.checkpoint), "shape": list(encoder.shape), "dtype": "float16"},
        seconds=round(time.time() - start, 2),
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else as given."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)
