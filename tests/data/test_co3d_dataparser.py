"""CO3D v2 dataparser: conventions pinned by projection, normalisation, images, splits, errors."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from nerfstudio.data.dataparsers.base_dataparser import transform_poses_to_original_space

from co3d_fixture import OBJECT_CENTER, WORLD_UP, make_co3d_sequence, project_pytorch3d
from itergen_ns.data.camera_utils import nearest_point_to_axes
from itergen_ns.data.co3d_dataparser import CO3DDataError, CO3DDataParser, CO3DDataParserConfig, is_co3d_sequence

ALL = dict(num_input_views=0, frame_size=None)  # every frame in every split, unframed (raw CO3D geometry)


def parse(seq, split="train", **kwargs):
    return CO3DDataParserConfig(data=seq.sequence_dir, **kwargs).setup().get_dataparser_outputs(split)


def sample_points(n=30, seed=1):
    rng = np.random.default_rng(seed)
    return OBJECT_CENTER + rng.uniform(-0.5, 0.5, size=(n, 3))


def to_ns_world(outputs, points):
    """CO3D world -> dataparser world, written out from the recorded transform: x' = s * (A x + b)."""
    t = outputs.dataparser_transform.double().numpy()
    return outputs.dataparser_scale * (points @ t[:, :3].T + t[:, 3])


def project_ns(cameras, i, points):
    """Pixels of ``points`` in nerfstudio camera ``i`` (OpenGL: looks along -z, y up; pixel centres at +0.5)."""
    c2w = cameras.camera_to_worlds[i].double().numpy()
    local = (points - c2w[:, 3]) @ c2w[:, :3]
    fx, fy, cx, cy = (float(getattr(cameras, k)[i]) for k in ("fx", "fy", "cx", "cy"))
    depth = -local[:, 2]
    return np.stack([fx * local[:, 0] / depth + cx, -fy * local[:, 1] / depth + cy], axis=1)


def ray_miss_px(cameras, i, pixels, points):
    """Distance (in pixels) between ``points`` and nerfstudio's own rays through ``pixels`` of camera ``i``."""
    coords = torch.tensor(pixels[:, ::-1].copy(), dtype=torch.float32)  # nerfstudio coords are (y, x)
    idx = torch.full((len(pixels), 1), i, dtype=torch.long)
    rays = cameras.generate_rays(camera_indices=idx, coords=coords)
    o, d = rays.origins.double().numpy(), rays.directions.double().numpy()
    rel = points - o
    along = (rel * d).sum(1)
    miss = np.linalg.norm(rel - along[:, None] * d, axis=1)
    return miss / along * float(cameras.fx[i])


# ------------------------------------------------------------------------------------------------ conventions
@pytest.mark.parametrize("fmt", ["ndc_isotropic", "ndc_norm_image_bounds", None])
def test_projection_matches_pytorch3d(tmp_path, fmt):
    """Normalised nerfstudio cameras project CO3D points where PyTorch3D does, non-square and mixed-size images."""
    seq = make_co3d_sequence(tmp_path, intrinsics_format=fmt)
    out = parse(seq, **ALL)
    cams = out.cameras
    assert len(out.image_filenames) == len(seq.frames) == cams.shape[0]
    pts = sample_points()
    pts_ns = to_ns_world(out, pts)
    for i, frame in enumerate(seq.frames):
        h, w = frame["image"]["size"]
        assert (int(cams.width[i]), int(cams.height[i])) == (w, h)
        ref = project_pytorch3d(frame, pts)
        got = project_ns(cams, i, pts_ns)
        assert np.abs(got - ref).max() < 0.5
        assert np.abs(got - ref).max() < 1e-3  # in fact exact up to float32
        assert ray_miss_px(cams, i, ref, pts_ns).max() < 0.5
    # the intrinsics formats really differ for non-square images (so the test above distinguishes them)
    if fmt is not None:
        other = "ndc_norm_image_bounds" if fmt == "ndc_isotropic" else "ndc_isotropic"
        wrong = dict(seq.frames[0], viewpoint=dict(seq.frames[0]["viewpoint"], intrinsics_format=other))
        assert np.abs(project_pytorch3d(wrong, pts) - project_ns(cams, 0, pts_ns)).max() > 2.0


