"""Paired statistics of the benchmark: per-scene values, method − baseline differences and their 95% CI.

Methods are compared *paired* on the same scenes and input views (docs/protocol.md): scene-to-scene spread is much
larger than the effects we look for, so the interval is that of the mean of per-scene differences (Student t
with n − 1 degrees of freedom), not of two independent means. Each scene contributes one value per method,
either its best-of-S sample (the paper's protocol: the sample with the highest PSNR, all metrics taken from that
sample) or the mean over its samples.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import stats as _scipy_stats

AGGREGATES = ("best", "mean")
"""best: the run with the highest PSNR per scene (paper); mean: the mean over a scene's samples."""


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Dict[str, float]:
    """Mean, standard deviation (ddof 1), n and the two-sided Student-t confidence interval of the mean.

    With fewer than two finite values the interval is NaN (one scene says nothing about spread).
    """
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "std": math.nan, "n": n, "ci_low": math.nan, "ci_high": math.nan, "half_width": math.nan}
    std = float(x.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half, "half_width": half}


def per_scene(
    results: Sequence[Dict], metrics: Sequence[str], aggregate: str = "best", select_by: str = "psnr"
) -> Dict[tuple, Dict[str, Dict[str, float]]]:
    """{(method, views): {scene: {metric: value}}} with one value per scene.

    ``aggregate="best"`` keeps the run with the highest ``select_by`` per scene and reports all metrics of that
    run (the paper's best-of-S); ``"mean"`` averages each metric over the scene's runs. ``seconds`` (wall time)
    is a valid metric name: it is read from the run record.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    groups: Dict[tuple, Dict[str, List[Dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[(r["method"], r["views"])][r["scene"]].append(r)

    def value(run: Dict, m: str) -> float:
        v = run.get("seconds") if m == "seconds" else run["metrics"].get(m)
        return math.nan if v is None else float(v)

    out: Dict[tuple, Dict[str, Dict[str, float]]] = {}
    for key, by_scene in groups.items():
        out[key] = {}
        for scene, runs in by_scene.items():
            if aggregate == "best":
                best = max(runs, key=lambda r: value(r, select_by))
                out[key][scene] = {m: value(best, m) for m in metrics}
            else:
                out[key][scene] = {m: float(np.nanmean([value(r, m) for r in runs])) for m in metrics}
    return out


def paired_differences(
    results: Sequence[Dict],
    baseline: str,
    metrics: Sequence[str],
    aggregate: str = "best",
    confidence: float = 0.95,
) -> List[Dict]:
    """One row per (views, method != baseline, metric): mean of per-scene (method − baseline), its CI, and the
    method's and baseline's own means over the paired scenes. Scenes missing either method are left out."""
    table = per_scene(results, metrics, aggregate)
    rows = []
    for (method, views), scenes in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        base = table.get((baseline, views))
        if method == baseline or base is None:
            continue
        paired = sorted(set(scenes) & set(base))
        for m in metrics:
            diffs = [scenes[s][m] - base[s][m] for s in paired]
            ci = t_interval(diffs, confidence)
            rows.append(
                {
                    "views": views,
                    "method": method,
                    "baseline": baseline,
                    "metric": m,
                    "aggregate": aggregate,
                    "scenes": len(paired),
                    "method_mean": _nanmean([scenes[s][m] for s in paired]),
                    "baseline_mean": _nanmean([base[s][m] for s in paired]),
                    "diff_mean": ci["mean"],
                    "diff_ci_low": ci["ci_low"],
                    "diff_ci_high": ci["ci_high"],
                    "wins": int(sum(d > 0 for d in diffs if np.isfinite(d))),
                }
            )
    return rows


def frame_differences(
    results: Sequence[Dict], baseline: str, metrics: Sequence[str], confidence: float = 0.95
) -> List[Dict]:
    """One row per (scene, views, method, metric) with CIs over the scene's held-out *frames*.

    For few scenes (real captures) a CI over scenes is undefined, so the unit is the held-out frame: each
    frame's value is averaged over the method's samples, and the baseline is paired frame by frame. Frames of
    one capture are correlated, so these intervals are narrower than a CI over scenes would be.
    """
    groups: Dict[tuple, List[Dict]] = defaultdict(list)
    for r in results:
        groups[(r["scene"], r["views"], r["method"])].append(r)

    def per_frame(runs: List[Dict], m: str) -> Dict[int, float]:
        values: Dict[int, List[float]] = defaultdict(list)
        for run in runs:
            for index, frame in zip(run["eval_indices"], run["per_frame"]):
                if m in frame:
                    values[int(index)].append(float(frame[m]))
        return {i: float(np.mean(v)) for i, v in values.items()}

    rows = []
    for (scene, views, method), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != baseline, kv[0][2])
    ):
        base_runs = groups.get((scene, views, baseline))
        for m in metrics:
            own = per_frame(runs, m)
            if not own:
                continue
            row = {
                "scene": scene,
                "views": views,
                "method": method,
                "metric": m,
                "samples": len(runs),
                **t_interval(list(own.values()), confidence),
            }
            if base_runs is not None and method != baseline:
                base = per_frame(base_runs, m)
                paired = sorted(set(own) & set(base))
                diff = t_interval([own[i] - base[i] for i in paired], confidence)
                row.update(
                    {
                        "diff_mean": diff["mean"],
                        "diff_ci_low": diff["ci_low"],
                        "diff_ci_high": diff["ci_high"],
                        "frames_paired": len(paired),
                        "wins": int(sum(own[i] > base[i] for i in paired)),
                    }
                )
            rows.append(row)
    return rows


def method_summary(
    results: Sequence[Dict], metrics: Sequence[str], aggregate: str = "best", confidence: float = 0.95
) -> List[Dict]:
    """One row per (views, method, metric): mean over scenes of the per-scene value with its t interval."""
    rows = []
    table = per_scene(results, metrics, aggregate)
    for (method, views), scenes in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for m in metrics:
            ci = t_interval([v[m] for v in scenes.values()], confidence)
            rows.append(
                {"views": views, "method": method, "metric": m, "aggregate": aggregate, "scenes": len(scenes), **ci}
            )
    return rows


def _nanmean(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def format_ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    """'+1.23 [+0.40, +2.06]' (signed; the interval omitted when undefined)."""
    if not np.isfinite(mean):
        return "–"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def significance(low: float, high: float) -> Optional[str]:
    """'better' / 'worse' when the CI excludes 0, else None (for PSNR-like metrics where higher is better)."""
    if np.isfinite(low) and low > 0:
        return "better"
    if np.isfinite(high) and high < 0:
        return "worse"
    return None
