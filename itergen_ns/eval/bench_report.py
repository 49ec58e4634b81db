"""Report of ``itergen bench``: paired differences to the baseline with 95% CIs (best-of-S and mean over samples),
per-scene tables, far-side grids and orbit videos per method (docs/protocol.md)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.eval.images import label_image, write_video
from itergen_ns.io import atomic_write_text
from itergen_ns.eval.report import best_runs

BENCH_METRICS = ("psnr", "ssim", "masked_psnr", "iou", "lpips", "seconds")
BENCH_LABELS = {
    "psnr": "PSNR",
    "ssim": "SSIM",
    "masked_psnr": "object PSNR",
    "iou": "silhouette IoU",
    "lpips": "LPIPS",
    "seconds": "wall s",
}


def frame_azimuths(scene_dir: Path) -> np.ndarray:
    """Azimuth (radians) of every frame's camera around the object's vertical axis, from transforms.json
    (procedural scenes: z up, ``itergen_scene.object_center``; others: the mean camera position's vertical)."""
    meta = json.loads((Path(scene_dir) / "transforms.json").read_text())
    pos = np.array([np.asarray(f["transform_matrix"], dtype=np.float64)[:3, 3] for f in meta["frames"]])
    extra = meta.get("itergen_scene", {})
    centre = np.asarray(extra.get("object_center", pos.mean(0)), dtype=np.float64)
    up = np.asarray(extra.get("up", [0.0, 0.0, 1.0]), dtype=np.float64)
    up = up / np.linalg.norm(up)
    a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    rel = pos - centre
    return np.arctan2(rel @ b, rel @ a)


def far_side_frames(
    azimuths: np.ndarray, inputs: Sequence[int], candidates: Sequence[int], count: int = 2
) -> List[int]:
    """``count`` held-out frames: the one farthest in azimuth from every input view first (the far side), then
    frames at evenly spaced ranks of that distance down to the nearest."""
    inputs = list(inputs)
    dist = []
    for i in candidates:
        d = np.abs(np.angle(np.exp(1j * (azimuths[i] - azimuths[inputs]))))
        dist.append(float(d.min()))
    order = [candidates[k] for k in np.argsort(dist)[::-1]]
    picks = [order[int(round(k))] for k in np.linspace(0, len(order) - 1, min(count, len(order)))]
    return list(dict.fromkeys(picks))


def _scaled(image: np.ndarray, size: int = 128) -> np.ndarray:
    scale = max(1, size // image.shape[1])
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def far_side_grid(
    rows: Sequence[Tuple[str, np.ndarray, Dict[str, np.ndarray], np.ndarray]], methods: Sequence[str]
) -> np.ndarray:
    """Rows (label, input image, {method: render}, ground truth) -> one image; columns input | methods | GT,
    cells enlarged to >= 128 px, the first row labelled with the column names and each row with its frame."""
    out = []
    for k, (label, inp, renders, gt) in enumerate(rows):
        cells = [_scaled(inp)] + [_scaled(renders[m]) for m in methods] + [_scaled(gt)]
        names = ["input"] + list(methods) + ["ground truth"]
        texts = [n if k == 0 else "" for n in names]
        texts[0] = f"{texts[0]}\n{label}" if texts[0] else label
        cells = [label_image(c, t) for c, t in zip(cells, texts)]
        out.append(np.concatenate(cells, axis=1))
    return np.concatenate(out, axis=0)


def _fmt(value: float, metric: str) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return (
        f"{value:.1f}"
        if metric == "seconds"
        else f"{value:.3f}"
        if metric in ("ssim", "iou", "lpips")
        else f"{value:.2f}"
    )


def bench_tables(results: Sequence[Dict], baseline: str, metrics: Sequence[str]) -> List[str]:
    """Markdown lines: per view count and aggregate, each method's mean over scenes and its paired difference
    to the baseline with the 95% CI, then per-scene PSNR (best-of-S)."""
    from itergen_ns.eval.stats import format_ci, method_summary, paired_differences, per_scene

    lines: List[str] = []
    for views in sorted({r["views"] for r in results}):
        sub = [r for r in results if r["views"] == views]
        for aggregate in ("best", "mean"):
            title = (
                "best of S (the sample with the highest PSNR per scene)" if aggregate == "best" else "mean over samples"
            )
            summary = {(r["method"], r["metric"]): r for r in method_summary(sub, metrics, aggregate)}
            paired = {(r["method"], r["metric"]): r for r in paired_differences(sub, baseline, metrics, aggregate)}
            methods = sorted({r["method"] for r in sub}, key=lambda m: (m != baseline, m))
            lines += [
                f"### {views} input view{'s' if views > 1 else ''}: {title}",
                "",
                "| method | scenes | "
                + " | ".join(f"{BENCH_LABELS[m]} | Δ {BENCH_LABELS[m]} [95% CI]" for m in metrics)
                + " |",
                "|" + "---|" * (2 + 2 * len(metrics)),
            ]
            for method in methods:
                cells = [
                    method + (" (baseline)" if method == baseline else ""),
                    str(summary.get((method, metrics[0]), {}).get("n", 0)),
                ]
                for m in metrics:
                    s = summary.get((method, m))
                    cells.append(_fmt(s["mean"], m) if s else "–")
                    p = paired.get((method, m))
                    digits = 1 if m == "seconds" else 3 if m in ("ssim", "iou", "lpips") else 2
                    cells.append(
                        format_ci(p["diff_mean"], p["diff_ci_low"], p["diff_ci_high"], digits)
                        + f" ({p['wins']}/{p['scenes']} up)"
                        if p
                        else ""
                    )
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        table = per_scene(sub, ("psnr",), "best")
        scenes = sorted({r["scene"] for r in sub})
        methods = sorted({r["method"] for r in sub}, key=lambda m: (m != baseline, m))
        lines += [
            f"Per-scene PSNR, {views} view{'s' if views > 1 else ''}, best of S:",
            "",
            "| scene | " + " | ".join(methods) + " |",
            "|" + "---|" * (1 + len(methods)),
        ]
        for scene in scenes:
            lines.append(
                f"| {scene} | "
                + " | ".join(
                    _fmt(table.get((m, views), {}).get(scene, {}).get("psnr", float("nan")), "psnr") for m in methods
                )
                + " |"
            )
        lines.append("")
    return lines


def write_bench_report(
    results: Sequence[Dict],
    output_dir: Path,
    settings: Dict,
    baseline: str,
    report_scenes: int = 3,
    grid_methods: Sequence[str] = ("itergen-splatfacto", "itergen"),
) -> Path:
    """report.md, results.json (runs, per-scene values, paired differences with CIs), results.csv, one far-side
    grid per view count (input | baseline | itergen | GT) and one orbit video per (method, views)."""
    from itergen_ns.eval.stats import AGGREGATES, method_summary, paired_differences, per_scene

    output_dir = Path(output_dir)
    metrics = [m for m in BENCH_METRICS if m == "seconds" or any(m in r["metrics"] for r in results)]
    payload = {
        "settings": {
            k: (v if isinstance(v, (int, float, bool, dict, list)) or v is None else str(v))
            for k, v in settings.items()
        },
        "baseline": baseline,
        "metrics": metrics,
        "summary": {a: method_summary(results, metrics, a) for a in AGGREGATES},
        "paired": {a: paired_differences(results, baseline, metrics, a) for a in AGGREGATES},
        "per_scene": {
            a: [
                {"method": k[0], "views": k[1], "scene": s, **v}
                for k, scenes in per_scene(results, metrics, a).items()
                for s, v in sorted(scenes.items())
            ]
            for a in AGGREGATES
        },
        "runs": [{k: v for k, v in r.items() if k != "per_frame"} for r in results],
    }
    atomic_write_text(output_dir / "results.json", json.dumps(payload, indent=2, default=str))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["scene", "views", "method", "sample"] + metrics)
    for r in results:
        values = [r.get("seconds") if m == "seconds" else r["metrics"].get(m) for m in metrics]
        writer.writerow(
            [r["scene"], r["views"], r["method"], r["sample"]] + ["" if v is None else f"{v:.5f}" for v in values]
        )
    atomic_write_text(output_dir / "results.csv", buf.getvalue())

    figures, videos = [], []
    runs_dir = output_dir / "runs"
    heldout = sorted({r["scene"] for r in results})
    for views in sorted({r["views"] for r in results}):
        rows = []
        for scene in heldout[:report_scenes]:
            best = best_runs(results, scene, views)
            methods = [m for m in grid_methods if m in best]
            gt_file = runs_dir / scene / "ground_truth.npz"
            if not methods or not gt_file.exists():
                continue
            gt = np.load(gt_file)["images"]
            renders = {
                m: np.load(runs_dir / scene / f"{views}v" / f"{m}-s{best[m]['sample']}" / "frames.npz")["renders"]
                for m in methods
            }
            run = best[methods[0]]
            az = frame_azimuths(Path(run["scene_path"]))
            for f in far_side_frames(az, run["input_indices"], run["eval_indices"], 2):
                gap = np.degrees(np.abs(np.angle(np.exp(1j * (az[f] - az[run["input_indices"]])))).min())
                rows.append(
                    (
                        f"{scene[-4:]} f{f} {gap:.0f}deg",
                        gt[run["input_indices"][0]],
                        {m: renders[m][f] for m in methods},
                        gt[f],
                    )
                )
        if rows:
            methods = [m for m in grid_methods if all(m in row[2] for row in rows)]
            path = output_dir / "grids" / f"far_side_{views}v.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(far_side_grid(rows, methods)).save(path)
            figures.append(path)
        if heldout:  # orbit video of every method on the first held-out scene: render | ground truth
            scene = heldout[0]
            gt_file = runs_dir / scene / "ground_truth.npz"
            for method, r in sorted(best_runs(results, scene, views).items()):
                frames = runs_dir / scene / f"{views}v" / f"{method}-s{r['sample']}" / "frames.npz"
                if gt_file.exists() and frames.exists():
                    orbit = np.concatenate([np.load(frames)["renders"], np.load(gt_file)["images"]], axis=2)
                    videos.append(write_video(orbit, output_dir / "videos" / f"{method}_{views}v.mp4"))

    lines = [
        "# itergen proxy benchmark",
        "",
        f"{len(heldout)} held-out procedural scenes; metrics on the frames that were not input views. Δ: mean "
        f"over scenes of the paired difference method − {baseline} on the same scene and input views, with a "
        "Student-t 95% confidence interval; (k/n up): scenes where the method is higher. Object PSNR: MSE over "
        "the ground-truth mask's pixels; silhouette IoU: accumulated opacity of the Gaussians inside the "
        "object's bounding sphere > 0.5 vs the mask; wall s: training + rendering time of one run.",
        "",
    ]
    lines += bench_tables(results, baseline, metrics)
    for fig in figures:
        lines += [
            f"![{fig.stem}](grids/{fig.name})",
            "",
            "Rows: held-out frames, the farthest in azimuth from any input first (its angle in the label).",
            "",
        ]
    if videos:
        lines += [
            "Orbit videos (render | ground truth, first held-out scene): "
            + ", ".join(f"[{v.stem}](videos/{v.name})" for v in videos),
            "",
        ]
    lines += ["Settings:", "", "```", json.dumps(payload["settings"], indent=1, default=str), "```", ""]
    report = output_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    CONSOLE.print("\n".join(bench_tables(results, baseline, ["psnr", "ssim"])))
    CONSOLE.print(f"Report: {report}")
    return report