def test_pixel_formula_by_hand(tmp_path):
    """f_px = f_ndc * s and c_px = -p_ndc * s + (W/2, H/2), spelled out for the first frame of each format."""
    for fmt in ("ndc_isotropic", "ndc_norm_image_bounds"):
        seq = make_co3d_sequence(tmp_path / fmt, intrinsics_format=fmt)
        cams = parse(seq, **ALL).cameras
        f = seq.frames[0]
        h, w = f["image"]["size"]
        sx, sy = (min(w, h) / 2, min(w, h) / 2) if fmt == "ndc_isotropic" else (w / 2, h / 2)
        (fxn, fyn), (pxn, pyn) = f["viewpoint"]["focal_length"], f["viewpoint"]["principal_point"]
        got = [float(cams.fx[0]), float(cams.fy[0]), float(cams.cx[0]), float(cams.cy[0])]
        assert got == pytest.approx([fxn * sx, fyn * sy, -pxn * sx + w / 2, -pyn * sy + h / 2], abs=1e-4)


def test_design_opencv_route_agrees(tmp_path):
    """DESIGN §7: R_cv = R^T with rows 0,1 negated, t_cv = T with entries 0,1 negated; c2w = inv(w2c), cols y,z negated."""
    seq = make_co3d_sequence(tmp_path)
    out = parse(seq, center_method="none", orient=False, camera_radius=None, **ALL)
    assert torch.allclose(out.dataparser_transform, torch.eye(4)[:3], atol=1e-7) and out.dataparser_scale == 1.0
    for i, f in enumerate(seq.frames):
        R, T = np.asarray(f["viewpoint"]["R"]), np.asarray(f["viewpoint"]["T"])
        w2c = np.eye(4)
        w2c[:3, :3] = R.T * np.array([-1, -1, 1])[:, None]
        w2c[:3, 3] = T * np.array([-1, -1, 1])
        c2w = np.linalg.inv(w2c)[:3] * np.array([1, -1, -1, 1])
        assert np.allclose(out.cameras.camera_to_worlds[i].double().numpy(), c2w, atol=1e-5)
        assert np.allclose(c2w[:, 3], seq.eye[i], atol=1e-5)  # camera centre is the look-at eye
        fwd = OBJECT_CENTER - seq.eye[i]
        assert np.dot(-c2w[:, 2], fwd / np.linalg.norm(fwd)) == pytest.approx(1.0, abs=1e-6)  # looks along -z


# ------------------------------------------------------------------------------------------------ normalisation
def test_normalisation_centre_up_scale_and_round_trip(tmp_path):
    seq = make_co3d_sequence(tmp_path, elevation_jitter=0.0)
    out = parse(seq, camera_radius=1.5, **ALL)
    t, s = out.dataparser_transform.double(), out.dataparser_scale
    assert torch.allclose(t[:, :3] @ t[:, :3].T, torch.eye(3, dtype=torch.float64), atol=1e-6)  # rigid
    c2w = out.cameras.camera_to_worlds.double()
    # the object centre (where all axes meet) is the new origin, cameras are at the requested radius
    assert np.allclose(to_ns_world(out, OBJECT_CENTER[None])[0], 0.0, atol=1e-5)
    assert torch.allclose(
        c2w[:, :, 3].norm(dim=-1), torch.full((len(seq.frames),), 1.5, dtype=torch.float64), atol=1e-5
    )
    assert nearest_point_to_axes(c2w).norm() < 1e-5
    # the orbit normal (here the world up) becomes +z; cameras' up vectors agree with it
    up = t[:, :3] @ torch.from_numpy(WORLD_UP)
    assert torch.allclose(up, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-5)
    assert (c2w[:, 2, 1] > 0).all()
    # round trip: nerfstudio's own inverse gives back the raw CO3D cameras; points invert too
    raw = parse(seq, center_method="none", orient=False, camera_radius=None, **ALL).cameras.camera_to_worlds
    back = transform_poses_to_original_space(c2w.float(), out.dataparser_transform, s, camera_convention="opengl")
    assert torch.allclose(back, raw, atol=1e-4)
    pts = sample_points()
    pts_back = (to_ns_world(out, pts) / s - t[:, 3].numpy()) @ t[:, :3].numpy()
    assert np.allclose(pts_back, pts, atol=1e-6)
    assert torch.allclose(out.scene_box.aabb, torch.tensor([[-1.5] * 3, [1.5] * 3]), atol=1e-4)


def test_up_sign_follows_cameras_with_jitter(tmp_path):
    """With elevation jitter the orbit is not planar; the fitted normal is still near the world up, sign included."""
    seq = make_co3d_sequence(tmp_path, elevation_jitter=0.1)
    out = parse(seq, **ALL)
    up = out.dataparser_transform.double()[:, :3] @ torch.from_numpy(WORLD_UP)
    assert up[2] > np.cos(np.deg2rad(5.0))


