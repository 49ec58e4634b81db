"""`itergen bench`: the proxy benchmark on the embedded procedural category (docs/protocol.md; README "Benchmarks").

Like `itergen demo`, but sized to tell: three disjoint scene sets drawn from one collection (train scenes feed the
snapshot exporter and the generator, validation scenes are for tuning defaults and are never scored here,
held-out scenes are evaluated), every method of the paper's table and its ablations, several samples per
(scene, method), and paired statistics against the baseline with 95% confidence intervals.

Stages, each resumable (``.stages/<name>.json`` marks a finished stage; inside the eval stage every finished run
leaves ``result.json`` and is skipped on a rerun, so a killed benchmark continues where it stopped):

1. scenes                    train | val | heldout scenes of one collection (scene i depends only on (seed, i))
2. snapshots                 splatfacto runs from few views of the train scenes
3. diffusion                 the tiny generator trained on those snapshots
4. diffusion-no-render-noise the same training (data, steps, seed) with ``--sampling.render-noise 0``
5. eval                      every (held-out scene, views, method, sample) run
6. report                    report.md, results.json/csv, far-side grids, orbit videos (always rewritten)

``--generator-checkpoint DIR`` skips stages 2-4 (and ``--generator-checkpoint-no-render-noise DIR`` gives the
ablation's model; without it that row is dropped with a message).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.eval.demo import DemoConfig

BENCH_METHODS: Tuple[str, ...] = (
    "itergen-splatfacto",
    "itergen",
    "itergen-one-shot",
    "itergen-random-poses",
    "itergen-no-render-noise",
)
BASELINE = "itergen-splatfacto"
SECONDS_PER_RUN = 20.0
"""Measured mean wall time of one 400-step eval run at the default settings on the 2-core machine (estimates)."""


@dataclass
class BenchProxyConfig(DemoConfig):
    """Proxy benchmark: all methods and ablations on >= 10 held-out procedural scenes, paired 95% CIs."""

    output_dir: Path = Path("runs/bench-proxy")
    seed: int = 0
    """Collection seed of the scenes; train, val and held-out scenes are disjoint indices of that collection."""
    num_train_scenes: int = 6
    """Scenes whose snapshots train the generator."""
    num_val_scenes: int = 4
    """Scenes for tuning defaults (`itergen eval --data <out>/scenes ...` on split 'val'); never scored here."""
    num_heldout_scenes: int = 10
    """Scenes the benchmark scores (fewer cannot show a 1 dB effect at the scene-to-scene spread seen)."""
    methods: Tuple[str, ...] = BENCH_METHODS
    samples: int = 2
    """Samples per (scene, stochastic method): best-of-S and the mean over samples are both reported."""
    generator_checkpoint: Optional[Path] = None
    """Use this trained model for the itergen rows and skip the snapshot/diffusion stages."""
    generator_checkpoint_no_render_noise: Optional[Path] = None
    """Model of the itergen-no-render-noise row (trained with --sampling.render-noise 0); with
    --generator-checkpoint and without this, that row is skipped."""
    method_overrides: Dict[str, str] = field(default_factory=dict)
    """Overrides for one base method only, e.g. 'itergen:pipeline.datamanager.p_input' = '0.5'."""
    report_scenes: int = 3
    """Held-out scenes shown in each grid (two frames each: the farthest from the inputs and one between)."""
    plan_only: bool = False
    """Print the run count and the time estimate, then stop."""
    eval_shard: str = "0/1"
    """i/n: this process runs every n-th eval run (n processes share the work; each 1 CPU thread is fastest on
    2 cores). Only 0/1 writes the report: rerun with it once the shards are done (finished runs are skipped)."""

    stage_label = "bench"

    # --- plan -----------------------------------------------------------------------------------------------------
    @property
    def num_scenes(self) -> int:
        return self.num_train_scenes + self.num_val_scenes + self.num_heldout_scenes

    def scene_plan(self) -> List[Dict]:
        """(name, seed, split) of every scene of the collection, without rendering anything."""
        from itergen_ns.data.procedural.scene import scene_seed
        from itergen_ns.data.scenes import split_of

        n = self.num_scenes
        return [
            {
                "name": f"scene_{i:04d}",
                "seed": scene_seed(self.seed, i),
                "split": split_of(i, n, self.num_val_scenes, self.num_heldout_scenes),
            }
            for i in range(n)
        ]

    def own_generators(self) -> bool:
        return self.generator_checkpoint is None

    def eval_methods(self) -> Tuple[str, ...]:
        if (
            "itergen-no-render-noise" in self.methods
            and not self.own_generators()
            and self.generator_checkpoint_no_render_noise is None
        ):
            CONSOLE.print(
                "[yellow]bench: skipping itergen-no-render-noise: --generator-checkpoint was given without "
                "--generator-checkpoint-no-render-noise (a model trained with --sampling.render-noise 0)"
            )
            return tuple(m for m in self.methods if m != "itergen-no-render-noise")
        return self.methods

    def num_runs(self, methods: Optional[Tuple[str, ...]] = None) -> int:
        from itergen_ns.eval.variants import VARIANTS

        methods = self.methods if methods is None else methods
        per_view = sum(self.samples if VARIANTS[m].stochastic else 1 for m in methods)
        return self.num_heldout_scenes * len(self.views) * per_view

    def estimate_seconds(self) -> float:
        """Rough wall time on the 2-core machine, scaled from the demo's measured stage times."""
        scale = self.eval_steps / 400.0
        seconds = 2.0 * self.num_scenes + self.num_runs() * SECONDS_PER_RUN * scale
        if self.own_generators():
            seconds += 20.0 * self.num_train_scenes * self.export_steps / 300.0  # snapshots: 121 s for 6 scenes
            trained = 2 if "itergen-no-render-noise" in self.methods else 1
            seconds += trained * 175.0 * self.diffusion_steps / 600.0
        return seconds

    # --- stages ---------------------------------------------------------------------------------------------------
    def stage_scenes(self) -> Dict:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from itergen_ns.data.scenes import make_scenes

        with Progress(
            TextColumn("[bold]bench scenes"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=CONSOLE,
        ) as progress:
            task = progress.add_task("scenes", total=self.num_scenes)
            index = make_scenes(
                self.scenes_dir,
                num_scenes=self.num_scenes,
                seed=self.seed,
                num_frames=self.num_frames,
                resolution=self.image_size,
                num_heldout=self.num_heldout_scenes,
                num_val=self.num_val_scenes,
                on_scene_done=lambda i, p: progress.advance(task),
            )
        splits = {s: [e["name"] for e in index["scenes"] if e["split"] == s] for s in ("train", "val", "heldout")}
        return {"scenes": str(self.scenes_dir), **splits}

    def stage_diffusion_no_render_noise(self) -> Dict:
        return self.train_generator(self.output_dir / "diffusion-no-render-noise", render_noise=0.0)

    def generator_paths(self) -> Tuple[Path, Optional[Path]]:
        if self.generator_checkpoint is not None:  # not own_generators()
            return Path(self.generator_checkpoint), self.generator_checkpoint_no_render_noise
        no_noise = None
        if "itergen-no-render-noise" in self.methods:
            no_noise = self.output_dir / "diffusion-no-render-noise" / "latest"
        return self.output_dir / "diffusion" / "latest", no_noise

    def eval_config(self):
        from itergen_ns.eval.harness import EvalConfig

        main, no_noise = self.generator_paths()
        method_overrides = {"itergen:pipeline.generation.generate_every": str(self.generate_every)}
        method_overrides.update(self.method_overrides)
        return EvalConfig(
            data=(self.scenes_dir,),
            methods=self.eval_methods(),
            views=self.views,
            samples=self.samples,
            steps=self.eval_steps,
            generator_checkpoint=main,
            generator_checkpoint_no_render_noise=no_noise,
            output_dir=self.output_dir / "report",
            input_view_seed=self.seed,
            overrides=self.common_overrides(),
            method_overrides=method_overrides,
            shard=self.eval_shard,
        )

    def stage_eval(self) -> Dict:
        config = self.eval_config()
        results = config.run()
        return {"runs": len(results), "report_dir": str(config.output_dir)}

    def write_report(self) -> Path:
        from itergen_ns.eval.bench_report import write_bench_report

        config = self.eval_config()
        results = config.run()  # every run is finished by now: this only reads the result.json files
        settings = {k: v for k, v in vars(self).items() if k not in ("overrides", "method_overrides")}
        settings.update(
            overrides=dict(self.common_overrides()),
            method_overrides=config.method_overrides,
            generator_checkpoint=str(config.generator_checkpoint),
            generator_checkpoint_no_render_noise=str(config.generator_checkpoint_no_render_noise),
            scene_splits={
                s: [e["name"] for e in self.scene_plan() if e["split"] == s] for s in ("train", "val", "heldout")
            },
        )
        return write_bench_report(
            results, config.output_dir, settings, baseline=BASELINE, report_scenes=self.report_scenes
        )

    def main(self) -> int:
        unknown = set(self.methods) - set(BENCH_METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(BENCH_METHODS)}")
        if BASELINE not in self.methods:
            raise ValueError(f"the benchmark compares against {BASELINE}: keep it in --methods")
        if self.num_heldout_scenes < 2:
            raise ValueError("--num-heldout-scenes must be >= 2 (a confidence interval needs two paired scenes)")
        runs, estimate = self.num_runs(self.eval_methods()), self.estimate_seconds()
        CONSOLE.print(
            f"bench: {self.num_train_scenes} train / {self.num_val_scenes} val / {self.num_heldout_scenes} held-out "
            f"scenes, {runs} eval runs, estimated {estimate / 60:.0f} min on 2 CPU cores"
        )
        if self.plan_only:
            return 0
        start = time.time()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.run_stage("scenes", self.stage_scenes)
        if self.own_generators():
            self.run_stage("snapshots", self.stage_snapshots)
            self.run_stage("diffusion", self.stage_diffusion)
            if "itergen-no-render-noise" in self.methods:
                self.run_stage("diffusion-no-render-noise", self.stage_diffusion_no_render_noise)
        if self.eval_shard != "0/1":
            self.stage_eval()
            CONSOLE.print(f"bench: shard {self.eval_shard} done; rerun without --eval-shard for the report")
            return 0
        self.run_stage("eval", self.stage_eval)
        report = self.write_report()
        CONSOLE.print(f"[bold]bench finished in {time.time() - start:.0f} s; report: {report}")
        return 0


def read_results(report_dir: Path) -> Dict:
    """results.json of a finished benchmark."""
    return json.loads((Path(report_dir) / "results.json").read_text())
