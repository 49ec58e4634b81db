"""Print the overall rows of one or more `itergen gain` outputs as a markdown table.

python scripts/summarize_gain.py NAME=runs/gain/a-1v NAME2=runs/gain/b-1v ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(args: list[str]) -> None:
    print(
        "| run | views | frames | render | sample | gain PSNR | nearest input | mean frame | margin PSNR | SSIM render / sample | gain SSIM | margin SSIM | AE ceiling |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arg in args:
        name, _, path = arg.partition("=")
        data = json.loads((Path(path) / "gain.json").read_text())
        for g in data["groups"]:
            if g["step"] != "all":
                continue
            p, s = g["psnr"], g["ssim"]
            print(
                f"| {name} | {g['views']} | {g['frames']} | {p['render']:.2f} | {p['sample']:.2f} | "
                f"{g['gain_psnr']:+.2f} | {p['nearest_input']:.2f} | {p['mean_frame']:.2f} | {g['margin_psnr']:+.2f} | "
                f"{s['render']:.3f} / {s['sample']:.3f} | {g['gain_ssim']:+.3f} | {g['margin_ssim']:+.3f} | "
                f"{p['autoencoder']:.2f} |"
            )


def per_step(path: str) -> None:
    data = json.loads((Path(path) / "gain.json").read_text())
    for g in data["groups"]:
        if g["step"] != "all" and g["views"] != "all":
            print(
                f"step {g['step']:>4} views {g['views']}: gain {g['gain_psnr']:+.2f} dB, margin {g['margin_psnr']:+.2f} dB"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--per-step"]:
        per_step(sys.argv[2])
    else:
        main(sys.argv[1:])
