"""The sparse-view gap of the baseline: `itergen-splatfacto` from many, 6 and 1 input views, scored on the SAME held-out
frames.

Fairness: the held-out set H (``--heldout`` frames spread evenly along the capture orbit) is fixed first and is never
an input of any setting. Inputs come from the remaining frames P: "many" uses all of P, the sparse settings take
frames spread evenly over P (nested: the 1 view is one of the 6). Every setting trains with the same method config,
step count, seeds and initial point count, and is scored on exactly the frames of H, so rows differ only in how many
views they saw. (``num-input-views 0``, nerfstudio's "all frames", would evaluate on training frames; it is
available as an optional, clearly labelled reference row with ``--dense-reference``.)

Writes ``results.json``, ``results.md`` and ``heldout_grid.png`` (rows: settings, then ground truth; columns: the
held-out frames) under ``--out``.

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_baseline_gap.py --steps 2000 --out outputs/bench_baseline_gap
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from itergen_ns.data.scenes import make_scenes
from itergen_ns.eval.metrics import image_metrics, mean_metrics
from itergen_ns.engine.runner import TrainSpec, build_config, train


def heldout_frames(num_frames: int, num_heldout: int) -> List[int]:
    """``num_heldout`` frames evenly spread over the sequence, offset by half a gap from frame 0."""
    step = num_frames / num_heldout
    return sorted({int(round(step * (i + 0.5))) % num_frames for i in range(num_heldout)})


def input_frames(pool: Sequence[int], views: int) -> List[int]:
    """``views`` frames evenly spread over ``pool`` (all of it when views >= len(pool)); nested for views | len."""
    if views >= len(pool):
        return list(pool)
    return [pool[int(round(j * len(pool) / views))] for j in range(views)]


@torch.no_grad()
def score_on_frames(pipeline, frames: Sequence[int]) -> Dict:
    """Render the pipeline at the given frame indices (all in its eval split) and score them."""
    model = pipeline.model
    model.eval()
    dataset = pipeline.datamanager.eval_dataset
    frame_of = list(dataset.metadata["split_indices"])  # eval-dataset position -> frame index of the sequence
    wanted = set(frames)
    per_frame, renders, targets, found = [], {}, {}, []
    for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
        frame = frame_of[int(batch["image_idx"])]
        if frame not in wanted:
            continue
        outputs = model.get_outputs_for_camera(camera)
        gt = model.composite_with_background(model.get_gt_img(batch["image"]), outputs["background"])[..., :3]
        pred = outputs["rgb"].clamp(0, 1)
        per_frame.append({"frame": frame, **image_metrics(pred, gt)})
        renders[frame] = (pred.cpu().numpy() * 255).round().astype(np.uint8)
        targets[frame] = (gt.cpu().numpy() * 255).round().astype(np.uint8)
        found.append(frame)
    missing = wanted - set(found)
    if missing:
        raise RuntimeError(f"frames {sorted(missing)} are not in the evaluation split")
    model.train()
    metrics = mean_metrics([{k: v for k, v in m.items() if k != "frame"} for m in per_frame])
    return {"mean": metrics, "per_frame": per_frame, "renders": renders, "targets": targets}


def run_setting(label: str, scene: Path, out: Path, inputs: Optional[List[int]], args) -> Dict:
    overrides = {
        "pipeline.datamanager.init_num_points": args.init_points,
        "machine.device_type": "cpu",
    }
    if inputs is not None:
        overrides["pipeline.datamanager.input_views"] = tuple(inputs)
    spec = TrainSpec(
        method="itergen-splatfacto",
        data=scene,
        output_dir=out / "runs",
        num_input_views=0 if inputs is None else len(inputs),
        steps=args.steps,
        seed=args.seed,
        experiment_name=f"views_{'all' if inputs is None else len(inputs)}",
        overrides=overrides,
    )
    config = build_config(spec)
    start = time.perf_counter()
    trainer = train(config)
    train_s = time.perf_counter() - start
    result = score_on_frames(trainer.pipeline, args.heldout_frames)
    result.update(
        label=label,
        inputs=inputs if inputs is not None else "all",
        train_seconds=train_s,
        num_gaussians=int(trainer.pipeline.model.num_points),
    )
    m = result["mean"]
    print(f"[bench] {label}: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f} ({train_s:.0f} s, {result['num_gaussians']} G)")
    return result


def grid_image(results: List[Dict], frames: Sequence[int], path: Path) -> None:
    rows = [np.concatenate([r["renders"][f] for f in frames], axis=1) for r in results]
    rows.append(np.concatenate([results[0]["targets"][f] for f in frames], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def markdown_table(results: List[Dict], args) -> str:
    has_lpips = all("lpips" in r["mean"] for r in results)
    head = "| setting | input frames | PSNR | SSIM |" + (" LPIPS |" if has_lpips else "") + " Gaussians | train s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        m = r["mean"]
        inputs = r["inputs"] if isinstance(r["inputs"], str) else f"{len(r['inputs'])}"
        cells = [r["label"], inputs, f"{m['psnr']:.2f}", f"{m['ssim']:.3f}"]
        if has_lpips:
            cells.append(f"{m['lpips']:.3f}")
        cells += [str(r["num_gaussians"]), f"{r['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\nScene: procedural hydrant seed {args.scene_seed}, {args.frames} frames at {args.resolution}x{args.resolution}"
        f" px; held-out frames {args.heldout_frames} (scored for every row); {args.steps} steps; "
        f"{args.init_points} initial points; training seed {args.seed}; CPU torch rasterizer.\n"
        f"\nheldout_grid.png: one row per setting ({', '.join(r['label'] for r in results)}), then the ground truth;"
        " one column per held-out frame.\n"
    )
    return "\n".join(lines) + "\n" + note


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_baseline_gap"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--heldout", type=int, default=6, help="held-out frames, shared by every setting")
    parser.add_argument("--views", type=int, nargs="+", default=[0, 6, 1], help="0: every non-held-out frame")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--init-points", type=int, default=5000)
    parser.add_argument("--scene-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument(
        "--dense-reference",
        action="store_true",
        help="also train on all frames (held-out ones included: optimistic, not a fair row)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    scenes = args.out / "scenes"
    scene = scenes / "scene_0000"
    if not (scene / "transforms.json").is_file():
        make_scenes(scenes, 1, seed=args.scene_seed, num_frames=args.frames, resolution=args.resolution)
    args.heldout_frames = heldout_frames(args.frames, args.heldout)
    pool = [i for i in range(args.frames) if i not in set(args.heldout_frames)]

    results = []
    for views in args.views:
        inputs = input_frames(pool, views if views > 0 else len(pool))
        label = f"{len(inputs)} view" + ("s" if len(inputs) > 1 else "")
        results.append(run_setting(label, scene, args.out, inputs, args))
    if args.dense_reference:
        results.append(run_setting(f"all {args.frames} (incl. held-out)", scene, args.out, None, args))

    args.out.mkdir(parents=True, exist_ok=True)
    grid_image(results, args.heldout_frames, args.out / "heldout_grid.png")
    table = markdown_table(results, args)
    (args.out / "results.md").write_text(table)
    serialisable = [{k: v for k, v in r.items() if k not in ("renders", "targets")} for r in results]
    settings = {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "results": serialisable}, indent=2))
    print(table)
    return results


if __name__ == "__main__":
    main()
