"""Generated poses are chosen from the input cameras only (docs/protocol.md, leak 3).

The same procedural scene is parsed twice: with all its frames, and with five held-out frames removed from
transforms.json. The input views (the same three files) must come out with bit-identical normalised poses, the pose
sampler must produce bit-identical clips, and no generated pose may coincide with an evaluation camera.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_scenes
from itergen_ns.engine.runner import TrainSpec, build_config, seed_everything

FRAMES, SIZE, G = 12, 32, 8
INPUTS = (0, 4, 8)
REMOVED = (1, 2, 5, 10, 11)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    full = (
        tiny_scenes(tmp_path_factory.mktemp("scenes"), 1, seed=5, num_frames=FRAMES, size=SIZE, shadows=False)
        / "scene_0000"
    )
    fewer = full.parent / "scene_fewer_heldout"
    shutil.copytree(full, fewer)
    meta = json.loads((fewer / "transforms.json").read_text())
    frames = sorted(meta["frames"], key=lambda f: f["file_path"])
    assert len(frames) == FRAMES
    meta["frames"] = [f for i, f in enumerate(frames) if i not in REMOVED]
    (fewer / "transforms.json").write_text(json.dumps(meta))
    kept = [i for i in range(FRAMES) if i not in REMOVED]
    return full, fewer, tuple(kept.index(i) for i in INPUTS)


def itergen_datamanager(scene: Path, out: Path, input_views):
    overrides = {
        "pipeline.datamanager.input_views": input_views,
        "pipeline.datamanager.init_num_points": 200,
        "pipeline.generator.random_init": True,
        "pipeline.generation.generation_seed": 3,
    }
    config = build_config(TrainSpec(method="itergen", data=scene, output_dir=out, steps=1, seed=0, overrides=overrides))
    seed_everything(config.machine.seed)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    pipeline.datamanager.pose_sampler = pipeline.generation.pose_sampler  # what these tests look at
    return pipeline.datamanager


def test_generated_poses_do_not_depend_on_held_out_frames(scenes, tmp_path):
    full, fewer, fewer_inputs = scenes
    a = itergen_datamanager(full, tmp_path / "a", INPUTS)
    b = itergen_datamanager(fewer, tmp_path / "b", fewer_inputs)
    assert [Path(p).name for p in a.train_dataset.image_filenames] == [
        Path(p).name for p in b.train_dataset.image_filenames
    ]
    assert torch.equal(a.train_dataset.cameras.camera_to_worlds, b.train_dataset.cameras.camera_to_worlds)
    clips_a, clips_b = a.pose_sampler.plan(6, G), b.pose_sampler.plan(6, G)
    assert all(torch.equal(x, y) for x, y in zip(clips_a, clips_b))

    # no generated camera sits at an evaluation camera (centres at least 1% of the orbit radius apart)
    eval_c2w = a.eval_dataset.cameras.camera_to_worlds
    assert len(eval_c2w) == FRAMES - len(INPUTS)
    generated = torch.cat(clips_a)
    radius = float(a.train_dataset.cameras.camera_to_worlds[:, :, 3].norm(dim=-1).median())
    gap = torch.cdist(generated[:, :, 3].double(), eval_c2w[:, :, 3].double()).min()
    assert gap > 0.01 * radius, float(gap)
