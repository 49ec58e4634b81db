"""Report of ``itergen eval``: markdown + JSON + CSV tables, image grids and orbit videos (docs/protocol.md);
the benchmark's paired report is :mod:`itergen_ns.eval.bench_report`."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
from PIL import Image

from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.eval.images import image_grid, write_video
from itergen_ns.io import atomic_write_text

METRICS = ("psnr", "ssim", "lpips")


def summarize_results(results: Sequence[Dict]) -> List[Dict]:
    """One row per (method, views): best-of-S (best PSNR sample per scene, averaged over scenes) and
    mean ± std over every (scene, sample) run."""
    groups: Dict[tuple, Dict[str, List[Dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[(r["method"], r["views"])][r["scene"]].append(r)
    rows = []
    for (method, views), by_scene in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        best = [max(runs, key=lambda r: r["metrics"]["psnr"]) for runs in by_scene.values()]
        every = [r for runs in by_scene.values() for r in runs]
        row = {"method": method, "views": views, "scenes": len(by_scene), "runs": len(every)}
        for m in METRICS:
            vals = [r["metrics"][m] for r in every if m in r["metrics"]]
            if not vals:
                continue
            row[f"{m}_best"] = float(np.mean([r["metrics"][m] for r in best if m in r["metrics"]]))
            row[f"{m}_mean"] = float(np.mean(vals))
            row[f"{m}_std"] = float(np.std(vals))
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Dict]) -> str:
    metrics = [m for m in METRICS if any(f"{m}_mean" in r for r in rows)]
    head = (
        "| views | method | runs | " + " | ".join(f"{m.upper()} best | {m.upper()} mean ± std" for m in metrics) + " |"
    )
    sep = "|" + "---|" * (3 + 2 * len(metrics))
    lines = [head, sep]
    for r in rows:
        cells = [str(r["views"]), r["method"], str(r["runs"])]
        for m in metrics:
            if f"{m}_mean" in r:
                cells += [f"{r[f'{m}_best']:.3f}", f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}"]
            else:
                cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frame_ci_table(
    results: Sequence[Dict], baseline: str = "itergen-splatfacto", metrics: Sequence[str] = ("psnr", "ssim")
) -> str:
    """Per scene and view count: each method's mean with its 95% CI over held-out frames (samples averaged per
    frame) and, for the other methods, the paired per-frame difference to ``baseline``."""
    from itergen_ns.eval.stats import format_ci, frame_differences

    rows = frame_differences(results, baseline, metrics)
    if not rows:
        return ""
    lines = [
        "| scene | views | method | samples | frames | "
        + " | ".join(f"{m.upper()} mean [95% CI] | {m.upper()} − {baseline} [95% CI] (frames up)" for m in metrics)
        + " |",
        "|" + "---|" * (5 + 2 * len(metrics)),
    ]
    by_key: Dict[tuple, Dict[str, Dict]] = defaultdict(dict)
    for r in rows:
        by_key[(r["scene"], r["views"], r["method"])][r["metric"]] = r
    for (scene, views, method), cells in by_key.items():
        first = next(iter(cells.values()))
        out = [scene, str(views), method, str(first["samples"]), str(first["n"])]
        for m in metrics:
            cell = cells.get(m)
            if cell is None:
                out += ["–", "–"]
                continue
            digits = 2 if m == "psnr" else 3
            mean = f"{cell['mean']:.{digits}f} [{cell['ci_low']:.{digits}f}, {cell['ci_high']:.{digits}f}]"
            diff = "–"
            if "diff_mean" in cell:
                diff = format_ci(cell["diff_mean"], cell["diff_ci_low"], cell["diff_ci_high"], digits)
                diff += f" ({cell['wins']}/{cell['frames_paired']})"
            out += [mean, diff]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def best_runs(results: Sequence[Dict], scene: str, views: int) -> Dict[str, Dict]:
    """method -> its run with the highest PSNR on (scene, views): the best-of-S sample both reports show."""
    best: Dict[str, Dict] = {}
    for r in results:
        if r["scene"] == scene and r["views"] == views:
            if r["method"] not in best or r["metrics"]["psnr"] > best[r["method"]]["metrics"]["psnr"]:
                best[r["method"]] = r
    return best


def write_report(results: Sequence[Dict], output_dir: Path, config: Any = None) -> Path:
    """Write report.md, results.json, results.csv, grids/ and videos/ under ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize_results(results)
    settings = _settings(config)
    _write_results(results, rows, settings, output_dir)
    figures = _write_figures(results, output_dir, getattr(config, "report_frames", 4))
    report = output_dir / "report.md"
    atomic_write_text(report, "\n".join(_report_lines(results, rows, settings, figures)))
    CONSOLE.print(markdown_table(rows))
    CONSOLE.print(f"Report: {report}")
    return report


