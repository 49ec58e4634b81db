"""What an export writes, decided before anything is trained: shard names, this process's ``--shard i/n`` part,
and each run's C, seed and snapshot steps.

Everything here is a pure function of the settings and the shard name, so ``--shard i/n`` and reruns give the
same runs (docs/architecture.md, "Snapshots").
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import numpy as np

from itergen_ns.data.discovery import discover_scenes

if TYPE_CHECKING:
    from itergen_ns.snapshots.exporter import ExportSnapshotsConfig


def scene_key(scene: Path) -> str:
    """A shard-name-safe identifier of a scene: ``<collection or category>_<scene or sequence>``."""
    scene = Path(scene).absolute()
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{scene.parent.name}_{scene.name}")


def shard_name(scene: Path, run: int) -> str:
    """Name of the shard of run ``run`` of ``scene``."""
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


def plan_jobs(config: "ExportSnapshotsConfig") -> List[Tuple[Path, int]]:
    """(scene, run) pairs of this process's ``--shard i/n`` part, in export order; ValueError when two scenes
    would share shard names."""
    i, n = parse_shard_arg(config.shard)
    scenes = discover_scenes(config.data, config.include_heldout)
    keys: Dict[str, Path] = {}
    for scene in scenes:
        other = keys.setdefault(scene_key(scene), scene)
        if other != scene:
            raise ValueError(f"scenes {other} and {scene} would share shard names ({scene_key(scene)}); rename one")
    return [(scene, run) for scene in split_for_shard(scenes, i, n) for run in range(config.runs_per_scene)]


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


@dataclass(frozen=True)
class RunPlan:
    """The settings of one (scene, run), all derived from the export settings and the shard name."""

    scene: Path
    run: int
    name: str
    seed: int
    num_views: int
    """C: how many input views the run trains on."""
    steps: List[int]
    """Snapshot steps (see ``snapshot_steps``)."""


def plan_run(config: "ExportSnapshotsConfig", scene: Path, run: int) -> RunPlan:
    """The RunPlan of run ``run`` of ``scene`` under the export settings ``config``."""
    name = shard_name(scene, run)
    seed = run_seed(config.seed, name)
    num_views = draw_num_views(np.random.default_rng(seed), config.views_scale, config.min_views, config.max_views)
    return RunPlan(scene, run, name, seed, num_views, snapshot_steps(config.max_steps, config.every))
