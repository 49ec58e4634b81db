"""`itergen export-snapshots`: splatfacto runs from few views, rendered along the whole trajectory every N steps.

For each (scene, run): draw C input views (C from a clipped exponential favouring 1-3), train the project's
splatfacto from those views only through nerfstudio's Trainer, and after 0, every, 2*every, ... max_steps
optimisation steps render the model at every frame of the scene. The renders, ground truth, cameras and the
input indices form one shard (format.py). Shards are written atomically and finished ones are skipped, so an
interrupted export resumes losing at most the shard in flight; ``--shard i/n`` splits scenes across processes.

Snapshots are taken before the optimiser step of iteration ``s`` (i.e. after exactly ``s`` steps) and once more
after training; rendering does not touch the random state, so snapshots never change the training run itself.

Determinism: a run's seed derives from ``--seed`` and its shard name only, so ``--shard i/n`` and reruns give the
same C, input views and seeds. On CPU the shard is byte-identical across runs at a fixed torch thread count
(float reductions depend on it: 1 vs 2 threads differ by a few levels out of 255 after 60 steps).
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig, is_co3d_sequence
from itergen_ns.data.discovery import discover_scenes
from itergen_ns.data.sparse_dataparser import SparseNerfstudioDataParserConfig
from itergen_ns.snapshots.format import (
    ShardMeta,
    ShardWriter,
    ensure_format,
    remove_stale_temporaries,
    shard_exists,
    summarize,
)
from itergen_ns.models.rendering import render_all_frames
from itergen_ns.engine.runner import TrainSpec, apply_overrides, build_config, train
from itergen_ns.snapshots.scene_frames import (
    RenderLatentEncoder,
    SceneError,
    SceneFrames,
    input_indices,
    load_scene_frames,
)


# ------------------------------------------------------------------------------------------------ shard names


def scene_key(scene: Path) -> str:
    """A shard-name-safe identifier of a scene: ``<collection or category>_<scene or sequence>``."""
    scene = Path(scene).absolute()
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{scene.parent.name}_{scene.name}")


def shard_name(scene: Path, run: int) -> str:
    return f"{scene_key(scene)}__run{run:02d}"


def parse_shard_arg(shard: str) -> Tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard {shard!r}: expected i/n with integers, e.g. 0/4") from err
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {shard!r}: need n >= 1 and 0 <= i < n")
    return i, n


def split_for_shard(scenes: Sequence[Path], i: int, n: int) -> List[Path]:
    """Scenes i, i+n, i+2n, ...: the parts for i = 0..n-1 cover every scene exactly once."""
    return list(scenes[i::n])


# ------------------------------------------------------------------------------------------------ run settings


def draw_num_views(rng: np.random.Generator, scale: float, min_views: int = 1, max_views: int = 6) -> int:
    """C = 1 + floor(Exp(scale)), clipped to [min_views, max_views].

    With scale 1.5: P(C=1) = 1 - e^(-2/3) ~ 0.49, P(C=2) ~ 0.25, P(C=3) ~ 0.13, P(C>=4) ~ 0.14.
    """
    return int(np.clip(1 + math.floor(rng.exponential(scale)), min_views, max_views))


def snapshot_steps(max_steps: int, every: int) -> List[int]:
    """0, every, 2*every, ... below max_steps, then max_steps."""
    return list(range(0, max_steps, every)) + [max_steps]


def run_seed(seed: int, name: str) -> int:
    """Seed of one (scene, run): a function of the export seed and the shard name only (not of --shard i/n)."""
    return zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------ export


@dataclass
class ExportReport:
    """What one export call did, shard names per outcome."""

    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    """Already finished by an earlier (or another) export."""
    failed: Dict[str, str] = field(default_factory=dict)
    """Shard name -> error message (bad input; nothing of the shard was left behind)."""


@dataclass
class ExportSnapshotsConfig:
    """Export snapshot shards (docs/architecture.md, "Snapshots") for every scene under ``data``."""

    data: Tuple[Path, ...]
    """Scene folders or folders of scenes (procedural collection root, CO3D category folder)."""
    out: Path
    """Snapshot root to write (created; an existing one must hold the same format version)."""
    every: int = 100
    """Render the model along the trajectory after every this many optimisation steps."""
    max_steps: int = 1000
    """Steps per splatfacto run (the paper goes up to 30,000)."""
    runs_per_scene: int = 1
    """Independent runs per scene, each with its own C, input views and seed."""
    views_scale: float = 1.5
    """Scale of the exponential that draws C = 1 + floor(Exp(scale)) (favours 1-3 views)."""
    min_views: int = 1
    """C is clipped to [min_views, max_views]."""
    max_views: int = 6
    seed: int = 0
    """Export seed; each run's seed is derived from it and the run's shard name."""
    shard: str = "0/1"
    """i/n: this process exports scenes i, i+n, i+2n, ... (split across processes or machines)."""
    include_heldout: bool = False
    """Also export the scenes a procedural collection's scenes.json marks held-out (evaluation scenes)."""
    method: str = "itergen-splatfacto"
    """Registered nerfstudio method to train."""
    work_dir: Optional[Path] = None
    """Where the splatfacto runs write their nerfstudio outputs (default OUT/runs)."""
    keep_runs: bool = False
    """Keep each run's nerfstudio output folder (config, checkpoint, tensorboard) after its shard is written."""
    overrides: Dict[str, str] = field(default_factory=dict)
    """Dotted trainer-config paths and values, e.g. pipeline.model.sh_degree 1 (YAML values)."""
    latents_vae: Optional[Path] = None
    """An itergen diffusion checkpoint (save_pretrained folder): its VAE also stores every render as fp16
    ``render_latents`` at that model's resolution, so diffusion training skips encoding them."""
    nerfstudio: SparseNerfstudioDataParserConfig = field(default_factory=SparseNerfstudioDataParserConfig)
    """Parser settings for nerfstudio-format scenes (the split fields are set by the exporter)."""
    co3d: CO3DDataParserConfig = field(default_factory=CO3DDataParserConfig)
    """Parser settings for CO3D sequences. Default: the parser's framing (itergen_ns.data.framing: centred square
    crop resized to frame_size=256), the same framing itergen and ``itergen eval`` use; a shard holds one frame size."""

    def main(self) -> int:
        """Export this process's part; exit status 1 when some scene failed (the others are complete)."""
        report = self.export()
        for name, msg in report.failed.items():  # one line per failed shard on stderr (the others are complete)
            print(f"SceneError: shard {name}: {msg}", file=sys.stderr, flush=True)
        CONSOLE.print(
            f"{len(report.written)} shard(s) written, {len(report.skipped)} already finished, "
            f"{len(report.failed)} failed -> {self.out}"
        )
        return 1 if report.failed else 0

    def check(self) -> None:
        """Reject inconsistent settings before anything is trained."""
        if self.every < 1 or self.max_steps < 1 or self.runs_per_scene < 1:
            raise ValueError("--every, --max-steps and --runs-per-scene must be >= 1")
        if not 1 <= self.min_views <= self.max_views or self.views_scale <= 0:
            raise ValueError("need 1 <= --min-views <= --max-views and --views-scale > 0")
        if not self.data:
            raise ValueError("--data: give at least one scene or folder of scenes")

    def jobs(self) -> List[Tuple[Path, int]]:
        """(scene, run) pairs of this process's part, in export order."""
        i, n = parse_shard_arg(self.shard)
        scenes = discover_scenes(self.data, self.include_heldout)
        keys: Dict[str, Path] = {}
        for scene in scenes:
            other = keys.setdefault(scene_key(scene), scene)
            if other != scene:
                raise ValueError(f"scenes {other} and {scene} would share shard names ({scene_key(scene)}); rename one")
        return [(scene, run) for scene in split_for_shard(scenes, i, n) for run in range(self.runs_per_scene)]

    def export(self) -> ExportReport:
        """Write every missing shard of this process's part; bad scenes are reported and skipped."""
        self.check()
        jobs = self.jobs()  # bad --data fails here, before anything is written
        ensure_format(self.out)
        stale = remove_stale_temporaries(self.out, [shard_name(s, r) for s, r in jobs])
        if stale:
            CONSOLE.log(f"Removed {stale} unfinished shard(s) left by an interrupted export")
        pending = [job for job in jobs if not shard_exists(self.out, shard_name(*job))]
        if not self.keep_runs:  # a kill between a shard's commit and the removal of its run folder left it
            for job in set(jobs) - set(pending):
                shutil.rmtree(Path(self.work_dir or self.out / "runs") / shard_name(*job), ignore_errors=True)
        encoder = RenderLatentEncoder(self.latents_vae) if self.latents_vae is not None and pending else None
        report = ExportReport()
        columns = (TextColumn("[bold]export"), BarColumn(), TextColumn("{task.completed}/{task.total} shards"),
                   TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=CONSOLE) as progress:
            task = progress.add_task("export", total=len(jobs))
            for scene, run in jobs:
                name = shard_name(scene, run)
                try:
                    (report.written if self.export_one(scene, run, encoder) else report.skipped).append(name)
                except SceneError as err:
                    report.failed[name] = str(err)
                    CONSOLE.print(f"[bold red]Skipped {name}: {err}")
                progress.advance(task)
        return report

    def parser_for(self, scene: Path) -> DataParserConfig:
        """A copy of the parser template matching ``scene``'s kind, pointed at it."""
        parser = copy.deepcopy(self.co3d if is_co3d_sequence(scene) else self.nerfstudio)
        parser.data = Path(scene)
        return parser

    def export_one(self, scene: Path, run: int, encoder: Optional[RenderLatentEncoder] = None) -> Optional[Path]:
        """Train one run and write its shard (with ``encoder``: also render latents); None if it already exists."""
        name = shard_name(scene, run)
        if shard_exists(self.out, name):
            return None
        seed = run_seed(self.seed, name)
        num_views = draw_num_views(np.random.default_rng(seed), self.views_scale, self.min_views, self.max_views)
        run_dir = Path(self.work_dir or self.out / "runs")
        config = self.train_config(scene, name, self.parser_for(scene), num_views, seed, run_dir)
        try:
            frames = load_scene_frames(scene, config.pipeline.datamanager.dataparser)  # the run's parser, overrides in
        except (ValueError, OSError) as err:  # bad files of this scene: named in the message, the others go on
            raise SceneError(" ".join(str(err).split("\n"))) from err
        if frames.num_frames < num_views + 1:
            raise SceneError(
                f"scene {scene}: {frames.num_frames} frames, need at least {num_views + 1} for {num_views} input "
                "view(s) plus one other frame"
            )
        steps = snapshot_steps(self.max_steps, self.every)
        start = time.time()
        try:
            with ShardWriter(self.out, name) as writer:
                writer.save("images", frames.images)
                writer.save("c2w", frames.c2w)
                writer.save("intrinsics", frames.intrinsics)
                writer.save("steps", np.asarray(steps, dtype=np.int64))
                if frames.masks is not None:
                    writer.save("masks", frames.masks)
                renders = writer.open("renders", (len(steps), frames.num_frames, *frames.size, 3), np.uint8)
                depths = writer.open("depths", (len(steps), frames.num_frames, *frames.size), np.float16)
                model, inputs = self._train_and_render(config, frames, renders, depths, steps, num_views)
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
                meta = ShardMeta(
                    scene=scene_key(scene),
                    source=str(scene),
                    run=run,
                    seed=seed,
                    method=self.method,
                    num_frames=frames.num_frames,
                    height=frames.size[0],
                    width=frames.size[1],
                    num_input_views=num_views,
                    input_indices=inputs,
                    steps=steps,
                    max_steps=self.max_steps,
                    every=self.every,
                    num_gaussians=int(model.num_points),
                    frame_files=[_relative(p, scene) for p in frames.filenames],
                    has_masks=frames.masks is not None,
                    render_latents=None
                    if encoder is None
                    else {"checkpoint": str(encoder.checkpoint), "shape": list(encoder.shape), "dtype": "float16"},
                    seconds=round(time.time() - start, 2),
                    created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                )
                return writer.commit(meta)
        except FileExistsError:
            if shard_exists(self.out, name):  # an overlapping export into the same root finished it first
                return None
            raise
        finally:
            if not self.keep_runs:
                shutil.rmtree(run_dir / name, ignore_errors=True)

    def train_config(
        self, scene: Path, name: str, parser: DataParserConfig, num_views: int, seed: int, run_dir: Path
    ) -> TrainerConfig:
        """The nerfstudio config of one run: C input views of ``scene``, seeded, overrides applied last."""
        spec = TrainSpec(
            method=self.method,
            data=scene,
            output_dir=run_dir,
            num_input_views=num_views,
            input_view_seed=seed,
            steps=self.max_steps,
            seed=seed,
            experiment_name=name,
            vis="tensorboard",
        )
        config = build_config(spec)
        config.pipeline.datamanager.dataparser = parser
        if hasattr(config.pipeline.datamanager, "init_seed"):
            config.pipeline.datamanager.init_seed = seed
        apply_overrides(config, self.overrides)
        manager = config.pipeline.datamanager  # the split the datamanager will set, so load_scene_frames sees it too
        manager.dataparser.num_input_views = manager.num_input_views
        manager.dataparser.input_view_seed = manager.input_view_seed
        manager.dataparser.input_views = manager.input_views
        return config

    def _train_and_render(
        self, config, frames: SceneFrames, renders: np.ndarray, depths: np.ndarray, steps: List[int], num_views: int
    ):
        """Run the training with snapshot callbacks (renders and surface depths of every frame at every snapshot
        step); returns (model, input indices)."""
        state: Dict[str, object] = {}

        def on_setup(trainer) -> None:
            state["model"] = trainer.pipeline.model
            state["inputs"] = input_indices(frames, trainer.pipeline.datamanager)
            if len(state["inputs"]) != num_views:
                raise RuntimeError(f"scene {frames.scene}: asked for {num_views} input views, the run has "
                                   f"{len(state['inputs'])}")  # fmt: skip

        def snapshot(step: int) -> None:
            k = steps.index(step)
            render_all_frames(state["model"], frames.cameras, renders[k], depth_out=depths[k])

        callback = TrainingCallback(
            [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], snapshot, update_every_num_iters=self.every
        )
        train(config, [callback], on_setup=on_setup)
        model = state["model"]
        model.step = self.max_steps  # the state after max_steps steps (SH degree schedule as during training)
        render_all_frames(model, frames.cameras, renders[-1], depth_out=depths[-1])
        return model, list(state["inputs"])


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------ summary


