"""Benchmark statistics on known inputs, object metrics on synthetic images (issue 13)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from itergen_ns.eval.metrics import masked_psnr, silhouette_iou
from itergen_ns.eval.stats import format_ci, method_summary, paired_differences, per_scene, t_interval


def test_t_interval_matches_hand_computation() -> None:
    # mean 2.5, sd sqrt(5/3) = 1.290994, t(0.975, 3) = 3.182446 -> half width 3.182446 * 1.290994 / 2 = 2.054260
    ci = t_interval([1.0, 2.0, 3.0, 4.0])
    assert ci["n"] == 4 and ci["mean"] == pytest.approx(2.5)
    assert ci["std"] == pytest.approx(math.sqrt(5 / 3))
    assert ci["half_width"] == pytest.approx(2.054260, abs=1e-6)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((0.445740, 4.554260), abs=1e-6)
    # 90%: t(0.95, 3) = 2.353363
    assert t_interval([1.0, 2.0, 3.0, 4.0], 0.90)["half_width"] == pytest.approx(
        2.353363 * math.sqrt(5 / 3) / 2, abs=1e-6
    )
    one = t_interval([3.0, float("nan")])
    assert one["n"] == 1 and one["mean"] == 3.0 and math.isnan(one["ci_low"])


def _run(scene, method, sample, psnr, ssim=0.5, seconds=10.0):
    return {
        "scene": scene,
        "views": 1,
        "method": method,
        "sample": sample,
        "seconds": seconds,
        "metrics": {"psnr": psnr, "ssim": ssim},
    }


RESULTS = [
    _run("a", "base", 0, 10.0, 0.40),
    _run("b", "base", 0, 20.0, 0.60),
    _run("c", "base", 0, 15.0, 0.50),
    # method: two samples per scene; best-of-S picks by PSNR and takes that sample's SSIM
    _run("a", "m", 0, 11.0, 0.45),
    _run("a", "m", 1, 13.0, 0.35),
    _run("b", "m", 0, 19.0, 0.70),
    _run("b", "m", 1, 22.0, 0.55),
    _run("c", "m", 0, 16.0, 0.52),
    _run("c", "m", 1, 14.0, 0.58, seconds=30.0),
]


def test_best_of_s_and_mean_per_scene() -> None:
    best = per_scene(RESULTS, ("psnr", "ssim", "seconds"), "best")[("m", 1)]
    assert best["a"] == {"psnr": 13.0, "ssim": 0.35, "seconds": 10.0}
    assert best["c"]["psnr"] == 16.0 and best["c"]["ssim"] == 0.52
    mean = per_scene(RESULTS, ("psnr", "ssim", "seconds"), "mean")[("m", 1)]
    assert mean["b"]["psnr"] == pytest.approx(20.5) and mean["c"]["seconds"] == pytest.approx(20.0)


def test_paired_differences_are_per_scene() -> None:
    rows = {
        (r["metric"], r["aggregate"]): r
        for agg in ("best", "mean")
        for r in paired_differences(RESULTS, "base", ("psnr", "ssim"), agg)
    }
    best = rows[("psnr", "best")]
    # per-scene differences 3, 2, 1 -> mean 2, sd 1, t(0.975, 2) = 4.302653
    assert best["scenes"] == 3 and best["diff_mean"] == pytest.approx(2.0) and best["wins"] == 3
    assert (best["diff_ci_low"], best["diff_ci_high"]) == pytest.approx(
        (2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-6
    )
    assert best["method_mean"] == pytest.approx(17.0) and best["baseline_mean"] == pytest.approx(15.0)
    mean = rows[("psnr", "mean")]  # differences 2, 0.5, 0
    assert mean["diff_mean"] == pytest.approx(2.5 / 3) and mean["wins"] == 2
    assert rows[("ssim", "best")]["diff_mean"] == pytest.approx((-0.05 - 0.05 + 0.02) / 3)
    # scenes the baseline lacks are not paired
    extra = RESULTS + [_run("d", "m", 0, 40.0)]
    assert paired_differences(extra, "base", ("psnr",), "best")[0]["diff_mean"] == pytest.approx(2.0)
    summary = {(r["method"], r["metric"]): r for r in method_summary(RESULTS, ("psnr",), "best")}
    assert summary[("base", "psnr")]["mean"] == pytest.approx(15.0) and summary[("base", "psnr")]["n"] == 3
    assert format_ci(2.0, 0.5, 3.5) == "+2.00 [+0.50, +3.50]" and format_ci(1.0, math.nan, math.nan) == "+1.00"


def test_silhouette_iou_on_a_synthetic_case() -> None:
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2:6, 2:6] = True  # 16 px
    acc = torch.zeros(10, 10)
    acc[4:8, 2:6] = 0.9  # 16 px, 8 of them overlap the mask
    acc[0, 0] = 0.5  # at the threshold: not part of the silhouette
    assert silhouette_iou(acc, mask) == pytest.approx(8 / 24)
    assert silhouette_iou(mask.float(), mask) == 1.0
    assert silhouette_iou(torch.zeros(10, 10), torch.zeros(10, 10, dtype=torch.bool)) == 1.0
    assert silhouette_iou(acc, mask, threshold=0.95) == 0.0


def test_masked_psnr_counts_object_pixels_only() -> None:
    gt = torch.full((8, 8, 3), 0.5)
    pred = gt.clone()
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4] = True
    pred[4:] = 0.0  # wrong outside the object only
    assert math.isinf(masked_psnr(pred, gt, mask))
    pred[:4] = 0.6  # error 0.1 on the object -> MSE 0.01 -> 20 dB, whatever the background does
    assert masked_psnr(pred, gt, mask) == pytest.approx(20.0, abs=1e-4)
    assert math.isnan(masked_psnr(pred, gt, torch.zeros(8, 8, dtype=torch.bool)))
    assert np.isfinite(masked_psnr(pred, gt, torch.ones(8, 8, dtype=torch.bool)))


def _frames_run(method, sample, psnrs, eval_indices=(1, 2, 3)):
    return {
        "scene": "apple",
        "views": 3,
        "method": method,
        "sample": sample,
        "eval_indices": list(eval_indices),
        "per_frame": [{"psnr": p} for p in psnrs],
        "metrics": {"psnr": float(np.mean(psnrs))},
    }


def test_frame_differences_average_samples_per_frame_and_pair_frames() -> None:
    from itergen_ns.eval.report import frame_ci_table
    from itergen_ns.eval.stats import frame_differences

    results = [
        _frames_run("base", 0, [10.0, 12.0, 14.0]),
        # two samples: per-frame means 11, 14, 15 -> differences 1, 2, 1 against the baseline
        _frames_run("m", 0, [10.0, 13.0, 15.0]),
        _frames_run("m", 1, [12.0, 15.0, 15.0]),
    ]
    rows = {r["method"]: r for r in frame_differences(results, "base", ["psnr"])}
    assert rows["base"]["n"] == 3 and rows["base"]["mean"] == pytest.approx(12.0) and "diff_mean" not in rows["base"]
    m = rows["m"]
    assert m["samples"] == 2 and m["mean"] == pytest.approx(40.0 / 3)
    ci = t_interval([1.0, 2.0, 1.0])
    assert m["diff_mean"] == pytest.approx(4.0 / 3) and m["frames_paired"] == 3 and m["wins"] == 3
    assert (m["diff_ci_low"], m["diff_ci_high"]) == pytest.approx((ci["ci_low"], ci["ci_high"]))
    # frames only one method scored are not paired
    partial = frame_differences([results[0], _frames_run("m", 0, [13.0, 13.0], (2, 3))], "base", ["psnr"])
    assert [r["frames_paired"] for r in partial if r["method"] == "m"] == [2]
    table = frame_ci_table(results, baseline="base", metrics=("psnr",))
    assert "| apple | 3 | m | 2 | 3 | 13.33 [" in table and "+1.33 [" in table and "(3/3)" in table
