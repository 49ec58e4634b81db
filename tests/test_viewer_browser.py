"""The itergen viewer in a real browser (issue 17): `ns-train itergen --vis viewer` on a loopback port, opened in
headless Chromium with software WebGL through the DevTools protocol (scripts/viewer_screenshot.py).

Fast settings: a 32-px procedural scene, the untrained tiny generator (random init, 2 sampling steps), 60 steps.
Skipped where no Chromium is installed (Debian: `apt-get install -y chromium`).
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "viewer_screenshot.py"


def load_script():
    spec = importlib.util.spec_from_file_location("viewer_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


vs = load_script()
pytestmark = pytest.mark.skipif(
    vs.find_chromium() is None, reason="no Chromium on PATH (apt-get install -y chromium) for the browser test"
)


def test_viewer_draws_scene_panel_and_clip_frustums_in_chromium(tmp_path):
    out = tmp_path / "viewer.png"
    result = vs.ViewerScreenshot(out=out, generator="random", steps=60, generate_every=20, init_points=500,
                                 timeout=150, workdir=tmp_path / "work").main()  # fmt: skip
    assert result["webgl2"], "Chromium has no WebGL2 (software GL flags not honoured)"
    # the panel: its title, the latest clip's caption, and the render/sample sheet as a readable image
    assert result["panel_title"] and result["panel_legend"]
    assert result["panel_clip"].startswith("Clip ") and "model, 8 frames" in result["panel_clip"]
    img = result["panel_image"]
    assert img["natural_w"] >= 480 and img["box"]["w"] > 200  # upsampled 32-px frames, shown at panel width
    assert abs(img["box"]["w"] / img["box"]["h"] - img["natural_w"] / img["natural_h"]) < 0.02  # not stretched
    # the scene: the canvas is drawn (not one flat colour) and the clip's orange frustums are visible
    stats = result["canvas_stats"]
    assert stats["std"] > 8 and stats["distinct_colors"] >= 8 and stats["frustum_pixels"] >= 100, stats
    shot = np.asarray(Image.open(out))
    assert shot.shape[:2] == (800, 1280)
    region = vs.scene_region(shot, {"canvas": result["canvas"], "control_panel_x": result["control_panel_x"]})
    assert vs.canvas_stats(region) == stats  # the checks were made on the saved picture


def test_blank_canvas_fails_the_drawn_check():
    flat = np.full((200, 300, 3), 30, np.uint8)
    assert not vs.scene_drawn(vs.canvas_stats(flat))
    flat[50:60, 50:100] = (255, 140, 0)  # frustum colour alone is not a scene
    assert not vs.scene_drawn(vs.canvas_stats(flat))
