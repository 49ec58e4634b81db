"""Paired comparison of several generators scored by `itergen gain` on the same held-out clips.

    python scripts/compare_gain.py shipped=runs/gain/shipped-1v paper_v=runs/gain/paper_v-1v ...

Frames are matched by (shard, snapshot step, clip, frame); the unit of the confidence intervals is the scene
(frames of one scene are correlated): per scene, gain = sample − render and margin = sample − the better of the
render and the nearest-input copy (both in mean dB over the scene's frames), then a Student-t 95% CI over
scenes. The last columns compare each model's samples with the first model's, paired by scene.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from itergen_ns.eval.stats import format_ci, t_interval


def load_frames(path: Path) -> dict:
    data = json.loads((Path(path) / "gain.json").read_text())
    if "frames" not in data:
        raise SystemExit(f"{path}/gain.json: no per-frame records (rerun `itergen gain` with --keep-frames True)")
    return {(f["shard"], f["step"], f["clip"], f["frame"]): f for f in data["frames"]}


def per_scene(frames: dict, keys: list, metric: str) -> dict:
    """{scene: (sample, render, nearest_input) mean over the scene's frames}."""
    acc = defaultdict(list)
    for k in keys:
        f = frames[k]
        acc[f["scene"]].append([f[metric]["sample"], f[metric]["render"], f[metric]["nearest_input"]])
    return {s: np.mean(v, axis=0) for s, v in acc.items()}


def main(args: list) -> None:
    runs = [(a.partition("=")[0], load_frames(Path(a.partition("=")[2]))) for a in args]
    keys = sorted(set.intersection(*(set(f) for _, f in runs)))
    if not keys:
        raise SystemExit("the gain outputs share no frames (different snapshot roots or clip settings)")
    for metric, digits in (("psnr", 2), ("ssim", 3)):
        ref = per_scene(runs[0][1], keys, metric)
        scenes = sorted(ref)
        print(f"\n{metric.upper()}: {len(keys)} paired frames, {len(scenes)} scenes (95% CI over scenes)\n")
        print(
            f"| model | sample | gain over render | margin over better of render / nearest input | sample − {runs[0][0]} (scenes up) |"
        )
        print("|---|---|---|---|---|")
        for name, frames in runs:
            own = per_scene(frames, keys, metric)
            gain = t_interval([own[s][0] - own[s][1] for s in scenes])
            margin = t_interval([own[s][0] - max(own[s][1], own[s][2]) for s in scenes])
            diffs = [own[s][0] - ref[s][0] for s in scenes]
            vs = t_interval(diffs)
            sample = np.mean([own[s][0] for s in scenes])
            cells = [
                name,
                f"{sample:.{digits}f}",
                format_ci(gain["mean"], gain["ci_low"], gain["ci_high"], digits),
                format_ci(margin["mean"], margin["ci_low"], margin["ci_high"], digits),
                "–"
                if name == runs[0][0]
                else f"{format_ci(vs['mean'], vs['ci_low'], vs['ci_high'], digits)} ({sum(d > 0 for d in diffs)}/{len(diffs)})",
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
