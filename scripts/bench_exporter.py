"""Cost of `itergen export-snapshots`: measured on CPU at the demo resolution, projected to CO3D hydrant.

Measures, per scene (one shard): wall seconds, the part spent rendering snapshots, and bytes on disk; checks the
bytes against ``format.payload_bytes``. Then projects a CO3D export from the format (bytes, exact) and from the
measurement (time, extrapolated under the stated scaling assumption)::

    python scripts/bench_exporter.py                       # 2 scenes, 64x64, 40 frames, 500 steps every 100
    python scripts/bench_exporter.py --co3d-sequences 700 --co3d-max-steps 30000

Time model: t_shard = setup + steps * t_step + snapshots * frames * t_render, with t_step and t_render taken from
the measurement and scaled linearly with the pixel count (the torch rasterizer's per-pixel work dominates at
these sizes; the number of Gaussians is assumed the same). That is a CPU figure; gsplat on a GPU is orders of
magnitude faster and must be measured there.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
import tyro


@dataclass
class BenchExporterConfig:
    """Measure the exporter on generated scenes and project the cost of a CO3D export."""

    scenes: int = 2
    """Generated procedural scenes to export (one shard each)."""
    frames: int = 40
    size: int = 64
    """Image side in pixels (the demo resolution)."""
    max_steps: int = 500
    every: int = 100
    init_points: int = 2000
    """Initial random Gaussians (the method default, 20000, is ~3x slower per step on CPU)."""
    threads: Optional[int] = 1
    """torch CPU threads (None: torch's default). One thread avoids oversubscription on a shared machine."""
    seed: int = 0
    work_dir: Optional[Path] = None
    """Where scenes and shards go (default: a temporary folder, removed afterwards)."""
    co3d_sequences: int = 700
    """Sequences in the projected CO3D category (a parameter: no CO3D data here to count)."""
    co3d_frames: int = 200
    co3d_size: int = 256
    co3d_max_steps: int = 30000
    """The paper's run length; snapshots = max_steps / every + 1 (step 0 included)."""
    co3d_every: int = 100
    co3d_inputs: int = 2
    """Input views per run (only adds 8 bytes each)."""
    latent_shape: Tuple[int, int, int] = (4, 32, 32)
    """fp16 VAE latents per render (SD/SVD VAE: 4 x size/8 x size/8)."""

    def main(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.work_dir is not None:
            self.run(Path(self.work_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="bench_exporter_") as tmp:
                self.run(Path(tmp))

    def run(self, work: Path) -> None:
        from itergen_ns.data.scenes import make_scenes
        from itergen_ns.snapshots import exporter, snapshot_run
        from itergen_ns.snapshots.format import list_shards, load_shard, payload_bytes

        make_scenes(work / "scenes", self.scenes, seed=self.seed, num_frames=self.frames, resolution=self.size)
        render_seconds = []
        real_render = snapshot_run.render_all_frames

        def timed_render(*args, **kwargs):
            start = time.perf_counter()
            real_render(*args, **kwargs)
            render_seconds.append(time.perf_counter() - start)

        snapshot_run.render_all_frames = timed_render
        config = exporter.ExportSnapshotsConfig(
            data=(work / "scenes",), out=work / "snapshots", every=self.every, max_steps=self.max_steps,
            seed=self.seed, overrides={"pipeline.datamanager.init_num_points": str(self.init_points)},
        )  # fmt: skip
        rows = []
        for scene, run in config.jobs():
            before = len(render_seconds)
            start = time.perf_counter()
            path = config.export_one(scene, run)
            wall = time.perf_counter() - start
            shard = load_shard(path)
            disk = sum(f.stat().st_size for f in path.iterdir())
            steps = len(shard.steps)
            expected = payload_bytes(self.frames, self.size, self.size, steps, len(shard.input_indices),
                                     masks=shard.masks is not None)  # fmt: skip
            assert expected == shard.meta["bytes"], (expected, shard.meta["bytes"])
            rows.append(dict(shard=path.name, inputs=len(shard.input_indices), seconds=wall,
                             render_seconds=sum(render_seconds[before:]), snapshots=steps, bytes=disk,
                             gaussians=shard.meta["num_gaussians"]))  # fmt: skip
        snapshot_run.render_all_frames = real_render
        assert len(rows) == len(list_shards(work / "snapshots"))
        self.report(rows)

    def report(self, rows) -> None:
        from itergen_ns.snapshots.format import payload_bytes

        print(f"# measured: {len(rows)} scene(s), {self.size}x{self.size} px, {self.frames} frames, "
              f"{self.max_steps} steps, snapshot every {self.every}, {self.init_points} initial points, "
              f"torch threads {torch.get_num_threads()}, CPU")  # fmt: skip
        print(f"{'shard':<34}{'C':>3}{'gauss':>8}{'seconds':>10}{'render s':>10}{'bytes':>12}")
        for r in rows:
            print(f"{r['shard']:<34}{r['inputs']:>3}{r['gaussians']:>8}{r['seconds']:>10.1f}"
                  f"{r['render_seconds']:>10.1f}{r['bytes']:>12}")  # fmt: skip
        n = len(rows)
        mean_s = sum(r["seconds"] for r in rows) / n
        mean_render = sum(r["render_seconds"] for r in rows) / n
        mean_bytes = sum(r["bytes"] for r in rows) / n
        snaps = rows[0]["snapshots"]
        t_render = mean_render / (snaps * self.frames)
        t_step = (mean_s - mean_render) / self.max_steps  # set-up folded into the per-step cost (conservative)
        print(f"mean per scene: {mean_s:.1f} s ({mean_render:.1f} s rendering), {mean_bytes / 2**20:.2f} MiB; "
              f"t_step {t_step * 1e3:.1f} ms, t_render {t_render * 1e3:.1f} ms per frame")  # fmt: skip

        f, s = self.co3d_frames, self.co3d_size
        snaps_c = len(range(0, self.co3d_max_steps, self.co3d_every)) + 1
        base = payload_bytes(f, s, s, snaps_c, self.co3d_inputs, masks=False)
        renders = snaps_c * f * s * s * 3
        latents = snaps_c * f * int(torch.tensor(self.latent_shape).prod()) * 2
        scale = (s * s) / (self.size * self.size)
        secs = self.co3d_max_steps * t_step * scale + snaps_c * f * t_render * scale
        seq = self.co3d_sequences
        print(f"\n# projected CO3D export: {seq} sequences x {f} frames at {s}x{s}, {self.co3d_max_steps} steps "
              f"every {self.co3d_every} -> {snaps_c} snapshots per shard")  # fmt: skip
        print(
            f"renders uint8 {s}x{s}x3:        {renders / 2**30:8.2f} GiB/shard {seq * renders / 2**40:8.2f} TiB total"
        )
        print(
            f"latents fp16 {'x'.join(map(str, self.latent_shape))}:         {latents / 2**30:8.3f} GiB/shard "
            f"{seq * latents / 2**40:8.3f} TiB total (+{latents / renders:.1%} of the renders if stored too)"
        )
        print(f"shard as written (uint8 renders): {base / 2**30:8.2f} GiB/shard {seq * base / 2**40:8.2f} TiB total")
        print(f"CPU time (linear in pixels):      {secs / 3600:8.1f} h/shard   {seq * secs / 3600 / 24:8.0f} "
              f"core-days total at {torch.get_num_threads()} thread(s)/process")  # fmt: skip
        print(json.dumps({"measured_mean_seconds": round(mean_s, 2), "measured_mean_bytes": int(mean_bytes),
                          "co3d_bytes_per_shard": base, "co3d_latent_bytes_per_shard": latents,
                          "co3d_cpu_hours_per_shard": round(secs / 3600, 2)}))  # fmt: skip


if __name__ == "__main__":
    tyro.cli(BenchExporterConfig).main()
