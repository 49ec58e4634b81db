"""`itergen bench` (issue 13): disjoint scene sets, run plan, far-side frame choice, make-scenes defaults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from itergen_ns.data.scenes import BENCH_IMAGE_SIZE, BENCH_NUM_FRAMES, MakeScenesConfig, load_scene_index
from itergen_ns.eval.bench_proxy import BenchProxyConfig
from itergen_ns.eval.demo import DemoConfig
from itergen_ns.eval.bench_figures import far_side_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_val_heldout_scenes_are_disjoint() -> None:
    config = BenchProxyConfig()
    plan = config.scene_plan()
    by_split = {s: [e for e in plan if e["split"] == s] for s in ("train", "val", "heldout")}
    assert [len(by_split[s]) for s in ("train", "val", "heldout")] == [6, 4, 10]
    names = [e["name"] for e in plan]
    seeds = [e["seed"] for e in plan]
    assert len(set(names)) == len(names) and len(set(seeds)) == len(seeds)  # no scene in two sets
    train = {e["seed"] for e in by_split["train"]}
    assert not train & {e["seed"] for e in by_split["heldout"] + by_split["val"]}
    # held-out scenes of other collection seeds never coincide with this collection's training scenes
    other = BenchProxyConfig(seed=1).scene_plan()
    assert not train & {e["seed"] for e in other}


def test_make_scenes_writes_the_planned_splits(tmp_path: Path) -> None:
    config = BenchProxyConfig(
        output_dir=tmp_path,
        num_train_scenes=1,
        num_val_scenes=1,
        num_heldout_scenes=2,
        num_frames=(4, 4),
        image_size=16,
    )
    from itergen_ns.data.scenes import make_scenes

    make_scenes(
        config.scenes_dir,
        4,
        seed=0,
        num_frames=4,
        resolution=16,
        supersample=1,
        shadows=False,
        num_heldout=2,
        num_val=1,
    )
    index = load_scene_index(config.scenes_dir)
    plan = config.scene_plan()
    assert [(e["name"], e["seed"], e["split"]) for e in index["scenes"]] == [
        (e["name"], e["seed"], e["split"]) for e in plan
    ]
    assert [e["split"] for e in plan] == ["train", "val", "heldout", "heldout"]
    from itergen_ns.data.discovery import discover_split_scenes

    assert [p.name for p in discover_split_scenes([config.scenes_dir])] == ["scene_0002", "scene_0003"]
    assert [p.name for p in DemoConfig(output_dir=tmp_path).train_scene_dirs()] == ["scene_0000"]


def test_default_plan_fits_the_budget() -> None:
    config = BenchProxyConfig()
    assert config.num_runs() == 10 * 2 * (1 + 4 * 2)  # scenes x views x (baseline + 4 stochastic rows x samples)
    assert config.estimate_seconds() <= 90 * 60
    skip = BenchProxyConfig(generator_checkpoint=Path("model"))
    assert "itergen-no-render-noise" not in skip.eval_methods()
    assert skip.eval_config().generator_checkpoint_no_render_noise is None


def test_far_side_frames_start_opposite_the_inputs() -> None:
    az = np.radians(np.arange(0, 360, 30)).astype(np.float64)  # 12 frames around the object
    picks = far_side_frames(az, [0], list(range(1, 12)), 3)
    assert picks[0] == 6  # 180 degrees from the input
    assert picks[-1] in (1, 11)  # nearest last
    two_inputs = far_side_frames(az, [0, 6], [1, 2, 3, 4, 5, 7, 8, 9, 10, 11], 1)
    assert two_inputs[0] in (3, 9)  # 90 degrees from both


def test_make_scenes_defaults_are_the_benchmark_distribution_and_one_scene_works(tmp_path: Path) -> None:
    config = MakeScenesConfig()
    assert config.num_frames == BENCH_NUM_FRAMES == tuple(BenchProxyConfig().num_frames)
    assert config.image_size == BENCH_IMAGE_SIZE and BenchProxyConfig().image_size == BENCH_IMAGE_SIZE[0]
    one = MakeScenesConfig(
        out_dir=tmp_path, num_scenes=1, num_frames=(3, 3), image_size=(16, 16), supersample=1, shadows=False
    )
    one.main()
    index = json.loads((tmp_path / "scenes.json").read_text())
    assert [e["split"] for e in index["scenes"]] == ["heldout"]  # evaluable by `itergen eval --data <dir>`
    assert not math.isnan(index["scenes"][0]["seed"])
