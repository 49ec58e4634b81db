"""Aggregation and display of ``itergen gain``: mean metrics per (step, views) group with the gain over the render
and the margins over the trivial predictors; CSV rows; rich tables."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np
from rich.table import Table

from nerfstudio.utils.rich_utils import CONSOLE


PREDICTORS = ("render", "sample", "mean_frame", "nearest_input", "first_input", "autoencoder", "warped_input")
TRIVIAL = ("mean_frame", "nearest_input", "first_input")
METRICS = ("psnr", "ssim")


def summarize(frames: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean metrics per (step, views) group, per step, per view count and overall ("all"), with gain and margins.

    PSNR is averaged in dB over frames (as nerfstudio and the paper do). ``gain_*`` = sample − render;
    ``margin_*`` = sample − the group's best trivial predictor (named in ``best_trivial_*``);
    ``margin_best_*`` = sample − the best of the render and the trivial predictors.
    """
    if not frames:
        return []
    steps = sorted({f["step"] for f in frames})
    views = sorted({f["views"] for f in frames})
    keys = [(s, v) for s in steps for v in views] + [(s, "all") for s in steps]
    keys += [("all", v) for v in views] + [("all", "all")]
    groups = []
    for step, nv in keys:
        sel = [f for f in frames if step in ("all", f["step"]) and nv in ("all", f["views"])]
        if not sel:
            continue
        row: Dict[str, Any] = {"step": step, "views": nv, "frames": len(sel)}
        for metric in METRICS:
            means = {p: float(np.mean([f[metric][p] for f in sel])) for p in PREDICTORS}
            row[metric] = means
            best = max(TRIVIAL, key=lambda p: means[p])
            row[f"gain_{metric}"] = means["sample"] - means["render"]
            row[f"best_trivial_{metric}"] = best
            row[f"margin_{metric}"] = means["sample"] - means[best]
            row[f"margin_best_{metric}"] = means["sample"] - max(means[best], means["render"])
        groups.append(row)
    return groups


def csv_rows(groups: List[Dict[str, Any]]) -> Tuple[List[str], List[List[Any]]]:
    """Header and one row per group of gain.csv: means per predictor, then gain, best trivial and margins."""
    header = ["step", "views", "frames"]
    header += [f"{m}_{p}" for m in METRICS for p in PREDICTORS]
    header += [f"{k}_{m}" for m in METRICS for k in ("gain", "best_trivial", "margin", "margin_best")]
    rows = []
    for g in groups:
        row = [g["step"], g["views"], g["frames"]]
        row += [g[m][p] for m in METRICS for p in PREDICTORS]
        row += [g[f"{k}_{m}"] for m in METRICS for k in ("gain", "best_trivial", "margin", "margin_best")]
        rows.append(row)
    return header, rows


def print_tables(groups: List[Dict[str, Any]], title: str = "generator gain") -> None:
    """One rich table per metric: each predictor's mean, the gain over the render and the margin over the best
    trivial predictor (named in "vs"); subtotal rows that repeat a single step or view count are left out."""
    short = {"mean_frame": "mean", "nearest_input": "nearest", "first_input": "first", "autoencoder": "AE",
             "warped_input": "warp"}  # fmt: skip
    num_steps = len({g["step"] for g in groups} - {"all"})
    num_views = len({g["views"] for g in groups} - {"all"})
    shown = [
        g
        for g in groups
        if (g["step"] == "all" and g["views"] == "all")
        or (g["step"] != "all" and (g["views"] != "all" or num_views > 1))
        or (g["step"] == "all" and num_steps > 1)
    ]
    for metric, fmt in (("psnr", "{:.2f}"), ("ssim", "{:.3f}")):
        table = Table(title=f"{title}: {metric.upper()}" + (" (dB)" if metric == "psnr" else ""))
        for col in ("step", "views", "frames", "render", "sample", "gain", *short.values(), "margin", "vs"):
            table.add_column(col, justify="left" if col == "vs" else "right")
        for g in shown:
            m = g[metric]
            table.add_row(
                str(g["step"]),
                str(g["views"]),
                str(g["frames"]),
                fmt.format(m["render"]),
                fmt.format(m["sample"]),
                _signed(fmt, g[f"gain_{metric}"]),
                *[fmt.format(m[p]) for p in short],
                _signed(fmt, g[f"margin_{metric}"]),
                short[g[f"best_trivial_{metric}"]],
                style="bold" if g["step"] == "all" and g["views"] == "all" else None,
            )
        CONSOLE.print(table)
    CONSOLE.print(
        "gain = sample - render; margin = sample - best trivial predictor (mean training frame, nearest or first "
        "input view); AE = ground truth through the model's autoencoder (ceiling); warp = the render with the nearest "
        "input warped in through its depth; non-input frames only"
    )


def _signed(fmt: str, value: float) -> str:
    text = fmt.format(value)
    if math.isfinite(value) and value > 0:
        text = "+" + text
    return f"[green]{text}[/green]" if value > 0 else f"[red]{text}[/red]"
