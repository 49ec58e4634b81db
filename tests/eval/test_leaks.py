"""Leak rules of the evaluation protocol (docs/protocol.md): what a run may see of held-out frames.

* ground-truth geometry: an evaluation run on CO3D never reads the sequence's ``pointcloud.ply`` (CO3D's
  reconstruction from all frames); only the explicit leak flag does;
* held-out cameras: the scene normalisation comes from the input cameras only, so adding or removing held-out frames
  leaves the input cameras' normalised poses bit-identical (both parsers), and every split and the all-frame renders
  share that one transform.
"""

from __future__ import annotations

import builtins
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import List

import numpy as np
import pytest
import torch

from co3d_fixture import make_co3d_sequence
from nerfstudio_fixture import write_dataset

from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig
from itergen_ns.data.sparse_dataparser import SparseNerfstudioDataParserConfig
from itergen_ns.data.all_frames import all_frames_outputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ ground-truth geometry
@pytest.fixture()
def pointcloud_reads(monkeypatch) -> List[str]:
    """Every attempt to open or load a ``pointcloud.ply`` in this test (builtins/io/os open, trimesh.load)."""
    import trimesh

    seen: List[str] = []

    def watch(fn):
        def wrapped(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and "pointcloud.ply" in os.fsdecode(file):
                seen.append(os.fsdecode(file))
            return fn(file, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "open", watch(builtins.open))
    monkeypatch.setattr(io, "open", watch(io.open))
    monkeypatch.setattr(os, "open", watch(os.open))
    monkeypatch.setattr(trimesh, "load", watch(trimesh.load))
    return seen


def test_eval_run_on_co3d_never_opens_the_point_cloud(tmp_path, pointcloud_reads) -> None:
    from itergen_ns.eval.harness import EvalConfig

    seq = make_co3d_sequence(tmp_path / "co3d", num_frames=6, with_pointcloud=True)
    assert (seq.sequence_dir / "pointcloud.ply").is_file()
    pointcloud_reads.clear()  # the fixture wrote it
    config = EvalConfig(
        data=(seq.sequence_dir,),
        methods=("itergen-splatfacto",),
        views=(1,),
        samples=1,
        steps=2,
        output_dir=tmp_path / "eval",
        overrides={"pipeline.datamanager.init_num_points": "200"},
    )
    (result,) = config.run()
    assert pointcloud_reads == []
    assert result["input_indices"] and len(result["eval_indices"]) == 5 and math.isfinite(result["metrics"]["psnr"])
    # the detector works: the explicit leak flag reads the file
    out = CO3DDataParserConfig(data=seq.sequence_dir, load_3d_points=True, frame_size=None).setup()
    assert "points3D_xyz" in out.get_dataparser_outputs("train").metadata
    assert pointcloud_reads and all(p.endswith("pointcloud.ply") for p in pointcloud_reads)


def test_point_cloud_is_off_by_default_everywhere() -> None:
    from itergen_ns.snapshots.exporter import ExportSnapshotsConfig

    assert CO3DDataParserConfig().load_3d_points is False and CO3DDataParserConfig().center_method == "axes"
    exporter = ExportSnapshotsConfig(data=(Path("x"),), out=Path("y"))
    assert exporter.co3d.load_3d_points is False and exporter.co3d.center_method == "axes"
    assert exporter.nerfstudio.load_3D_points is False
    assert SparseNerfstudioDataParserConfig().load_3D_points is False


# ------------------------------------------------------------------------------------------------ held-out cameras
def _co3d(seq, split="train", **kwargs):
    return CO3DDataParserConfig(data=seq.sequence_dir, **kwargs).setup().get_dataparser_outputs(split)


@pytest.mark.parametrize("inputs", [(6,), (2, 8), (0, 6, 12, 16)])
def test_co3d_normalisation_ignores_heldout_frames(tmp_path, inputs) -> None:
    seq = make_co3d_sequence(tmp_path, num_frames=10, with_masks=False)
    opts = dict(input_frame_numbers=inputs, frame_size=None)
    full_train, full_val = _co3d(seq, **opts), _co3d(seq, "val", **opts)
    # remove held-out frames (their images; the parser skips them with a warning)
    removed = [f for f in seq.frames if f["frame_number"] not in inputs][::2]
    for frame in removed:
        (seq.root / frame["image"]["path"]).unlink()
    with pytest.warns(UserWarning, match="skipping"):
        fewer_train, fewer_val = _co3d(seq, **opts), _co3d(seq, "val", **opts)
    assert fewer_train.metadata["co3d_frame_numbers"] == list(inputs)
    assert torch.equal(fewer_train.cameras.camera_to_worlds, full_train.cameras.camera_to_worlds)
    assert torch.equal(fewer_train.dataparser_transform, full_train.dataparser_transform)
    assert fewer_train.dataparser_scale == full_train.dataparser_scale
    assert torch.equal(fewer_train.scene_box.aabb, full_train.scene_box.aabb)
    # the remaining held-out frames get the same (input-only) transform in both
    kept = [full_val.metadata["co3d_frame_numbers"].index(n) for n in fewer_val.metadata["co3d_frame_numbers"]]
    assert len(kept) == 10 - len(inputs) - len(removed)
    assert torch.equal(fewer_val.cameras.camera_to_worlds, full_val.cameras.camera_to_worlds[kept])
    # and the normalisation is the inputs': centred where their axes meet (on the axis for one), median distance 1
    c2w = full_train.cameras.camera_to_worlds.double()
    assert float(c2w[:, :, 3].norm(dim=-1).median()) == pytest.approx(1.0, abs=1e-5)
    if len(inputs) == 1:  # one input: looks at the origin, its own up vector is +z
        assert torch.allclose(-c2w[0, :, 2], -c2w[0, :, 3], atol=1e-5)
        assert torch.allclose(c2w[0, :, 1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-5)


def test_sparse_normalisation_ignores_heldout_frames(tmp_path) -> None:
    data = write_dataset(tmp_path / "scene", num=20)
    meta = json.loads((data / "transforms.json").read_text())
    input_files = ["images/frame_00003.png", "images/frame_00007.png", "images/frame_00012.png"]
    for chosen in (input_files[:1], input_files):
        keep_all = sorted(f["file_path"] for f in meta["frames"])
        full = SparseNerfstudioDataParserConfig(data=data, input_views=tuple(keep_all.index(f) for f in chosen)).setup()
        # a copy of the scene without most held-out frames (positions of the inputs shift)
        few = [f for f in meta["frames"] if f["file_path"] in chosen or int(f["file_path"][-6:-4]) % 3 == 0]
        (tmp_path / "few").mkdir(exist_ok=True)
        (tmp_path / "few" / "transforms.json").write_text(json.dumps({**meta, "frames": few}))
        for sub in ("images", "masks"):
            if not (tmp_path / "few" / sub).exists():
                (tmp_path / "few" / sub).symlink_to(data / sub)
        keep_few = sorted(f["file_path"] for f in few)
        fewer = SparseNerfstudioDataParserConfig(
            data=tmp_path / "few", input_views=tuple(keep_few.index(f) for f in chosen)
        ).setup()
        a, b = full.get_dataparser_outputs("train"), fewer.get_dataparser_outputs("train")
        assert (
            [p.name for p in a.image_filenames] == [p.name for p in b.image_filenames] == [Path(f).name for f in chosen]
        )
        assert torch.equal(a.cameras.camera_to_worlds, b.cameras.camera_to_worlds)
        assert torch.equal(a.dataparser_transform, b.dataparser_transform) and a.dataparser_scale == b.dataparser_scale
        # the held-out frames both copies have are transformed identically too
        va, vb = full.get_dataparser_outputs("val"), fewer.get_dataparser_outputs("val")
        names_a = [p.name for p in va.image_filenames]
        kept = [names_a.index(p.name) for p in vb.image_filenames]
        assert len(kept) == len(few) - len(chosen) and len(kept) < len(names_a)
        assert torch.equal(vb.cameras.camera_to_worlds, va.cameras.camera_to_worlds[kept])


@pytest.mark.parametrize("kind", ["co3d", "nerfstudio"])
def test_all_frames_renders_use_the_training_normalisation(tmp_path, kind) -> None:
    """``all_frames_outputs`` (eval harness, exporter) returns the training cameras bit-identically at the inputs."""
    if kind == "co3d":
        seq = make_co3d_sequence(tmp_path, num_frames=8, with_masks=False)
        parser = CO3DDataParserConfig(data=seq.sequence_dir, num_input_views=2, input_view_seed=5).setup()
    else:
        parser = SparseNerfstudioDataParserConfig(
            data=write_dataset(tmp_path / "scene"), num_input_views=2, input_view_seed=5
        ).setup()
    train = parser.get_dataparser_outputs("train")
    every = all_frames_outputs(SimpleNamespace(dataparser=parser))
    inputs = train.metadata["input_view_indices"]
    assert len(inputs) == 2 and every.cameras.shape[0] == (8 if kind == "co3d" else 20)
    assert torch.equal(every.cameras.camera_to_worlds[inputs], train.cameras.camera_to_worlds)
    assert [every.image_filenames[i] for i in inputs] == train.image_filenames
    assert torch.equal(every.dataparser_transform, train.dataparser_transform)
    # the dense re-parse (every frame an input) is a different frame: that is what all_frames_outputs must avoid
    dense = dataclasses.replace(parser.config, num_input_views=0).setup().get_dataparser_outputs("train")
    assert not torch.allclose(dense.cameras.camera_to_worlds[inputs], train.cameras.camera_to_worlds, atol=1e-4)
    assert np.isfinite(every.cameras.camera_to_worlds.numpy()).all()