def _settings(config: Any) -> Dict[str, str]:
    """The run settings the report names (from an ``EvalConfig``; none without one)."""
    if config is None:
        return {}
    return {
        k: str(v)
        for k, v in vars(config).items()
        if k in ("methods", "views", "samples", "steps", "data", "generator_checkpoint", "use_masks")
    }


def _write_results(results: Sequence[Dict], rows: List[Dict], settings: Dict[str, str], output_dir: Path) -> None:
    """results.json (settings, summary rows, every run) and results.csv (one line per run)."""
    atomic_write_text(
        output_dir / "results.json",
        json.dumps({"settings": settings, "summary": rows, "runs": list(results)}, indent=2),
    )
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["scene", "views", "method", "sample", "seconds"] + list(METRICS))
    for r in results:
        writer.writerow(
            [r["scene"], r["views"], r["method"], r["sample"], r["seconds"]]
            + [f"{r['metrics'][m]:.5f}" if m in r["metrics"] else "" for m in METRICS]
        )
    atomic_write_text(output_dir / "results.csv", buf.getvalue())


def _write_figures(results: Sequence[Dict], output_dir: Path, report_frames: int) -> List[Path]:
    """Per (scene, views) with saved frames: an image grid of the best-of-S runs and an orbit video of the first
    itergen row (else the first row) beside the ground truth; returns the grids' paths."""
    figures = []
    runs_dir = output_dir / "runs"
    for scene in sorted({r["scene"] for r in results}):
        gt_file = runs_dir / scene / "ground_truth.npz"
        if not gt_file.exists():
            continue
        gt = np.load(gt_file)["images"]
        for views in sorted({r["views"] for r in results if r["scene"] == scene}):
            best = best_runs(results, scene, views)
            renders = {}
            for method, r in best.items():
                f = runs_dir / scene / f"{views}v" / f"{method}-s{r['sample']}" / "frames.npz"
                if f.exists():
                    renders[method] = np.load(f)["renders"]
            if not renders:
                continue
            any_run = next(iter(best.values()))
            grid = image_grid(gt, renders, any_run["input_indices"], any_run["eval_indices"], report_frames)
            grid_path = output_dir / "grids" / f"{scene}_{views}v.png"
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(grid_path)
            figures.append(grid_path)
            video_method = next(
                (m for m in renders if m.startswith("itergen") and m != "itergen-splatfacto"), next(iter(renders))
            )
            orbit = np.concatenate([renders[video_method], gt], axis=2)
            write_video(orbit, output_dir / "videos" / f"{scene}_{views}v_{video_method}.mp4")
    return figures


def _report_lines(
    results: Sequence[Dict], rows: List[Dict], settings: Dict[str, str], figures: Sequence[Path]
) -> List[str]:
    """report.md: settings, the best-of-S / mean table, the per-frame CI table when there is one, the grids."""
    lines = ["# itergen evaluation", ""]
    if settings:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    lines += [
        "Metrics on every frame that was not an input view. *best*: the sample with the highest PSNR per scene "
        "(the paper's protocol), averaged over scenes; *mean ± std*: over all (scene, sample) runs.",
        "",
        markdown_table(rows),
        "",
    ]
    frames_table = frame_ci_table(results)
    if frames_table:
        lines += [
            "Per scene, 95% Student-t intervals over held-out frames (each frame's value averaged over a method's "
            "samples; differences paired frame by frame). Frames of one capture are correlated: these intervals "
            "describe this capture, not the method over captures.",
            "",
            frames_table,
            "",
        ]
    for fig in figures:
        lines += [f"![{fig.stem}](grids/{fig.name})", ""]
    return lines


# --- the proxy benchmark (`itergen bench`) ---------------------------------------------------------------------------
