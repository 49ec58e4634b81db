"""Report of ``itergen bench``: paired differences to the baseline with 95% CIs (best-of-S and mean over samples),
per-scene tables, far-side grids and orbit videos per method (docs/protocol.md; the figures are drawn by
:mod:`itergen_ns.eval.bench_figures`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.eval.bench_figures import write_bench_figures
from itergen_ns.io import atomic_write_text

BENCH_METRICS = ("psnr", "ssim", "masked_psnr", "iou", "lpips", "seconds")
BENCH_LABELS = {
    "psnr": "PSNR",
    "ssim": "SSIM",
    "masked_psnr": "object PSNR",
    "iou": "silhouette IoU",
    "lpips": "LPIPS",
    "seconds": "wall s",
}


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
    output_dir = Path(output_dir)
    metrics = [m for m in BENCH_METRICS if m == "seconds" or any(m in r["metrics"] for r in results)]
    payload = _bench_payload(results, settings, baseline, metrics)
    atomic_write_text(output_dir / "results.json", json.dumps(payload, indent=2, default=str))
    atomic_write_text(output_dir / "results.csv", _bench_csv(results, metrics))
    figures, videos = write_bench_figures(results, output_dir, report_scenes, grid_methods)
    lines = _bench_lines(results, baseline, metrics, figures, videos, payload["settings"])
    report = output_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    CONSOLE.print("\n".join(bench_tables(results, baseline, ["psnr", "ssim"])))
    CONSOLE.print(f"Report: {report}")
    return report


def _bench_payload(results: Sequence[Dict], settings: Dict, baseline: str, metrics: Sequence[str]) -> Dict:
    """results.json: settings (JSON values, others as strings), summaries, paired differences and per-scene
    values for every aggregate, and the runs without their per-frame values."""
    from itergen_ns.eval.stats import AGGREGATES, method_summary, paired_differences, per_scene

    return {
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


def _bench_csv(results: Sequence[Dict], metrics: Sequence[str]) -> str:
    """results.csv: one line per run with each metric to 5 decimals (empty where the run lacks it)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["scene", "views", "method", "sample"] + list(metrics))
    for r in results:
        values = [r.get("seconds") if m == "seconds" else r["metrics"].get(m) for m in metrics]
        writer.writerow(
            [r["scene"], r["views"], r["method"], r["sample"]] + ["" if v is None else f"{v:.5f}" for v in values]
        )
    return buf.getvalue()


def _bench_lines(
    results: Sequence[Dict],
    baseline: str,
    metrics: Sequence[str],
    figures: Sequence[Path],
    videos: Sequence[Path],
    settings: Dict,
) -> List[str]:
    """report.md: what the numbers mean, the tables, the grids, links to the videos and the settings."""
    heldout = sorted({r["scene"] for r in results})
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
    lines += ["Settings:", "", "```", json.dumps(settings, indent=1, default=str), "```", ""]
    return lines
