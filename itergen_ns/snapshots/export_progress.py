"""Resume and progress bookkeeping of an export: what an earlier (killed) export left, what is still to do, and what
this one did.

A killed export leaves at most its shard in flight (a temporary, removed here unless its writer still runs) and
possibly the nerfstudio folder of a shard it had just committed; finished shards are never redone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.snapshots.export_plan import shard_name
from itergen_ns.snapshots.format import ensure_format, remove_stale_temporaries, shard_exists
from itergen_ns.snapshots.scene_frames import SceneError

Job = Tuple[Path, int]
"""(scene, run)"""


@dataclass
class ExportReport:
    """What one export call did, shard names per outcome."""

    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    """Already finished by an earlier (or another) export."""
    failed: Dict[str, str] = field(default_factory=dict)
    """Shard name -> error message (bad input; nothing of the shard was left behind)."""


def pending_jobs(out: Path, jobs: Sequence[Job], run_dir: Path, keep_runs: bool) -> List[Job]:
    """Prepare ``out`` for (re)exporting ``jobs`` and return those whose shard is not finished yet.

    Creates or checks the format file, removes this part's dead temporaries and, unless ``keep_runs``, the
    nerfstudio run folders of finished shards."""
    ensure_format(out)
    stale = remove_stale_temporaries(out, [shard_name(s, r) for s, r in jobs])
    if stale:
        CONSOLE.log(f"Removed {stale} unfinished shard(s) left by an interrupted export")
    pending = [job for job in jobs if not shard_exists(out, shard_name(*job))]
    if not keep_runs:  # a kill between a shard's commit and the removal of its run folder left it
        for job in set(jobs) - set(pending):
            shutil.rmtree(run_dir / shard_name(*job), ignore_errors=True)
    return pending


def run_jobs(jobs: Sequence[Job], export_one: Callable[[Path, int], Optional[Path]]) -> ExportReport:
    """Export every job in order under a progress bar; a SceneError skips that job (reported), the others go on."""
    report = ExportReport()
    columns = (TextColumn("[bold]export"), BarColumn(), TextColumn("{task.completed}/{task.total} shards"),
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=CONSOLE) as progress:
        task = progress.add_task("export", total=len(jobs))
        for scene, run in jobs:
            name = shard_name(scene, run)
            try:
                (report.written if export_one(scene, run) else report.skipped).append(name)
            except SceneError as err:
                report.failed[name] = str(err)
                CONSOLE.print(f"[bold red]Skipped {name}: {err}")
            progress.advance(task)
    return report
