"""Benchmark itergen's cost per optimisation step against the itergen-splatfacto baseline, on CPU.

Runs nerfstudio's Trainer (through itergen_ns.engine.runner, exactly what `ns-train` does) on a demo-like
procedural scene for: the baseline, itergen with synchronous generation and itergen with asynchronous generation.
Per run: mean wall time per step (BEFORE_TRAIN_ITERATION -> end of AFTER_TRAIN_ITERATION callbacks, so it includes
densification), split into

- render:   rendering the 3D model at the clip's poses (generation.timings["render"], always on the training thread);
- generate: diffusion sampling (generation.timings["generate"]). Sync: blocks the step. Async: runs in a worker
            thread, overlapped with training; shown as "bg" and not part of the step time;
- optimise: the rest (batch, forward, loss, backward, optimiser, densification, logging).

Render/generate are amortised: their totals divided by the number of steps. "cpu" is the process CPU time per step
(all threads: in async mode it includes the worker), which is less sensitive than wall time to other load on a shared
machine. Modes run interleaved ``--repeats`` times (after a warm-up run); the table shows per-mode medians and the
min-max range of the step time. The diffusion model is the untrained `tiny` config (timing only; pass
--generator-checkpoint for a trained one). Goal (issue 6): async <= 1.5x baseline.

    python scripts/bench_itergen.py [--size 64] [--steps 100] [--generate-every 50] [--num-inference-steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="scene folder (default: generate a demo-like scene)")
    p.add_argument("--size", type=int, default=64, help="image size of the generated scene (demo: 64)")
    p.add_argument("--frames", type=int, default=30, help="frames of the generated scene (demo: 30-36)")
    p.add_argument("--steps", type=int, default=100, help="optimisation steps per run")
    p.add_argument("--generate-every", type=int, default=50, help="steps between generations (demo: 50)")
    p.add_argument("--num-inference-steps", type=int, default=10, help="diffusion sampler steps per clip")
    p.add_argument("--init-num-points", type=int, default=3000, help="initial Gaussians (demo: 3000)")
    p.add_argument("--num-input-views", type=int, default=3)
    p.add_argument("--p-input", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (async overlaps on 2 cores at 1)")
    p.add_argument("--modes", nargs="+", default=["baseline", "sync", "async"], choices=["baseline", "sync", "async"])
    p.add_argument("--generator-checkpoint", type=Path, default=None, help="trained diffusion model directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per mode (medians reported)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def run_mode(mode: str, data: Path, out: Path, args: argparse.Namespace, steps: Optional[int] = None) -> Dict:
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    from itergen_ns.engine.runner import TrainSpec, build_config, train

    steps = steps or args.steps
    overrides: Dict[str, object] = {"pipeline.datamanager.init_num_points": args.init_num_points}
    if mode != "baseline":
        overrides.update(
            {
                "pipeline.generation.generate_every": args.generate_every,
                "pipeline.generation.async_generation": mode == "async",
                "pipeline.datamanager.p_input": args.p_input,
                "pipeline.generator.num_inference_steps": args.num_inference_steps,
            }
        )
        if args.generator_checkpoint is not None:
            overrides["pipeline.generator.checkpoint"] = args.generator_checkpoint
        else:
            overrides["pipeline.generator.random_init"] = True
    spec = TrainSpec(
        method="itergen-splatfacto" if mode == "baseline" else "itergen",
        data=data,
        output_dir=out,
        experiment_name=mode,
        num_input_views=args.num_input_views,
        steps=steps,
        seed=args.seed,
        overrides=overrides,
    )
    config = build_config(spec)
    config.machine.device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    step_times: List[float] = []
    state = {"t0": 0.0}

    def before(step: int) -> None:
        state["t0"] = time.perf_counter()

    def after(step: int) -> None:
        step_times.append(time.perf_counter() - state["t0"])

    callbacks = [
        TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before),
        TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after),
    ]
    state["cpu"] = 0.0

    def before_cpu(step: int) -> None:
        state["c0"] = time.process_time()

    def after_cpu(step: int) -> None:
        state["cpu"] += time.process_time() - state["c0"]

    callbacks.insert(0, TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before_cpu))
    callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after_cpu))
    start = time.perf_counter()
    trainer = train(config, callbacks=callbacks)
    total = time.perf_counter() - start
    generation = getattr(trainer.pipeline, "generation", None)  # None for the baseline
    timings = dict(generation.timings) if generation is not None else {"render": 0.0, "generate": 0.0}
    n = len(step_times)
    step = sum(step_times) / n
    render = timings["render"] / n
    generate = timings["generate"] / n
    blocking = generate if mode == "sync" else 0.0
    return {
        "mode": mode,
        "steps": n,
        "step_ms": 1e3 * step,
        "render_ms": 1e3 * render,
        "generate_ms": 1e3 * blocking,
        "generate_bg_ms": 1e3 * (generate - blocking),
        "optimise_ms": 1e3 * (step - render - blocking),
        "cpu_ms": 1e3 * state["cpu"] / n,
        "clips": int(generation.num_generations) if generation is not None else 0,
        "gaussians": int(trainer.pipeline.model.num_points),
        "run_s": total,
    }


def summarise(runs: List[Dict]) -> Dict:
    """Per-field medians over repeated runs of one mode, plus the step-time range."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
    out.update(mode=runs[0]["mode"], step_min=min(r["step_ms"] for r in runs), step_max=max(r["step_ms"] for r in runs))
    return out


