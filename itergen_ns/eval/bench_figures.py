"""Figures of ``itergen bench``'s report: per view count, a grid of far-side held-out frames (the farthest in
azimuth from every input view) of the best-of-S runs, and orbit videos of every method beside the ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from itergen_ns.eval.images import label_image, write_video
from itergen_ns.eval.report import best_runs

GridRow = Tuple[str, np.ndarray, Dict[str, np.ndarray], np.ndarray]
"""A far-side grid row: (label, input image, {method: render}, ground truth)."""


def write_bench_figures(
    results: Sequence[Dict], output_dir: Path, report_scenes: int, grid_methods: Sequence[str]
) -> Tuple[List[Path], List[Path]]:
    """Per view count: the far-side grid of the first ``report_scenes`` held-out scenes and the orbit videos of
    every method on the first one (render | ground truth); returns the grids' and the videos' paths."""
    figures, videos = [], []
    runs_dir = output_dir / "runs"
    heldout = sorted({r["scene"] for r in results})
    for views in sorted({r["views"] for r in results}):
        rows = []
        for scene in heldout[:report_scenes]:
            rows += _far_side_rows(results, runs_dir, scene, views, grid_methods)
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
    return figures, videos


def _far_side_rows(
    results: Sequence[Dict], runs_dir: Path, scene: str, views: int, grid_methods: Sequence[str]
) -> List[GridRow]:
    """The far-side grid's rows of one scene (``far_side_grid``): two held-out frames of the best-of-S runs, the
    farthest in azimuth from any input first; none when no grid method ran or the ground truth is missing."""
    best = best_runs(results, scene, views)
    methods = [m for m in grid_methods if m in best]
    gt_file = runs_dir / scene / "ground_truth.npz"
    if not methods or not gt_file.exists():
        return []
    gt = np.load(gt_file)["images"]
    renders = {
        m: np.load(runs_dir / scene / f"{views}v" / f"{m}-s{best[m]['sample']}" / "frames.npz")["renders"]
        for m in methods
    }
    run = best[methods[0]]
    az = frame_azimuths(Path(run["scene_path"]))
    rows = []
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
    return rows


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


def far_side_grid(rows: Sequence[GridRow], methods: Sequence[str]) -> np.ndarray:
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