@dataclass
class SummaryConfig:
    """List the shards of a snapshot root with scenes, snapshot counts and bytes."""

    root: Path
    """Snapshot root written by `itergen export-snapshots`."""

    def main(self) -> int:
        """Print the table; exit status 1 (one stderr line per shard) when some shard is corrupt."""
        with warnings.catch_warnings(record=True) as problems:
            warnings.simplefilter("always")
            rows = summarize(self.root)
        for problem in problems:
            print(f"{problem.category.__name__}: {problem.message}", file=sys.stderr, flush=True)
        table = Table(title=f"snapshots in {self.root}")
        for col in ("shard", "scene", "frames", "inputs", "snapshots", "MB", "seconds"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r.name, r.scene, str(r.frames), str(r.meta.get("num_input_views", "?")), str(r.snapshots),
                f"{r.bytes / 2**20:.2f}", str(r.meta.get("seconds", "?")),
            )  # fmt: skip
        CONSOLE.print(table)
        CONSOLE.print(
            f"{len(rows)} shards, {len({r.scene for r in rows})} scenes, {sum(r.snapshots for r in rows)} snapshots, "
            f"{sum(r.snapshots * r.frames for r in rows)} rendered frames, {sum(r.bytes for r in rows)} bytes"
        )
        return 1 if problems else 0
