"""A tiny nerfstudio-format capture on disk (8x8 frames on a tilted circle), shared by parser and leak tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from itergen_ns.data.camera_utils import look_at

NUM = 20


def write_dataset(root: Path, num: int = NUM, seed: int = 0) -> Path:
    """A tiny nerfstudio dataset: ``num`` 8x8 frames on a tilted circle, listed in shuffled order."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    frames = []
    for i in range(num):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"images/frame_{i:05d}.png")
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / f"masks/frame_{i:05d}.png")
        a = 2 * math.pi * i / num
        eye = torch.tensor([3 * math.cos(a) + 1.0, 3 * math.sin(a) - 2.0, 1.0 + 0.3 * math.sin(3 * a)])
        c2w = look_at(eye, torch.tensor([1.0, -2.0, 0.2]), torch.tensor([0.0, 0.0, 1.0]))
        mat = torch.cat([c2w, torch.tensor([[0.0, 0.0, 0.0, 1.0]])]).tolist()
        frames.append(
            {"file_path": f"images/frame_{i:05d}.png", "mask_path": f"masks/frame_{i:05d}.png", "transform_matrix": mat}
        )
    order = rng.permutation(num)  # nerfstudio sorts by file name; indices refer to that order
    meta = {
        "camera_model": "OPENCV",
        "fl_x": 10.0,
        "fl_y": 10.0,
        "cx": 4.0,
        "cy": 4.0,
        "w": 8,
        "h": 8,
        "frames": [frames[i] for i in order],
    }
    (root / "transforms.json").write_text(json.dumps(meta))
    return root