def print_table(rows: List[Dict], args: argparse.Namespace) -> None:
    base = next((r["step_ms"] for r in rows if r["mode"] == "baseline"), None)
    header = (
        f"{'mode':<10}{'step ms':>9}{'(range)':>14}{'render':>8}{'generate':>10}{'gen (bg)':>10}{'optimise':>10}"
        f"{'cpu':>8}{'vs base':>9}{'clips':>7}{'gauss.':>8}"
    )
    print(
        f"\nitergen step-time benchmark: {args.size}px scene, {args.num_input_views} input views, {args.steps} steps, "
        f"{args.init_num_points} initial Gaussians, a clip of 8 frames every {args.generate_every} steps, "
        f"{args.num_inference_steps} sampler steps, p_input {args.p_input}, torch threads {args.threads}, "
        f"device {args.device}, median of {args.repeats} interleaved runs"
    )
    print("per-step means in ms; render/generate amortised over all steps; gen (bg) = async worker, overlapped")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['step_ms'] / base:.2f}x" if base else "-"
        spread = f"{r['step_min']:.0f}-{r['step_max']:.0f}"
        print(
            f"{r['mode']:<10}{r['step_ms']:>9.1f}{spread:>14}{r['render_ms']:>8.1f}{r['generate_ms']:>10.1f}"
            f"{r['generate_bg_ms']:>10.1f}{r['optimise_ms']:>10.1f}{r['cpu_ms']:>8.1f}{ratio:>9}{r['clips']:>7.0f}"
            f"{r['gaussians']:>8.0f}"
        )


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_itergen_") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            from itergen_ns.data.scenes import make_scenes

            make_scenes(work / "scenes", num_scenes=1, seed=args.seed, num_frames=args.frames, resolution=args.size)
            data = work / "scenes" / "scene_0000"
        run_mode("baseline", data, work / "warmup", args, steps=5)  # imports, allocator, rasterizer warm-up
        runs: Dict[str, List[Dict]] = {mode: [] for mode in args.modes}
        for _ in range(args.repeats):
            for mode in args.modes:
                runs[mode].append(run_mode(mode, data, work / "runs", args))
    rows = [summarise(runs[mode]) for mode in args.modes]
    print_table(rows, args)
    if args.json is not None:
        result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "runs": runs}
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
