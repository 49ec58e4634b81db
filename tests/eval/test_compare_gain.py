"""scripts/compare_gain.py: paired per-scene statistics of two generators' gain outputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "compare_gain.py"


def _write(path: Path, samples: dict) -> Path:
    frames = []
    for (scene, frame), sample in samples.items():
        frames.append(
            {
                "shard": f"{scene}_r0",
                "scene": scene,
                "step": 0,
                "views": 1,
                "clip": 0,
                "frame": frame,
                "psnr": {"sample": sample, "render": 10.0, "nearest_input": 12.0},
                "ssim": {"sample": 0.5, "render": 0.4, "nearest_input": 0.6},
            }
        )
    path.mkdir(parents=True)
    (path / "gain.json").write_text(json.dumps({"frames": frames}))
    return path


def test_compare_gain_pairs_frames_and_uses_scenes_as_units(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("compare_gain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a = _write(tmp_path / "a", {("s1", 0): 11.0, ("s1", 1): 13.0, ("s2", 0): 14.0, ("s3", 0): 15.0})
    # b: +1 dB on every scene; its extra frame (s3, 9) has no partner and is ignored
    b = _write(tmp_path / "b", {("s1", 0): 12.0, ("s1", 1): 14.0, ("s2", 0): 15.0, ("s3", 0): 16.0, ("s3", 9): 99.0})
    module.main([f"a={a}", f"b={b}"])
    out = capsys.readouterr().out
    assert "4 paired frames, 3 scenes" in out
    # a per scene: 12, 14, 15 -> gain +2, +4, +5 (mean 3.67); margin over max(10, 12): 0, 2, 3
    assert "| a | 13.67 | +3.67 [" in out and "+1.67 [" in out
    # b: every scene +1 over a, no spread -> interval collapses onto +1
    assert "| b | 14.67 |" in out and "+1.00 [+1.00, +1.00] (3/3)" in out
    with pytest.raises(SystemExit, match="share no frames"):
        module.main([f"a={a}", f"c={_write(tmp_path / 'c', {('s9', 0): 1.0})}"])
