"""`itergen train-baseline`: splatfacto from N views of one scene, scored on every held-out frame."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

from rich.table import Table

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.eval.metrics import evaluate_pipeline
from itergen_ns.engine.runner import TrainSpec, build_config, train


@dataclass
class TrainBaselineConfig:
    """Train ``itergen-splatfacto`` (or another registered method) and print held-out PSNR/SSIM(/LPIPS)."""

    data: Path
    """A scene folder (nerfstudio transforms.json or a CO3D sequence)."""
    num_input_views: int = 3
    """Input views (0: all frames)."""
    input_view_seed: int = 0
    steps: int = 1000
    method: str = "itergen-splatfacto"
    output_dir: Path = Path("outputs")
    seed: int = 42
    overrides: Dict[str, str] = field(default_factory=dict)
    """Dotted config overrides, e.g. pipeline.model.sh_degree 1."""

    def main(self) -> Dict[str, float]:
        spec = TrainSpec(
            method=self.method,
            data=self.data,
            output_dir=self.output_dir,
            num_input_views=self.num_input_views,
            input_view_seed=self.input_view_seed,
            steps=self.steps,
            seed=self.seed,
            experiment_name=f"{Path(self.data).name}-{self.num_input_views}v",
            overrides=dict(self.overrides),
        )
        config = build_config(spec)
        trainer = train(config)
        result = evaluate_pipeline(trainer.pipeline, keep_images=False)
        mean = result.mean
        table = Table(title=f"{self.method} on {self.data} from {self.num_input_views or 'all'} view(s)")
        for key in ("psnr", "ssim", "lpips"):
            if key in mean:
                table.add_column(key.upper())
        table.add_row(*[f"{mean[k]:.4f}" for k in ("psnr", "ssim", "lpips") if k in mean])
        CONSOLE.print(table)
        out = config.get_base_dir() / "heldout_metrics.json"
        out.write_text(json.dumps({"mean": mean, "num_frames": len(result.per_frame)}, indent=2))
        return mean
