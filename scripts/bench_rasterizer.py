"""Benchmark the pure-PyTorch rasterizer on CPU: forward+backward time and peak memory.

Scene: N Gaussians uniformly spread over the view frustum at depths 2-6, anisotropic with random
rotations, world scales chosen so the projected standard deviation is log-uniform in [0.4, 2.5] px at
the rendered resolution (3-sigma radii of a few pixels, as in a trained splatfacto scene), opacities
uniform in [0.1, 0.9], SH degree 3 colours (``--fixed-world``: world scales calibrated at 128² and
kept, so footprints grow with resolution: ~2.5 px radii at 64², ~10 px at 256²), one camera, splatfacto's call (packed=False, RGB) and an
L1 loss on the image plus a small alpha term.

Time: median over ``--repeats`` runs, after ``--warmup`` runs, of render + ``loss.backward()``:
wall clock, and CPU time of the process (all threads; robust to other load on the machine).
Memory: peak process RSS minus the RSS just before a run, sampled every 0.5 ms by a thread, in a
child process started with ``MALLOC_MMAP_THRESHOLD_`` fixed so that glibc returns freed tensor
memory to the OS (otherwise RSS would not fall back between runs and deltas would read ~0). It is
taken after warm-up, so it excludes the rasterizer's persistent per-thread scratch buffers
(6 x chunk_elems floats, 6 MB by default) but includes everything autograd keeps alive.

    python scripts/bench_rasterizer.py [--sizes 64 128 256] [--counts 5000 20000 50000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager sampling RSS in a thread; ``.delta`` = peak - RSS at entry (bytes)."""

    def __init__(self, interval: float = 5e-4):
        self.interval, self.delta = interval, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._base = self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.delta = self._peak - self._base


def make_scene(n: int, size: int, seed: int = 0, sh_degree: int = 3, scale_size: int | None = None):
    """Random splatfacto-like Gaussians in front of an identity camera with ~53 degree FOV.

    World scales give the stated pixel footprints at resolution ``scale_size`` (default: ``size``).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    f = size / (2 * math.tan(math.radians(26.5)))
    f_scale = (scale_size or size) / (2 * math.tan(math.radians(26.5)))
    z = 2.0 + 4.0 * torch.rand(n, generator=g)
    ndc = (torch.rand(n, 2, generator=g) * 2 - 1) * 1.05  # a few just off-screen
    xy = ndc * (size / 2) / f * z[:, None]
    means = torch.cat([xy, z[:, None]], dim=1)
    sigma_px = torch.exp(math.log(0.4) + (math.log(2.5) - math.log(0.4)) * torch.rand(n, generator=g))
    aniso = 0.5 + torch.rand(n, 3, generator=g)
    scales = (sigma_px * z / f_scale)[:, None] * aniso
    quats = torch.randn(n, 4, generator=g)
    opacities = 0.1 + 0.8 * torch.rand(n, generator=g)
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.2
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])[None]
    return means, quats, scales, opacities, sh, torch.eye(4)[None], K


def bench_one(
    size: int, n: int, warmup: int, repeats: int, sh_degree: int, backend: str, fixed_world: bool, **opts
) -> dict:
    """Median wall / CPU ms and max RSS delta (MB) of forward+backward for one configuration."""
    import torch

    from itergen_ns.render import rasterization

    scale_size = 128 if fixed_world else None
    means, quats, scales, opac, sh, viewmats, Ks = make_scene(n, size, sh_degree=sh_degree, scale_size=scale_size)
    params = [t.requires_grad_(True) for t in (means, quats, scales, opac, sh)]
    bg = torch.tensor([[0.3, 0.3, 0.3]])
    walls, cpus, mems = [], [], []
    for i in range(warmup + repeats):
        for p in params:
            p.grad = None
        with PeakRSS() as mem:
            w0, c0 = time.perf_counter(), time.process_time()
            rgb, alpha, info = rasterization(
                *params, viewmats, Ks, size, size, sh_degree=sh_degree, packed=False, backgrounds=bg,
                backend=backend, **opts,
            )  # fmt: skip
            info["means2d"].retain_grad()
            loss = (rgb - 0.5).abs().mean() + 0.1 * alpha.mean()
            loss.backward()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if i >= warmup:
            walls.append(wall)
            cpus.append(cpu)
            mems.append(mem.delta)
        plan = info.get("tile_plan")
        pairs = plan.n_pairs if plan is not None else 0
        radii = info["radii"][info["radii"] > 0].float()
        del rgb, alpha, loss, info
    return {
        "wall_ms": statistics.median(walls) * 1e3,
        "cpu_ms": statistics.median(cpus) * 1e3,
        "mem_mb": max(mems) / 2**20,
        "pairs": pairs,
        "visible": radii.numel(),
        "mean_radius": radii.mean().item(),
    }


def _measure_memory(args: argparse.Namespace, size: int, n: int) -> float:
    """Peak RSS delta measured in a child process with glibc's mmap threshold fixed."""
    cmd = [sys.executable, __file__, "--child", f"{size},{n}", "--warmup", "1", "--repeats", "2"]
    cmd += ["--sh-degree", str(args.sh_degree), "--backend", args.backend] + (
        ["--fixed-world"] if args.fixed_world else []
    )
    for flag in ("threads", "sub_tile", "chunk_elems"):
        if getattr(args, flag):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = dict(os.environ, **{MMAP_ENV: str(1 << 17)})
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["mem_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--counts", type=int, nargs="+", default=[5000, 20000, 50000])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--sh-degree", type=int, default=3)
    ap.add_argument("--sub-tile", type=int, default=None)
    ap.add_argument("--chunk-elems", type=int, default=None)
    ap.add_argument("--backend", default="torch", choices=["auto", "torch", "gsplat"])
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--fixed-world", action="store_true", help="same world scene at every resolution")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    opts = {k: v for k, v in (("sub_tile", args.sub_tile), ("chunk_elems", args.chunk_elems)) if v}
    if args.child:
        size, n = (int(v) for v in args.child.split(","))
        print(
            json.dumps(
                bench_one(size, n, args.warmup, args.repeats, args.sh_degree, args.backend, args.fixed_world, **opts)
            )
        )
        return

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend={args.backend}, SH degree {args.sh_degree}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    print("wall / cpu = median fwd+bwd (cpu: process time, all threads); mem = peak RSS delta")
    header = (
        f"{'res':>5} {'N':>7} {'wall ms':>9} {'cpu ms':>9} {'peak MB':>9} {'visible':>8} {'mean r px':>9} {'pairs':>8}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for n in args.counts:
            r = bench_one(size, n, args.warmup, args.repeats, args.sh_degree, args.backend, args.fixed_world, **opts)
            mem = float("nan") if args.no_memory else _measure_memory(args, size, n)
            print(
                f"{size:>4}² {n:>7} {r['wall_ms']:>9.1f} {r['cpu_ms']:>9.1f} {mem:>9.1f} {r['visible']:>8} "
                f"{r['mean_radius']:>9.2f} {r['pairs']:>8}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
