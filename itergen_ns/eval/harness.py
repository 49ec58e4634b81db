"""`itergen eval`: the paper's protocol (docs/protocol.md) on any scenes the parsers read.

For each scene and input-view count, every method trains from the same input views; the result is rendered
at every frame of the sequence and scored on the frames that were not inputs. Stochastic methods (itergen and
its ablations) are run ``samples`` times with different generation seeds; the report gives best-of-S (the
sample with the highest PSNR per scene, the paper's protocol) and mean ± std over all samples. Each finished
run leaves ``result.json`` + ``frames.npz`` and is skipped on a rerun, so the harness resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


from itergen_ns.data.discovery import discover_split_scenes
from itergen_ns.errors import InputError
from itergen_ns.eval.metrics import mean_metrics
from itergen_ns.eval.scoring import score_run
from itergen_ns.eval.train_render import train_and_render
from itergen_ns.eval.variants import VARIANTS, CustomMethod, MethodVariant
from itergen_ns.io import atomic_savez, atomic_write_text
from itergen_ns.engine.runner import TrainSpec


@dataclass
class EvalConfig:
    """Train each method from 1/6 (or any) views per scene, render all frames, write the metric report."""

    data: Tuple[Path, ...]
    """Scene folders, folders of scenes, or a procedural root (its held-out scenes are used)."""
    methods: Tuple[str, ...] = ("itergen", "itergen-splatfacto")
    """Rows: itergen-splatfacto, itergen, itergen-one-shot, itergen-random-poses, itergen-no-render-noise."""
    views: Tuple[int, ...] = (1, 6)
    samples: int = 3
    """Samples per stochastic method (best-of-S and mean are reported)."""
    steps: int = 2000
    generator_checkpoint: Optional[Path] = None
    """Trained diffusion model for the itergen rows (`itergen train-diffusion` output, e.g. runs/diffusion/latest)."""
    generator_checkpoint_no_render_noise: Optional[Path] = None
    """Model for the itergen-no-render-noise row: trained with `itergen train-diffusion --sampling.render-noise 0`."""
    generator_random_init: bool = False
    """Run itergen rows with an untrained tiny model (smoke tests only)."""
    output_dir: Path = Path("runs/eval")
    input_view_seed: int = 0
    use_masks: bool = False
    """Score only the object (CO3D masks / procedural masks), background set to white in both images."""
    overrides: Dict[str, str] = field(default_factory=dict)
    """Extra dotted config overrides for every run (values parsed as YAML), e.g. pipeline.model.sh_degree=1."""
    method_overrides: Dict[str, str] = field(default_factory=dict)
    """Overrides for one base method only: 'itergen:pipeline.datamanager.p_input' = '0.3'."""
    report_frames: int = 4
    """Held-out frames shown per scene in the image grids."""
    shard: str = "0/1"
    """i/n: run only jobs i, i+n, i+2n, ... of the job list, so n processes can share one output directory (each
    run is skipped once its result.json exists); the report lists only this shard's runs, so finish with 0/1."""

    def shard_jobs(self, jobs: List) -> List:
        """This process's share of ``jobs`` (``--shard i/n``)."""
        try:
            index, count = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard {self.shard!r}: expected i/n, e.g. 0/2") from None
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard {self.shard!r}: need 0 <= i < n")
        return jobs[index::count]

    def main(self) -> int:
        from itergen_ns.eval.report import write_report

        results = self.run()
        write_report(results, self.output_dir, self)
        return 0

    # ------------------------------------------------------------------------------------------------------------
    def run(self, custom_methods: Optional[Dict[str, CustomMethod]] = None) -> List[Dict]:
        custom_methods = custom_methods or {}
        unknown = [m for m in self.methods if m not in VARIANTS and m not in custom_methods]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {', '.join(VARIANTS)}")
        self._check_generators()
        scenes = discover_split_scenes(self.data)
        self._check_views(scenes)
        jobs = []
        for scene in scenes:
            for views in self.views:
                for method in self.methods:
                    stochastic = method in VARIANTS and VARIANTS[method].stochastic
                    for sample in range(self.samples if stochastic else 1):
                        jobs.append((scene, views, method, sample))
        jobs = self.shard_jobs(jobs)
        results = []
        progress = Progress(
            TextColumn("[bold]eval {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} runs"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with progress:
            task = progress.add_task("", total=len(jobs))
            for scene, views, method, sample in jobs:
                progress.update(task, description=f"{scene.name} {views}v {method} #{sample}")
                results.append(self.run_one(scene, views, method, sample, custom_methods.get(method)))
                progress.advance(task)
        return results

    def _check_views(self, scenes: Sequence[Path]) -> None:
        """Fail before any training when a view count is < 1 or leaves a scene no frame to score."""
        if not self.views or min(self.views) < 1:
            raise InputError(f"--views {' '.join(map(str, self.views))}: expected input-view counts >= 1")
        for scene in scenes:
            transforms = Path(scene) / "transforms.json"
            if not transforms.is_file():
                continue  # CO3D: the parser checks the count
            try:
                frames = len(json.loads(transforms.read_text()).get("frames", []))
            except (ValueError, AttributeError) as err:
                raise InputError(f"{transforms}: not a valid transforms.json ({err})") from err
            if max(self.views) >= frames:
                raise InputError(
                    f"--views {max(self.views)}: {transforms} has only {frames} frames; expected fewer input views "
                    "than frames (the others are scored)"
                )

    def _check_generators(self) -> None:
        """Fail before any training when a row's model is missing, unreadable or not what the row claims."""
        rows = [VARIANTS[m] for m in self.methods if m in VARIANTS and VARIANTS[m].uses_generator]
        if self.generator_random_init or not rows:
            return
        from itergen_ns.diffusion.model import IterGenDiffusionModel

        for option, path in (
            ("--generator-checkpoint", self.generator_checkpoint),
            ("--generator-checkpoint-no-render-noise", self.generator_checkpoint_no_render_noise),
        ):
            if path is not None:  # loads the weights once, so a corrupt file fails here and not after hours
                try:
                    IterGenDiffusionModel.from_pretrained(path)
                except (OSError, ValueError) as err:
                    raise InputError(f"{option} {path}: {' '.join(str(err).split())}") from err
        if "itergen-no-render-noise" not in self.methods:
            return
        path = self.generator_checkpoint_no_render_noise
        if path is None:
            raise ValueError(
                "itergen-no-render-noise needs a model trained without conditioning noise: train one with "
                "`itergen train-diffusion --sampling.render-noise 0 ...` and pass --generator-checkpoint-no-render-noise DIR"
            )
        from itergen_ns.diffusion.components import read_model_config

        noise = read_model_config(path).sampling.render_noise
        if noise != 0.0:
            raise ValueError(
                f"--generator-checkpoint-no-render-noise {path}: trained with render noise {noise}, expected 0"
            )

    def run_dir(self, scene: Path, views: int, method: str, sample: int) -> Path:
        return self.output_dir / "runs" / scene.name / f"{views}v" / f"{method}-s{sample}"

    def run_one(self, scene: Path, views: int, method: str, sample: int, custom: Optional[CustomMethod]) -> Dict:
        """One (scene, views, method, sample) run, trained, rendered and scored; its result.json when it exists."""
        run_dir = self.run_dir(scene, views, method, sample)
        result_file = run_dir / "result.json"
        if result_file.exists():
            return json.loads(result_file.read_text())
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        silhouettes = None
        if custom is not None:
            renders, targets, inputs = custom(scene, views, sample, run_dir)
            masks = None
        else:
            spec = self._train_spec(scene, views, method, sample, run_dir)
            renders, targets, inputs, masks, silhouettes = train_and_render(spec, self.use_masks)
        eval_idx, per_frame = score_run(renders, targets, inputs, masks, silhouettes, self.use_masks)
        atomic_savez(run_dir / "frames.npz", renders=renders, inputs=np.asarray(inputs))  # a kill never truncates it
        gt_file = self.output_dir / "runs" / scene.name / "ground_truth.npz"
        if not gt_file.exists():
            atomic_savez(gt_file, images=targets)
        result = {
            "scene": scene.name,
            "scene_path": str(scene),
            "views": views,
            "method": method,
            "sample": sample,
            "input_indices": [int(i) for i in inputs],
            "eval_indices": eval_idx,
            "metrics": mean_metrics(per_frame),
            "per_frame": per_frame,
            "seconds": round(time.time() - start, 2),
        }
        atomic_write_text(result_file, json.dumps(result, indent=2))
        return result

    def _overrides(self, variant: MethodVariant, sample: int) -> Dict[str, object]:
        out: Dict[str, object] = dict(self.overrides)  # strings: build_config converts them to the fields' types
        for key, value in self.method_overrides.items():
            base, _, path = key.partition(":")
            if base == variant.method:
                out[path] = value
        out.update(dict(variant.overrides))
        if variant.uses_generator:
            out["pipeline.generation.generation_seed"] = sample
            checkpoint = (
                self.generator_checkpoint_no_render_noise
                if variant.generator == "no_render_noise"
                else self.generator_checkpoint
            )
            if checkpoint is not None:
                out["pipeline.generator.checkpoint"] = Path(checkpoint)
            out["pipeline.generator.random_init"] = self.generator_random_init
        return out

    def _train_spec(self, scene: Path, views: int, method: str, sample: int, run_dir: Path) -> TrainSpec:
        """What a registered row trains: its method and overrides on the scene's input split, seeded per sample."""
        variant = VARIANTS[method]
        return TrainSpec(
            method=variant.method,
            data=scene,
            output_dir=run_dir / "nerfstudio",
            num_input_views=views,
            input_view_seed=self.input_view_seed,
            steps=self.steps,
            seed=42 + sample,
            experiment_name=scene.name,
            overrides=self._overrides(variant, sample),
        )
