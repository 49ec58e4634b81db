"""`itergen snapshots-summary`: the shards of a snapshot root with scenes, snapshot counts and bytes."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.snapshots.format import summarize


@dataclass
class SummaryConfig:
    """List the shards of a snapshot root with scenes, snapshot counts and bytes."""

    root: Path
    """Snapshot root written by `itergen export-snapshots`."""

    def main(self) -> int:
        """Print the table; exit status 1 (one stderr line per shard) when some shard is corrupt."""
        with warnings.catch_warnings(record=True) as problems:
            warnings.simplefilter("always")
            rows = summarize(self.root)
        for problem in problems:
            print(f"{problem.category.__name__}: {problem.message}", file=sys.stderr, flush=True)
        table = Table(title=f"snapshots in {self.root}")
        for col in ("shard", "scene", "frames", "inputs", "snapshots", "MB", "seconds"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r.name, r.scene, str(r.frames), str(r.meta.get("num_input_views", "?")), str(r.snapshots),
                f"{r.bytes / 2**20:.2f}", str(r.meta.get("seconds", "?")),
            )  # fmt: skip
        CONSOLE.print(table)
        CONSOLE.print(
            f"{len(rows)} shards, {len({r.scene for r in rows})} scenes, {sum(r.snapshots for r in rows)} snapshots, "
            f"{sum(r.snapshots * r.frames for r in rows)} rendered frames, {sum(r.bytes for r in rows)} bytes"
        )
        return 1 if problems else 0
