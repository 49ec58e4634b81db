"""Tests of the procedural hydrant-like scene generator (itergen_ns.data.scenes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itergen_ns.data.camera_utils import nearest_point_to_axes
from itergen_ns.data.procedural.raycast import camera_rays
from itergen_ns.data.procedural.scene import sample_scene, scene_seed
from itergen_ns.data.scenes import MakeScenesConfig, load_scene_index, make_scenes

SMALL = dict(num_frames=30, resolution=32, supersample=1)


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, num_scenes=2, seed=7, num_heldout=1, **SMALL)
    return out


def test_same_seed_gives_identical_bytes(collection: Path, tmp_path: Path) -> None:
    make_scenes(tmp_path, num_scenes=2, seed=7, num_heldout=1, **SMALL)
    first, second = _files(collection), _files(tmp_path)
    assert first.keys() == second.keys()
    assert len(first) == 2 * (2 * 30 + 1) + 1  # images + masks + transforms.json per scene, scenes.json
    for name in first:
        assert first[name] == second[name], name


def test_different_seeds_differ(collection: Path, tmp_path: Path) -> None:
    make_scenes(tmp_path, num_scenes=1, seed=8, **SMALL)
    a = np.array(Image.open(collection / "scene_0000/images/frame_00000.png"), dtype=np.int16)
    b = np.array(Image.open(tmp_path / "scene_0000/images/frame_00000.png"), dtype=np.int16)
    c = np.array(Image.open(collection / "scene_0001/images/frame_00000.png"), dtype=np.int16)
    assert np.abs(a - b).mean() > 10.0
    assert np.abs(a - c).mean() > 10.0
    ta = json.loads((collection / "scene_0000/transforms.json").read_text())
    tb = json.loads((tmp_path / "scene_0000/transforms.json").read_text())
    assert ta["frames"][0]["transform_matrix"] != tb["frames"][0]["transform_matrix"]


def test_index_and_folder_layout(collection: Path) -> None:
    index = load_scene_index(collection)
    assert [e["name"] for e in index["scenes"]] == ["scene_0000", "scene_0001"]
    assert [e["split"] for e in index["scenes"]] == ["train", "heldout"]
    assert [e["seed"] for e in index["scenes"]] == [scene_seed(7, 0), scene_seed(7, 1)]
    for entry in index["scenes"]:
        meta = json.loads((entry["path"] / "transforms.json").read_text())
        assert len(meta["frames"]) == entry["num_frames"] == 30
        assert meta["camera_model"] == "OPENCV" and meta["k1"] == meta["k2"] == meta["p1"] == meta["p2"] == 0.0
        assert (meta["w"], meta["h"], meta["cx"], meta["cy"]) == (32, 32, 16.0, 16.0)
        for frame in meta["frames"]:
            image = Image.open(entry["path"] / frame["file_path"])
            mask = Image.open(entry["path"] / frame["mask_path"])
            assert image.mode == "RGB" and image.size == (32, 32)
            assert mask.mode == "L" and set(np.unique(np.array(mask))) <= {0, 255}


def test_scene_depends_only_on_seed_and_index(tmp_path: Path) -> None:
    assert scene_seed(3, 1) == scene_seed(3, 1) != scene_seed(3, 2)
    a = sample_scene(scene_seed(3, 1), num_frames=(30, 100))
    b = sample_scene(scene_seed(3, 1), num_frames=(30, 100))
    np.testing.assert_array_equal(a.c2w, b.c2w)
    assert a.obj.radius == b.obj.radius and a.fx == b.fx


def test_frame_counts_in_range() -> None:
    counts = [sample_scene(s, num_frames=(30, 100)).num_frames for s in range(25)]
    assert all(30 <= n <= 100 for n in counts)
    assert len(set(counts)) > 5  # actually drawn, not fixed
    assert sample_scene(0, num_frames=42).num_frames == 42


def test_cameras_orbit_the_object_centre() -> None:
    scene = sample_scene(11, num_frames=60, look_jitter=0.0)
    c2w = torch.from_numpy(scene.c2w)
    centre = torch.tensor(scene.obj.center, dtype=torch.float64)
    origins, forward = c2w[:, :, 3], -c2w[:, :, 2]
    to_centre = centre[None] - origins
    # every optical axis passes through the centre
    off_axis = torch.linalg.cross(to_centre, forward).norm(dim=-1) / to_centre.norm(dim=-1)
    assert off_axis.max() < 1e-6
    assert torch.allclose(nearest_point_to_axes(c2w), centre, atol=1e-5)
    # rotations are orthonormal, cameras above the ground, CO3D-like orbit
    rot = c2w[:, :, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(60, 3, 3), atol=1e-7)
    assert (origins[:, 2] > 0).all()
    rel = origins - centre
    azimuth = np.unwrap(torch.atan2(rel[:, 1], rel[:, 0]).numpy())
    assert abs(azimuth[-1] - azimuth[0]) > math.radians(280)
    assert np.all(np.diff(azimuth) * np.sign(azimuth[-1] - azimuth[0]) > 0)  # monotonic sweep
    elevation = torch.asin(rel[:, 2] / rel.norm(dim=-1))
    assert elevation.min() > 0 and elevation.std() > math.radians(0.5)
    dist = rel.norm(dim=-1)
    assert 1.02 < dist.max() / dist.min() < 1.8


def test_look_jitter_keeps_centre_recoverable() -> None:
    scene = sample_scene(12, num_frames=50, look_jitter=0.02)
    c2w = torch.from_numpy(scene.c2w)
    est = nearest_point_to_axes(c2w)
    err = (est - torch.tensor(scene.obj.center, dtype=torch.float64)).norm()
    assert 1e-6 < err < 0.05


def test_object_centred_and_in_mask() -> None:
    scene = sample_scene(13, num_frames=12, resolution=(40, 32))
    _, masks = scene.render(supersample=1)
    centre = np.array(scene.obj.center)
    for pose, mask in zip(scene.c2w, masks):
        p_cam = pose[:, :3].T @ (centre - pose[:, 3])  # OpenGL camera coordinates, looking along -z
        u = scene.fx * p_cam[0] / -p_cam[2] + scene.cx
        v = -scene.fy * p_cam[1] / -p_cam[2] + scene.cy
        assert abs(u - scene.cx) < 0.1 * scene.width and abs(v - scene.cy) < 0.1 * scene.height
        assert mask[int(v), int(u)]  # the centre lies inside the body, so its pixel shows the object
        assert 0.03 < mask.mean() < 0.6


def test_masks_match_object_pixels() -> None:
    scene = sample_scene(14, num_frames=6, resolution=32)
    threads = torch.get_num_threads()
    with_obj, masks = scene.render(supersample=1, shadows=False)
    assert torch.get_num_threads() == threads  # the renderer's thread cap is restored
    without, empty = scene.render(supersample=1, shadows=False, show_object=False)
    assert not empty.any()
    bg = ~masks
    np.testing.assert_array_equal(with_obj[bg], without[bg])  # outside the mask: pure background
    diff = np.abs(with_obj.astype(np.int16) - without.astype(np.int16)).sum(-1)
    assert diff[masks].mean() > 30.0
    # with shadows the object may only darken the background around it
    shadowed, masks2 = scene.render(supersample=1, shadows=True)
    np.testing.assert_array_equal(masks, masks2)
    assert (shadowed[bg].astype(np.int16) <= without[bg].astype(np.int16) + 1).all()


def test_rays_match_nerfstudio_cameras() -> None:
    from nerfstudio.cameras.cameras import Cameras, CameraType

    scene = sample_scene(15, num_frames=3, resolution=(24, 16))
    pose = torch.from_numpy(scene.c2w[1]).float()
    cams = Cameras(
        camera_to_worlds=pose[None],
        fx=scene.fx,
        fy=scene.fy,
        cx=scene.cx,
        cy=scene.cy,
        width=scene.width,
        height=scene.height,
        camera_type=CameraType.PERSPECTIVE,
    )
    ns = cams.generate_rays(camera_indices=0)
    o, d = camera_rays(pose, scene.fx, scene.fy, scene.cx, scene.cy, scene.width, scene.height)
    assert torch.allclose(d.reshape(16, 24, 3), ns.directions, atol=1e-5)
    assert torch.allclose(o.reshape(16, 24, 3), ns.origins, atol=1e-5)


def test_transforms_loadable_by_nerfstudio(collection: Path) -> None:
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    scene_dir = collection / "scene_0001"
    parser = NerfstudioDataParserConfig(
        data=scene_dir, eval_mode="all", orientation_method="none", center_method="none", auto_scale_poses=False
    ).setup()
    out = parser.get_dataparser_outputs("train")
    meta = json.loads((scene_dir / "transforms.json").read_text())
    assert len(out.image_filenames) == 30 and len(out.mask_filenames) == 30
    assert all(p.exists() for p in out.image_filenames + out.mask_filenames)
    assert torch.allclose(out.cameras.fx, torch.full((30, 1), meta["fl_x"]))
    expected = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float32)[:, :3]
    assert torch.allclose(out.cameras.camera_to_worlds, expected, atol=1e-6)
    assert torch.equal(out.cameras.distortion_params, torch.zeros(30, 6))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_scenes"):
        make_scenes(tmp_path, num_scenes=0)
    with pytest.raises(ValueError, match="num_frames"):
        sample_scene(0, num_frames=(50, 40))
    with pytest.raises(ValueError, match="resolution"):
        sample_scene(0, resolution=(4, 64))
    with pytest.raises(FileNotFoundError, match="scenes.json"):
        load_scene_index(tmp_path)
    (tmp_path / "scenes.json").write_text("{not json")
    with pytest.raises(ValueError, match="scenes.json"):
        load_scene_index(tmp_path)


def test_cli_config_main(tmp_path: Path) -> None:
    import tyro

    config = tyro.cli(
        MakeScenesConfig,
        args=[
            "--out-dir",
            str(tmp_path),
            "--num-scenes",
            "2",
            "--num-heldout",
            "1",
            "--num-frames",
            "30",
            "31",
            "--image-size",
            "16",
            "16",
            "--supersample",
            "1",
        ],
    )
    config.main()
    index = load_scene_index(tmp_path)
    assert [e["split"] for e in index["scenes"]] == ["train", "heldout"]
    assert all(30 <= e["num_frames"] <= 31 for e in index["scenes"])
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave no temp files behind
