"""`itergen demo`: the whole project on the embedded procedural category, offline on a CPU (README, "Demo").

Stages, each resumable (a finished stage leaves ``.stages/<name>.json`` and is skipped on a rerun; the
exporter, the diffusion trainer and the eval harness also resume inside a stage):

1. scenes     procedural hydrant-like objects (collection seed 0; the held-out ones are scored)
2. generator  only with ``--from-scratch``: rebuild the shipped TAEF2 generator with its recipe
              (:mod:`itergen_ns.eval.generator_recipe`: its own 30 training scenes, snapshots, training);
              otherwise the checkpoint shipped in ``itergen_ns/weights/generator`` is used
3. eval       itergen vs. the splatfacto baseline (and the one-shot ablation) on held-out scenes
              from 1 and 6 views -> report.md, results.json/csv, image grids, orbit videos
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.scenes import BENCH_IMAGE_SIZE, BENCH_NUM_FRAMES
from itergen_ns.io import atomic_write_text


@dataclass
class DemoConfig:
    """Run generate -> export -> train diffusion -> itergen vs. baseline -> report, all on CPU."""

    output_dir: Path = Path("demo_output")
    seed: int = 0
    num_train_scenes: int = 6
    num_heldout_scenes: int = 2
    num_frames: Tuple[int, int] = BENCH_NUM_FRAMES
    image_size: int = BENCH_IMAGE_SIZE[0]
    export_steps: int = 300
    export_every: int = 50
    diffusion_steps: int = 600
    eval_steps: int = 400
    views: Tuple[int, ...] = (1, 6)
    methods: Tuple[str, ...] = ("itergen-splatfacto", "itergen", "itergen-one-shot")
    samples: int = 1
    init_num_points: int = 3000
    """Initial Gaussians per run (kept small so CPU runs stay fast)."""
    generate_every: int = 50
    from_scratch: bool = False
    """Rebuild the generator with its recipe (GeneratorRecipe: scenes, snapshots, training; about an hour on 2
    cores) instead of using the shipped checkpoint."""
    generator_checkpoint: Optional[Path] = None
    """Use this trained model (default: the shipped one, or the rebuilt one with --from-scratch)."""
    overrides: Dict[str, str] = field(default_factory=dict)
    """Extra overrides for every 3D run (dotted config path -> value, parsed as YAML)."""

    stage_label = "demo"  # class attribute (not a CLI option): prefix of the stage messages

    @property
    def scenes_dir(self) -> Path:
        return self.output_dir / "scenes"

    def run_stage(self, name: str, fn: Callable[[], Dict]) -> Dict:
        marker = self.output_dir / ".stages" / f"{name}.json"
        if marker.exists():
            CONSOLE.print(f"[bold green]{self.stage_label}: stage '{name}' already done, skipping ({marker})")
            return json.loads(marker.read_text())
        CONSOLE.rule(f"{self.stage_label}: {name}")
        start = time.time()
        info = fn() or {}
        info["seconds"] = round(time.time() - start, 1)
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps(info, indent=2))
        CONSOLE.print(f"[bold green]{self.stage_label}: stage '{name}' done in {info['seconds']} s")
        return info

    def common_overrides(self) -> Dict[str, str]:
        out = {"pipeline.datamanager.init_num_points": str(self.init_num_points)}
        out.update(self.overrides)
        return out

    def stage_scenes(self) -> Dict:
        from itergen_ns.data.scenes import make_scenes

        make_scenes(
            self.scenes_dir,
            num_scenes=self.num_train_scenes + self.num_heldout_scenes,
            seed=self.seed,
            num_frames=self.num_frames,
            resolution=self.image_size,
            num_heldout=self.num_heldout_scenes,
        )
        return {"scenes": str(self.scenes_dir)}

    def train_scene_dirs(self):
        from itergen_ns.data.scenes import load_scene_index

        index = load_scene_index(self.scenes_dir)
        return tuple(Path(e["path"]) for e in index["scenes"] if e.get("split") == "train")

    def stage_snapshots(self) -> Dict:
        from itergen_ns.snapshots.exporter import ExportSnapshotsConfig

        config = ExportSnapshotsConfig(
            data=self.train_scene_dirs(),
            out=self.output_dir / "snapshots",
            every=self.export_every,
            max_steps=self.export_steps,
            seed=self.seed,
            overrides=self.common_overrides(),
        )
        if config.main() != 0:
            raise RuntimeError("snapshot export failed for some scenes (see above)")
        return {"snapshots": str(config.out)}

    def stage_diffusion(self) -> Dict:
        return self.train_generator(self.output_dir / "diffusion")

    def train_generator(self, out: Path, render_noise: Optional[float] = None) -> Dict:
        """Train the tiny generator on this run's snapshots into ``out`` (resuming from its latest checkpoint);
        ``render_noise`` overrides the conditioning-noise std (0: the no-render-noise ablation's model)."""
        from itergen_ns.diffusion.checkpointing import resolve_checkpoint
        from itergen_ns.diffusion.train import TrainDiffusionConfig, train

        resume = None
        try:
            resolve_checkpoint(out, "latest")
            resume = "latest"
        except FileNotFoundError:
            pass
        config = TrainDiffusionConfig(
            data=self.output_dir / "snapshots",
            output_dir=out,
            model="tiny",
            max_steps=self.diffusion_steps,
            checkpoint_every=max(50, self.diffusion_steps // 4),
            validate_every=self.diffusion_steps,
            lr_warmup_steps=min(100, self.diffusion_steps // 10),
            seed=self.seed,
            resume=resume,
        )
        if render_noise is not None:
            config.sampling = dataclasses.replace(config.sampling, render_noise=float(render_noise))
        train(config)
        return {"checkpoint": str(out / "latest")}

    def stage_generator(self) -> Dict:
        from itergen_ns.eval.generator_recipe import GeneratorRecipe

        return {"checkpoint": str(GeneratorRecipe().build(self.output_dir / "generator"))}

    def demo_checkpoint(self) -> Path:
        """The model the eval stage uses: explicit, rebuilt (--from-scratch) or shipped."""
        from itergen_ns.diffusion import presets

        if self.generator_checkpoint is not None:
            return Path(self.generator_checkpoint)
        if self.from_scratch:
            return Path(self.run_stage("generator", self.stage_generator)["checkpoint"])
        shipped = presets.shipped_generator()
        if shipped is None:
            raise FileNotFoundError(
                f"{presets.SHIPPED_GENERATOR_DIR}: no shipped generator in this checkout; run `itergen demo --from-scratch`"
            )
        return shipped

    def stage_eval(self) -> Dict:
        from itergen_ns.eval.harness import EvalConfig

        config = EvalConfig(
            data=(self.scenes_dir,),
            methods=self.methods,
            views=self.views,
            samples=self.samples,
            steps=self.eval_steps,
            generator_checkpoint=self.demo_checkpoint(),
            output_dir=self.output_dir / "report",
            overrides=self.common_overrides(),
            method_overrides={"itergen:pipeline.generation.generate_every": str(self.generate_every)},
        )
        config.main()
        return {"report": str(config.output_dir / "report.md")}

    def check(self) -> None:
        """Fail on inconsistent options or an unreadable --generator-checkpoint before anything is written."""
        from itergen_ns.errors import InputError

        if not self.views or min(self.views) < 1:
            raise InputError(f"--views {' '.join(map(str, self.views))}: expected input-view counts >= 1")
        if max(self.views) >= min(self.num_frames):
            raise InputError(
                f"--views {max(self.views)}: scenes have {min(self.num_frames)} frames or more (--num-frames "
                f"{' '.join(map(str, self.num_frames))}); expected fewer input views than frames"
            )
        if self.num_train_scenes < 1 or self.num_heldout_scenes < 1:
            raise InputError("--num-train-scenes and --num-heldout-scenes: expected >= 1 each")
        if self.generator_checkpoint is not None:
            from itergen_ns.diffusion.model import IterGenDiffusionModel

            try:
                IterGenDiffusionModel.from_pretrained(self.generator_checkpoint)
            except (OSError, ValueError) as err:
                raise InputError(
                    f"--generator-checkpoint {self.generator_checkpoint}: {' '.join(str(err).split())}"
                ) from err

    def main(self) -> int:
        start = time.time()
        self.check()
        if not self.from_scratch:
            self.demo_checkpoint()  # no model: fail before writing anything
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.run_stage("scenes", self.stage_scenes)
        self.demo_checkpoint()  # fails early without a model; with --from-scratch builds it
        self.run_stage("eval", self.stage_eval)
        CONSOLE.print(
            f"[bold]demo finished in {time.time() - start:.0f} s; report: {self.output_dir / 'report' / 'report.md'}"
        )
        return 0