def test_pointcloud_centre_and_points(tmp_path):
    """The explicit leak flags still work (off by default: see test_leaks.py)."""
    seq = make_co3d_sequence(tmp_path, with_pointcloud=True)
    out = parse(seq, center_method="pointcloud", load_3d_points=True, **ALL)
    import trimesh

    raw = np.asarray(trimesh.load(seq.sequence_dir / "pointcloud.ply").vertices)
    lo, hi = np.quantile(raw, [0.01, 0.99], axis=0)
    assert np.allclose(to_ns_world(out, ((lo + hi) / 2)[None])[0], 0.0, atol=1e-5)
    xyz = out.metadata["points3D_xyz"].double().numpy()
    assert xyz.shape == (400, 3) and out.metadata["points3D_rgb"].dtype == torch.uint8
    assert np.allclose(xyz, to_ns_world(out, raw), atol=1e-5)
    # projection still agrees with PyTorch3D under this centre
    pts = sample_points()
    f = seq.frames[3]
    assert np.abs(project_ns(out.cameras, 3, to_ns_world(out, pts)) - project_pytorch3d(f, pts)).max() < 0.5


# ------------------------------------------------------------------------------------------------ images, masks, crops
@pytest.mark.parametrize("crop_center", ["mask_bbox", "scene_center"])
@pytest.mark.parametrize("out_size", [None, 40])
def test_crop_projection_and_pixels(tmp_path, crop_center, out_size):
    seq = make_co3d_sequence(tmp_path, intrinsics_format="ndc_norm_image_bounds")
    out = parse(seq, crop_size=32, crop_output_size=out_size, crop_center=crop_center, **ALL)
    cams = out.cameras
    side_out = out_size or 32
    pts = sample_points()
    pts_ns = to_ns_world(out, pts)
    obj_ns = to_ns_world(out, OBJECT_CENTER[None])
    for i, frame in enumerate(seq.frames):
        crop = Image.open(out.image_filenames[i])
        assert crop.size == (side_out, side_out) == (int(cams.width[i]), int(cams.height[i]))
        ref = project_pytorch3d(frame, pts)
        # the crop window in source pixels, recovered from the file name and checked against the intrinsics
        x0, y0, side, osz = (int(v) for v in out.image_filenames[i].stem.split("_crop")[1].split("_"))
        assert side == 32 and osz == side_out
        zoom = side_out / side
        expected = (ref - [x0, y0]) * zoom
        assert np.abs(project_ns(cams, i, pts_ns) - expected).max() < 0.5
        assert ray_miss_px(cams, i, expected, pts_ns).max() < 0.5
        # the object centre sits in the middle of the crop unless the window was clamped at the border; tolerance:
        # rounding the window to whole pixels (0.5 px), plus the mask bbox's pixel quantisation (1 px)
        h, w = frame["image"]["size"]
        u, v = project_ns(cams, i, obj_ns)[0]
        u_src, v_src = project_pytorch3d(frame, OBJECT_CENTER[None])[0]
        tol = (0.5 + (1.0 if crop_center == "mask_bbox" else 0.0)) * zoom + 1e-4
        if 16 <= u_src <= w - 16:
            assert abs(u - side_out / 2) <= tol
        if 16 <= v_src <= h - 16:
            assert abs(v - side_out / 2) <= tol
        if out_size is None:  # pixels are exactly the source window
            src = np.asarray(Image.open(seq.root / frame["image"]["path"]).convert("RGB"))
            assert np.array_equal(np.asarray(crop), src[y0 : y0 + 32, x0 : x0 + 32])


def test_crop_cache_reused(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=4)
    first = parse(seq, crop_size=24, **ALL).image_filenames
    stamps = [p.stat().st_mtime_ns for p in first]
    second = parse(seq, crop_size=24, **ALL).image_filenames
    assert first == second and stamps == [p.stat().st_mtime_ns for p in second]
    assert all(p.parent.parent.parent == seq.sequence_dir / ".itergen_cache" for p in first)
    assert not list((seq.sequence_dir / ".itergen_cache").rglob("*.tmp*"))  # atomic writes leave no temp files


