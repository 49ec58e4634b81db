"""`itergen export-snapshots`: splatfacto runs from few views, rendered along the whole trajectory every N steps.

For each (scene, run): draw C input views (C from a clipped exponential favouring 1-3), train the project's
splatfacto from those views only through nerfstudio's Trainer, and after 0, every, 2*every, ... max_steps
optimisation steps render the model at every frame of the scene. The renders, ground truth, cameras and the
input indices form one shard (format.py). Shards are written atomically and finished ones are skipped, so an
interrupted export resumes losing at most the shard in flight; ``--shard i/n`` splits scenes across processes.

This module holds the export's settings and entry point; the parts are ``export_plan`` (shard names, the
``--shard i/n`` part, each run's C, seed and steps), ``snapshot_run`` (one run: training, snapshots, its shard)
and ``export_progress`` (resume clean-up, progress, the report).

Determinism: a run's seed derives from ``--seed`` and its shard name only, so ``--shard i/n`` and reruns give the
same C, input views and seeds. On CPU the shard is byte-identical across runs at a fixed torch thread count
(float reductions depend on it: 1 vs 2 threads differ by a few levels out of 255 after 60 steps).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig, is_co3d_sequence
from itergen_ns.data.sparse_dataparser import SparseNerfstudioDataParserConfig
from itergen_ns.snapshots import snapshot_run
from itergen_ns.snapshots.export_plan import plan_jobs, shard_name
from itergen_ns.snapshots.export_progress import ExportReport, pending_jobs, run_jobs
from itergen_ns.snapshots.scene_frames import RenderLatentEncoder

__all__ = ["ExportReport", "ExportSnapshotsConfig", "shard_name"]


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
        return plan_jobs(self)

    def export(self) -> ExportReport:
        """Write every missing shard of this process's part; bad scenes are reported and skipped."""
        self.check()
        jobs = self.jobs()  # bad --data fails here, before anything is written
        pending = pending_jobs(self.out, jobs, Path(self.work_dir or self.out / "runs"), self.keep_runs)
        encoder = RenderLatentEncoder(self.latents_vae) if self.latents_vae is not None and pending else None
        return run_jobs(jobs, lambda scene, run: self.export_one(scene, run, encoder))

    def parser_for(self, scene: Path) -> DataParserConfig:
        """A copy of the parser template matching ``scene``'s kind, pointed at it."""
        parser = copy.deepcopy(self.co3d if is_co3d_sequence(scene) else self.nerfstudio)
        parser.data = Path(scene)
        return parser

    def export_one(self, scene: Path, run: int, encoder: Optional[RenderLatentEncoder] = None) -> Optional[Path]:
        """Train one run and write its shard (with ``encoder``: also render latents); None if it already exists."""
        return snapshot_run.export_one(self, scene, run, encoder)
