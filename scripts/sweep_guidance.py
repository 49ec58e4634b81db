"""Sweep the render-guidance scale (CFG toward the 3D-unconditional model) by generator gain on validation scenes.

Prints, per ``guidance_3d`` value, the mean PSNR/SSIM gain of samples over their conditioning renders and the
margin over the best trivial predictor (``itergen gain`` on the same frames, same seeds), plus the paired
difference to ``guidance_3d = 1`` over scenes with a 95% t-interval. Use VALIDATION scenes' snapshots, never the
held-out evaluation scenes: the chosen value becomes a default.

    python scripts/sweep_guidance.py --data demo_output/validation_snapshots --checkpoint demo_output/diffusion/latest \
        --values 0.25 0.5 0.75 1.0 --seeds 0 1
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import tyro
from rich.console import Console
from rich.table import Table
from scipy import stats

from itergen_ns.eval.gain import GainConfig, run_gain
from itergen_ns.itergen.generator import GeneratorConfig


@dataclass
class SweepGuidanceConfig:
    data: Path
    """Snapshot root of validation scenes."""
    checkpoint: Path
    train_data: Optional[Path] = None
    """Snapshot root of the training scenes (mean-frame predictor)."""
    values: Tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    seeds: Tuple[int, ...] = (0, 1)
    max_clips_per_shard: Optional[int] = None
    output_dir: Path = Path("outputs/sweep_guidance")


def per_scene(frames: List[Dict], metric: str, predictor: str) -> Dict[str, float]:
    by: Dict[str, List[float]] = defaultdict(list)
    for f in frames:
        by[f["scene"]].append(f[metric][predictor] - f[metric]["render"])
    return {s: float(np.mean(v)) for s, v in by.items()}


def t_interval(x: np.ndarray) -> Tuple[float, float]:
    if len(x) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def main(cfg: SweepGuidanceConfig) -> None:
    results = {}
    for value in cfg.values:
        gain_cfg = GainConfig(
            data=cfg.data,
            checkpoint=cfg.checkpoint,
            generator=GeneratorConfig(guidance_3d=value),
            train_data=cfg.train_data,
            seeds=cfg.seeds,
            max_clips_per_shard=cfg.max_clips_per_shard,
            output_dir=cfg.output_dir / f"guidance_3d_{value:g}",
            num_grid_clips=2,
        )
        results[value] = run_gain(gain_cfg)
    table = Table(title=f"render-guidance sweep on {cfg.data} (seeds {list(cfg.seeds)})")
    for col in (
        "guidance_3d",
        "frames",
        "gain PSNR",
        "gain SSIM",
        "margin PSNR",
        "vs g3=1 PSNR (95% CI)",
        "vs g3=1 SSIM (95% CI)",
    ):
        table.add_column(col, justify="right")
    ref = results.get(1.0)
    for value, res in results.items():
        overall = next(g for g in res["groups"] if g["step"] == "all" and g["views"] == "all")
        cells = [
            f"{value:g}",
            str(overall["frames"]),
            f"{overall['gain_psnr']:+.2f}",
            f"{overall['gain_ssim']:+.3f}",
            f"{overall['margin_psnr']:+.2f}",
        ]
        for metric, fmt in (("psnr", "{:+.2f}"), ("ssim", "{:+.3f}")):
            if ref is None:
                cells.append("-")
                continue
            a, b = per_scene(res["frames"], metric, "sample"), per_scene(ref["frames"], metric, "sample")
            diff = np.array([a[s] - b[s] for s in sorted(a)])
            lo, hi = t_interval(diff)
            cells.append(f"{fmt.format(diff.mean())} [{fmt.format(lo)}, {fmt.format(hi)}]")
        table.add_row(*cells)
    Console().print(table)


if __name__ == "__main__":
    main(tyro.cli(SweepGuidanceConfig))
