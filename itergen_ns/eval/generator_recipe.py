"""The recipe of the shipped generator (``itergen_ns/weights/generator``): scenes -> snapshots -> TAEF2 model.

One dataclass holds every setting, so ``itergen demo --from-scratch`` rebuilds exactly the model that ships and
the README can print the equivalent commands (:meth:`GeneratorRecipe.commands`). Training scenes come from
their own collection seed, disjoint from the demo's and the benchmark's held-out scenes (collection seed 0).
Every stage resumes: make-scenes and the exporter skip finished scenes/shards, the trainer resumes from its
latest checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.diffusion.presets import SHIPPED_GENERATOR_DIR


@dataclass
class GeneratorRecipe:
    """Settings of the shipped TAEF2 generator; defaults are the ones it was built with."""

    scene_seed: int = 100
    """Collection seed of the training scenes (the demo and the benchmark score collection seed 0)."""
    num_scenes: int = 60
    export_steps: int = 300
    export_every: int = 50
    runs_per_scene: int = 1
    export_seed: int = 100
    init_num_points: int = 3000
    """Initial Gaussians of the snapshot runs (as in the demo's and the benchmark's 3D runs)."""
    model: str = "taef2"
    extra_maps: Tuple[str, ...] = ("plucker", "nearest_input", "warped_input")
    """UNet input maps beyond the render latent: Plücker rays, the nearest input's latent and the render
    repainted with the nearest input warped through the render's depth (docs/generator.md)."""
    diffusion_steps: int = 6000
    batch_size: int = 4
    learning_rate: float = 3e-4
    lr_warmup_steps: int = 100
    checkpoint_every: int = 250
    validate_every: int = 1000
    render_noise: float = 0.1
    guidance_3d: float = 1.0
    """Saved sampling default: (1.0, 1.0) beat the paper-style (0.9, 1.5) by +0.5 dB generator gain on the
    validation scenes at 1 view (docs/generator.md), and needs one UNet branch instead of three."""
    guidance_input: float = 1.0
    seed: int = 0

    def scenes_dir(self, root: Path) -> Path:
        return Path(root) / "train_scenes"

    def snapshots_dir(self, root: Path) -> Path:
        return Path(root) / "train_snapshots"

    def diffusion_dir(self, root: Path) -> Path:
        return Path(root) / "diffusion"

    def commands(self, root: Path = Path("runs/generator")) -> List[str]:
        """The CLI commands equivalent to :meth:`build` (printed in the README)."""
        scenes, snaps, out = self.scenes_dir(root), self.snapshots_dir(root), self.diffusion_dir(root)
        return [
            f"itergen make-scenes --out-dir {scenes} --num-scenes {self.num_scenes} --num-heldout 0 --num-val 0 "
            f"--seed {self.scene_seed}",
            f"itergen export-snapshots --data {scenes} --out {snaps} --max-steps {self.export_steps} "
            f"--every {self.export_every} --runs-per-scene {self.runs_per_scene} --seed {self.export_seed} "
            f"--overrides pipeline.datamanager.init_num_points {self.init_num_points}",
            f"itergen train-diffusion --data {snaps} --output-dir {out} --model {self.model} "
            f"--extra-maps {' '.join(self.extra_maps)} "
            f"--max-steps {self.diffusion_steps} --batch-size {self.batch_size} --learning-rate {self.learning_rate} "
            f"--lr-warmup-steps {self.lr_warmup_steps} --checkpoint-every {self.checkpoint_every} "
            f"--validate-every {self.validate_every} --sampling.render-noise {self.render_noise} "
            f"--sampling.guidance-3d {self.guidance_3d} --sampling.guidance-input {self.guidance_input} --seed {self.seed}",
        ]

    def build(self, root: Path, max_steps: Optional[int] = None) -> Path:
        """Run (or resume) the three stages under ``root``; returns the trained model directory (``latest``)."""
        from itergen_ns.data.scenes import BENCH_IMAGE_SIZE, BENCH_NUM_FRAMES, load_scene_index, make_scenes
        from itergen_ns.diffusion.sampling import SamplingConfig
        from itergen_ns.diffusion.checkpointing import resolve_checkpoint
        from itergen_ns.diffusion.train import TrainDiffusionConfig, train
        from itergen_ns.snapshots.exporter import ExportSnapshotsConfig

        scenes = self.scenes_dir(root)
        if not (scenes / "scenes.json").exists():
            CONSOLE.rule("generator: scenes")
            make_scenes(
                scenes,
                num_scenes=self.num_scenes,
                seed=self.scene_seed,
                num_frames=BENCH_NUM_FRAMES,
                resolution=BENCH_IMAGE_SIZE[0],
                num_heldout=0,
                num_val=0,
            )
        CONSOLE.rule("generator: snapshots")
        index = load_scene_index(scenes)
        export = ExportSnapshotsConfig(
            data=tuple(Path(e["path"]) for e in index["scenes"]),
            out=self.snapshots_dir(root),
            every=self.export_every,
            max_steps=self.export_steps,
            runs_per_scene=self.runs_per_scene,
            seed=self.export_seed,
            overrides={"pipeline.datamanager.init_num_points": str(self.init_num_points)},
        )
        if export.main() != 0:
            raise RuntimeError("snapshot export failed for some scenes (see above)")
        CONSOLE.rule("generator: diffusion")
        out = self.diffusion_dir(root)
        try:
            resolve_checkpoint(out, "latest")
            resume: Optional[str] = "latest"
        except FileNotFoundError:
            resume = None
        train(
            TrainDiffusionConfig(
                data=self.snapshots_dir(root),
                output_dir=out,
                model=self.model,  # type: ignore[arg-type]
                extra_maps=tuple(self.extra_maps),
                max_steps=max_steps or self.diffusion_steps,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                lr_warmup_steps=self.lr_warmup_steps,
                checkpoint_every=self.checkpoint_every,
                validate_every=self.validate_every,
                sampling=SamplingConfig(
                    render_noise=self.render_noise, guidance_3d=self.guidance_3d, guidance_input=self.guidance_input
                ),
                seed=self.seed,
                resume=resume,
            )
        )
        return out / "latest"

    def ship(self, model_dir: Path, dest: Path = SHIPPED_GENERATOR_DIR) -> Path:
        """Write ``model_dir`` into ``dest`` as fp16 safetensors (atomically) with this recipe beside it."""
        import json

        import torch

        from itergen_ns.diffusion.model import IterGenDiffusionModel
        from itergen_ns.io import atomic_write_text

        model = IterGenDiffusionModel.from_pretrained(model_dir)
        dest = Path(dest)
        model.save_pretrained(dest, dtype=torch.float16)
        atomic_write_text(dest / "recipe.json", json.dumps(dataclasses.asdict(self), indent=2))
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        CONSOLE.print(f"shipped generator: {dest} ({size / 1e6:.1f} MB)")
        return dest