@pytest.mark.parametrize("background", ["white", "black"])
def test_masks_and_background(tmp_path, background):
    seq = make_co3d_sequence(tmp_path, num_frames=4)
    out = parse(seq, use_masks=True, mask_background=background, **ALL)
    color = 255 if background == "white" else 0
    assert torch.allclose(out.metadata["background_color"], torch.full((3,), color / 255.0))
    assert out.mask_filenames is not None and len(out.mask_filenames) == 4
    for i, frame in enumerate(seq.frames):
        soft = np.asarray(Image.open(seq.root / frame["mask"]["path"]), dtype=np.float32) / 255.0
        src = np.asarray(Image.open(seq.root / frame["image"]["path"]).convert("RGB"), dtype=np.float32)
        got = np.asarray(Image.open(out.image_filenames[i]).convert("RGB"), dtype=np.float32)
        expected = soft[..., None] * src + (1 - soft[..., None]) * color
        assert np.abs(got - expected).max() <= 0.5 + 1e-3
        assert (got[soft == 0] == color).all() and np.array_equal(got[soft == 1], src[soft == 1])
        mask = np.asarray(Image.open(out.mask_filenames[i]))
        assert set(np.unique(mask)) <= {0, 255} and np.array_equal(mask == 255, soft >= 0.5)


def test_masks_only_keep_original_images(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=3)
    out = parse(seq, use_masks=True, **ALL)
    assert out.image_filenames == [seq.root / f["image"]["path"] for f in seq.frames]
    assert out.metadata["background_color"] is None
    from nerfstudio.data.datasets.base_dataset import InputDataset

    data = InputDataset(out)[1]
    assert data["mask"].shape[:2] == data["image"].shape[:2] and data["mask"].dtype == torch.bool
    assert 0 < int(data["mask"].sum()) < data["mask"].numel()


# ------------------------------------------------------------------------------------------------ splits
def test_splits_deterministic_and_disjoint(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=12, with_masks=False)
    numbers = [f["frame_number"] for f in seq.frames]
    for n in (1, 6):
        tr = parse(seq, num_input_views=n, input_view_seed=3)
        ev = parse(seq, "test", num_input_views=n, input_view_seed=3)
        val = parse(seq, "val", num_input_views=n, input_view_seed=3)
        tr_n, ev_n = tr.metadata["co3d_frame_numbers"], ev.metadata["co3d_frame_numbers"]
        assert len(tr_n) == n and not set(tr_n) & set(ev_n) and sorted(tr_n + ev_n) == numbers
        assert val.metadata["co3d_frame_numbers"] == ev_n
        assert parse(seq, num_input_views=n, input_view_seed=3).metadata["co3d_frame_numbers"] == tr_n
    one = [parse(seq, num_input_views=1, input_view_seed=s).metadata["co3d_frame_numbers"][0] for s in range(6)]
    assert len(set(one)) > 1  # the seed matters
    # the cameras follow the split: split="all" holds every frame in the run's (input-only) normalisation
    tr = parse(seq, num_input_views=6, input_view_seed=3)
    every = parse(seq, "all", num_input_views=6, input_view_seed=3)
    pos = [numbers.index(n) for n in tr.metadata["co3d_frame_numbers"]]
    assert tr.metadata["input_view_indices"] == every.metadata["input_view_indices"] == pos
    assert every.metadata["co3d_frame_numbers"] == numbers
    assert torch.equal(tr.cameras.camera_to_worlds, every.cameras.camera_to_worlds[pos])
    assert tr.image_filenames == [every.image_filenames[p] for p in pos]


def test_explicit_views(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=8, with_masks=False)
    by_pos = parse(seq, input_views=(5, 1))
    assert by_pos.metadata["co3d_frame_numbers"] == [2, 10]
    by_num = parse(seq, input_frame_numbers=(6, 12))
    assert by_num.metadata["co3d_frame_numbers"] == [6, 12]
    assert 6 not in parse(seq, "test", input_frame_numbers=(6, 12)).metadata["co3d_frame_numbers"]
    with pytest.raises(CO3DDataError, match=r"input_frame_numbers: frame numbers \[7\]"):
        parse(seq, input_frame_numbers=(7,))


def test_set_lists(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=8, with_masks=False)
    numbers = [f["frame_number"] for f in seq.frames]
    # within-sequence split: the set list is the split
    tr = parse(seq, set_list="manyview_test_0").metadata["co3d_frame_numbers"]
    te = parse(seq, "test", set_list="manyview_test_0").metadata["co3d_frame_numbers"]
    assert tr == numbers[:4] and te == numbers[4:]
    assert parse(seq, "val", set_list="manyview_test_0").metadata["co3d_frame_numbers"] == numbers[4:]
    # whole-sequence subset: its frames are the pool for num_input_views (frame 0 is not listed)
    tr = parse(seq, set_list="fewview_dev", num_input_views=2).metadata["co3d_frame_numbers"]
    te = parse(seq, "test", set_list="fewview_dev", num_input_views=2).metadata["co3d_frame_numbers"]
    assert len(tr) == 2 and sorted(tr + te) == numbers[1:]
    # a file name works as well
    assert parse(seq, set_list="set_lists_fewview_dev.json", num_input_views=2).metadata["co3d_frame_numbers"] == tr


