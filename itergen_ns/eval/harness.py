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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


from itergen_ns.data.discovery import discover_split_scenes
from itergen_ns.data.splits import select_input_views
from itergen_ns.errors import InputError
from itergen_ns.eval.metrics import (
    image_metrics,
    masked_psnr,
    mean_metrics,
    object_accumulation,
    object_sphere,
    silhouette_iou,
)
from itergen_ns.io import atomic_savez, atomic_write_text
from itergen_ns.data.all_frames import all_frames_outputs, load_frames
from itergen_ns.models.rendering import render_all_frames
from itergen_ns.engine.runner import TrainSpec, build_config, train


@dataclass(frozen=True)
class MethodVariant:
    """A row of the results table: a registered method plus config overrides."""

    method: str
    overrides: Tuple[Tuple[str, object], ...] = ()
    stochastic: bool = False
    uses_generator: bool = False
    generator: str = "main"
    """Which trained model the itergen rows use: "main" (--generator-checkpoint) or "no_render_noise"
    (--generator-checkpoint-no-render-noise, a model trained without conditioning noise)."""


VARIANTS: Dict[str, MethodVariant] = {
    "itergen-splatfacto": MethodVariant("itergen-splatfacto"),
    "itergen": MethodVariant("itergen", stochastic=True, uses_generator=True),
    "itergen-one-shot": MethodVariant(
        "itergen", (("pipeline.generation.one_shot", True),), stochastic=True, uses_generator=True
    ),
    "itergen-random-poses": MethodVariant(
        "itergen", (("pipeline.generation.pose_sampler.order", "random"),), stochastic=True, uses_generator=True
    ),
    # The paper's ablation: a model *trained* without conditioning noise, sampled without it (its SamplingConfig).
    "itergen-no-render-noise": MethodVariant(
        "itergen", stochastic=True, uses_generator=True, generator="no_render_noise"
    ),
}

# A custom method for tests/extensions: (scene, num_views, sample, run_dir) -> (renders [F,H,W,3], gts, input_idx)
CustomMethod = Callable[[Path, int, int, Path], Tuple[np.ndarray, np.ndarray, List[int]]]


def score_frames(
    renders: np.ndarray, targets: np.ndarray, eval_indices: Sequence[int], masks: Optional[np.ndarray] = None
) -> List[Dict[str, float]]:
    """Metrics of each evaluated frame; with masks, pixels outside the object are set to white in both images."""
    out = []
    for i in eval_indices:
        pred = torch.from_numpy(renders[i]).float() / 255.0
        gt = torch.from_numpy(targets[i]).float() / 255.0
        if masks is not None:
            m = torch.from_numpy(masks[i] > 127).float()[..., None]
            pred, gt = pred * m + (1 - m), gt * m + (1 - m)
        out.append(image_metrics(pred, gt))
    return out


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
            renders, targets, inputs, masks, silhouettes = self._train_and_render(scene, views, method, sample, run_dir)
        eval_idx = [i for i in range(len(renders)) if i not in set(inputs)] or list(range(len(renders)))
        per_frame = score_frames(renders, targets, eval_idx, masks if self.use_masks else None)
        if masks is not None:
            for metrics, extra in zip(per_frame, object_scores(renders, targets, eval_idx, masks, silhouettes)):
                metrics.update(extra)
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

    def _train_and_render(self, scene: Path, views: int, method: str, sample: int, run_dir: Path):
        variant = VARIANTS[method]
        spec = TrainSpec(
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
        trainer = train(build_config(spec))
        datamanager = trainer.pipeline.datamanager
        outputs = all_frames_outputs(datamanager, use_masks=self.use_masks or None)
        renders = render_all_frames(trainer.pipeline.model, outputs.cameras)
        size = renders.shape[1:3]
        targets = np.stack(load_frames(outputs.image_filenames, size))
        masks = None
        if self.use_masks and not outputs.mask_filenames:
            raise ValueError(f"{scene}: --use-masks asked for, but the scene has no foreground masks")
        mask_files = outputs.mask_filenames or _mask_filenames(datamanager)
        silhouettes = None
        if mask_files:  # object-masked PSNR and silhouette IoU wherever the scene has masks
            masks = np.stack([m[..., 0] for m in load_frames(mask_files, size)])
            sphere = object_sphere(outputs, scene)
            if sphere is not None:
                silhouettes = object_accumulation(trainer.pipeline.model, outputs.cameras, *sphere)
        num_frames = renders.shape[0]
        inputs = datamanager.train_dataparser_outputs.metadata.get("input_view_indices")
        if inputs is None:
            inputs = select_input_views(num_frames, views, self.input_view_seed)[0]
        return renders, targets, list(inputs), masks, silhouettes


def _mask_filenames(datamanager) -> Optional[List[Path]]:
    """The scene's mask files when it has them, even if the run trained without masks (scoring only)."""
    try:
        return all_frames_outputs(datamanager, use_masks=True).mask_filenames
    except (FileNotFoundError, ValueError, KeyError):
        return None


def object_scores(
    renders: np.ndarray,
    targets: np.ndarray,
    eval_indices: Sequence[int],
    masks: np.ndarray,
    silhouettes: Optional[np.ndarray] = None,
) -> List[Dict[str, float]]:
    """Per evaluated frame: PSNR over the object's pixels (``masked_psnr``) and, with the rendered object
    accumulation, the silhouette IoU against the mask (``iou``)."""
    out = []
    for i in eval_indices:
        mask = torch.from_numpy(masks[i] > 127)
        pred = torch.from_numpy(renders[i]).float() / 255.0
        gt = torch.from_numpy(targets[i]).float() / 255.0
        scores = {"masked_psnr": masked_psnr(pred, gt, mask)}
        if silhouettes is not None:
            scores["iou"] = silhouette_iou(torch.from_numpy(silhouettes[i]), mask)
        out.append(scores)
    return out