def test_missing_image_skipped_with_warning(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=6, with_masks=False)
    gone = seq.root / seq.frames[2]["image"]["path"]
    gone.unlink()
    with pytest.warns(UserWarning, match=r"skipping 1 frame.*" + gone.name):
        out = parse(seq, **ALL)
    assert out.metadata["co3d_frame_numbers"] == [0, 2, 6, 8, 10]
    assert gone not in out.image_filenames


def test_missing_mask_skipped_when_masks_used(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=4)
    (seq.root / seq.frames[1]["mask"]["path"]).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(parse(seq, **ALL).image_filenames) == 4  # masks not needed: no warning
    with pytest.warns(UserWarning, match="mask"):
        assert parse(seq, use_masks=True, **ALL).metadata["co3d_frame_numbers"] == [0, 4, 6]


# ------------------------------------------------------------------------------------------------ layout and errors
def test_is_co3d_sequence_and_category_folder(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=3, with_masks=False)
    assert is_co3d_sequence(seq.sequence_dir)
    assert not is_co3d_sequence(seq.category_dir) and not is_co3d_sequence(tmp_path)
    assert not is_co3d_sequence(seq.category_dir / "set_lists")
    assert not is_co3d_sequence(tmp_path / "nope")
    out = CO3DDataParserConfig(data=seq.category_dir, sequence_name=seq.sequence_dir.name, **ALL).setup()
    assert isinstance(out, CO3DDataParser)
    assert out.get_dataparser_outputs("train").metadata["co3d_frame_numbers"] == [0, 2, 4]


def _one_line_error(match, **kwargs):
    with pytest.raises(CO3DDataError, match=match) as info:
        CO3DDataParserConfig(**kwargs).setup().get_dataparser_outputs("train")
    assert "\n" not in str(info.value)
    return str(info.value)


def test_errors(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=3, with_masks=False)
    # not a CO3D sequence
    plain = tmp_path / "plain"
    plain.mkdir()
    msg = _one_line_error("is not a CO3D sequence folder", data=plain)
    assert str(plain) in msg and "<root>/<category>/<sequence>" in msg
    _one_line_error("is not a directory", data=tmp_path / "missing")
    # category folder without sequence_name
    _one_line_error("category folder", data=seq.category_dir)
    # sequence name absent from the annotations
    stray = seq.category_dir / "000_0_0"
    stray.mkdir()
    msg = _one_line_error("sequence '000_0_0' is not in", data=stray)
    assert "frame_annotations.jgz" in msg and "106_12650_23736" in msg
    # missing set list
    _one_line_error(
        "missing set list .*set_lists_nope.json; available: set_lists_fewview_dev.json",
        data=seq.sequence_dir,
        set_list="nope",
    )
    # unknown intrinsics_format
    ann_path = seq.category_dir / "frame_annotations.jgz"
    with gzip.open(ann_path, "rt") as f:
        records = json.load(f)
    records[0]["viewpoint"]["intrinsics_format"] = "ndc_weird"
    with gzip.open(ann_path, "wt") as f:
        json.dump(records, f)
    msg = _one_line_error("viewpoint.intrinsics_format='ndc_weird'", data=seq.sequence_dir)
    assert "ndc_isotropic" in msg and "ndc_norm_image_bounds" in msg and str(ann_path) in msg
    # missing field
    records[0]["viewpoint"]["intrinsics_format"] = "ndc_isotropic"
    del records[0]["viewpoint"]["T"]
    with gzip.open(ann_path, "wt") as f:
        json.dump(records, f)
    _one_line_error("missing field 'viewpoint.T'", data=seq.sequence_dir)
    # missing annotation file
    ann_path.unlink()
    msg = _one_line_error("missing annotation file", data=seq.sequence_dir)
    assert str(ann_path) in msg
    with pytest.raises(ValueError, match="unknown split"):
        CO3DDataParserConfig(data=seq.sequence_dir).setup().get_dataparser_outputs("bogus")


def test_image_size_mismatch_is_an_error(tmp_path):
    seq = make_co3d_sequence(tmp_path, num_frames=2, with_masks=False)
    path = seq.root / seq.frames[0]["image"]["path"]
    Image.new("RGB", (10, 10)).save(path)
    _one_line_error(r"is 10x10 \(W x H\) but its annotation image.size says 64x48", data=seq.sequence_dir, **ALL)
