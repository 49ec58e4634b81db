"""Tests of `itergen export-snapshots` (itergen_ns.snapshots.exporter and its parts) on tiny procedural scenes, on CPU.

Two train scenes (plus one held-out scene the export must leave out) of 12 frames at 32x32 px; splatfacto runs
60 steps from 300 random points with a snapshot every 20 steps. Torch runs single-threaded here: on a shared
2-core machine that is several times faster, and it pins the float reduction order the determinism test
relies on (renders are byte-identical for a fixed seed *and* thread count; 1 vs 2 threads differ by a few
levels out of 255).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_scenes
import torch
from PIL import Image

from itergen_ns import cli
from itergen_ns.data.scenes import make_scenes
from itergen_ns.snapshots import export_plan, snapshot_run
from itergen_ns.data.discovery import discover_scenes
from itergen_ns.engine.runner import apply_overrides
from itergen_ns.snapshots.export_plan import draw_num_views, shard_name, snapshot_steps
from itergen_ns.snapshots.exporter import ExportSnapshotsConfig
from itergen_ns.snapshots.format import FORMAT_NAME, FORMAT_VERSION, list_shards, load_shard

FRAMES, SIZE, STEPS, EVERY = 12, 32, 60, 20
OVERRIDES = {"pipeline.datamanager.init_num_points": "300"}
ARRAY_DTYPES = {
    "images": np.uint8,
    "c2w": np.float32,
    "intrinsics": np.float32,
    "input_indices": np.int64,
    "steps": np.int64,
    "renders": np.uint8,
    "masks": np.uint8,
}


def _config(data, out: Path, **kwargs) -> ExportSnapshotsConfig:
    data = tuple(Path(d) for d in (data if isinstance(data, (list, tuple)) else [data]))
    kwargs = dict(dict(every=EVERY, max_steps=STEPS, seed=0, overrides=dict(OVERRIDES)), **kwargs)
    return ExportSnapshotsConfig(data=data, out=out, **kwargs)


def _cli_overrides() -> list:
    return ["--overrides"] + [item for kv in OVERRIDES.items() for item in kv]


def _masked_psnr(render: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    diff = render.astype(np.float64) - gt.astype(np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(diff[mask] ** 2)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return tiny_scenes(tmp_path_factory.mktemp("scenes"), 3, seed=5, num_frames=FRAMES, size=SIZE, num_heldout=1)


@pytest.fixture(scope="module")
def exported(scenes: Path, tmp_path_factory):
    """Scene i of 2 exported by `--shard i/2`: part 0 through the API with the parser's defaults, part 1 through
    the `itergen` CLI with the scene masks passed to training (and so stored in the shard)."""
    out = tmp_path_factory.mktemp("snapshots")
    report0 = _config(scenes, out, shard="0/2").export()
    rc = cli.main(
        ["export-snapshots", "--data", str(scenes), "--out", str(out), "--shard", "1/2", "--every", str(EVERY),
         "--max-steps", str(STEPS), "--nerfstudio.use-masks", *_cli_overrides()]
    )  # fmt: skip
    return out, report0, rc


@pytest.fixture(scope="module")
def resumed(scenes: Path, tmp_path_factory):
    """Export of scene_0000 killed in its third snapshot, then rerun to completion."""
    out = tmp_path_factory.mktemp("resumed")
    scene = scenes / "scene_0000"
    name = shard_name(scene, 0)
    real = snapshot_run.render_all_frames
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snapshot_run, "render_all_frames", dying)
        with pytest.raises(KeyboardInterrupt):
            _config(scene, out).export()
    after_kill = sorted(p.name for p in (out / "shards").iterdir())
    # what a SIGKILLed process leaves: its own temp dir, plus another process's shard in flight (must survive)
    (out / "shards" / f".tmp-{name}-999999").mkdir()
    (out / "shards" / ".tmp-other__run00-999998").mkdir()
    report = _config(scene, out).export()
    return out, name, after_kill, report, len(calls)


def test_shard_parts_cover_every_train_scene_once(exported, scenes: Path) -> None:
    out, report0, rc = exported
    assert rc == 0
    names = sorted(p.name for p in list_shards(out))
    train = [shard_name(scenes / s, 0) for s in ("scene_0000", "scene_0001")]
    assert names == train  # the held-out scene_0002 is not exported
    assert report0.written == [train[0]] and not report0.skipped and not report0.failed
    parts = [
        [shard_name(s, r) for s, r in _config(scenes, out, shard=f"{i}/2").jobs()] for i in range(2)
    ]  # fmt: skip
    assert parts == [[train[0]], [train[1]]]
    three = [sum(([shard_name(s, r) for s, r in _config(scenes, out, shard=f"{i}/3").jobs()] for i in range(3)), [])]
    assert sorted(three[0]) == train  # any n: parts are disjoint and complete
    assert not list((out / "runs").glob("*"))  # nerfstudio run folders are removed after each shard


def test_index_and_arrays(exported, scenes: Path) -> None:
    out, _, _ = exported
    assert json.loads((out / "format.json").read_text()) == {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    for path in list_shards(out):
        shard = load_shard(path)
        meta = shard.meta
        scene = scenes / meta["source"].split("/")[-1]
        assert meta["format_version"] == FORMAT_VERSION and meta["name"] == path.name
        assert meta["scene"] == f"{scenes.name}_{scene.name}" and meta["run"] == 0
        assert (meta["num_frames"], meta["height"], meta["width"]) == (FRAMES, SIZE, SIZE)
        assert meta["steps"] == [0, 20, 40, 60] and meta["max_steps"] == STEPS and meta["every"] == EVERY
        assert meta["frame_files"] == [f"images/frame_{i:05d}.png" for i in range(FRAMES)]
        c = meta["num_input_views"]
        assert 1 <= c <= 6 and meta["input_indices"] == shard.input_indices.tolist()
        assert meta["bytes"] == sum(np.load(f, mmap_mode="r").nbytes for f in path.glob("*.npy"))
        with_masks = scene.name == "scene_0001"  # exported with --nerfstudio.use-masks
        assert meta["has_masks"] is with_masks and (shard.masks is not None) is with_masks
        for key, dtype in ARRAY_DTYPES.items():
            if key != "masks" or with_masks:
                assert getattr(shard, key).dtype == dtype, key
        assert shard.images.shape == (FRAMES, SIZE, SIZE, 3)
        assert shard.renders.shape == (4, FRAMES, SIZE, SIZE, 3)
        assert shard.c2w.shape == (FRAMES, 3, 4) and shard.intrinsics.shape == (FRAMES, 4)
        assert shard.input_indices.shape == (c,) and len(set(shard.input_indices.tolist())) == c
        np.testing.assert_array_equal(shard.steps, [0, 20, 40, 60])
        assert shard.render_latents is None
        # render depths: float16 view-axis distances, 0 only where nothing was rendered; on the input views at
        # the last step a surface covers most pixels at about the camera's distance from the scene centre
        assert shard.depths.dtype == np.float16 and shard.depths.shape == (4, FRAMES, SIZE, SIZE)
        depth = np.asarray(shard.depths[-1, shard.input_indices], np.float32)
        assert np.isfinite(depth).all() and depth.min() >= 0 and (depth > 0).mean() > 0.5
        distance = np.median(np.linalg.norm(shard.c2w[shard.input_indices, :, 3], axis=1))
        assert 0.5 * distance < np.median(depth[depth > 0]) < 1.5 * distance
        # ground truth is the scene's own pixels, in frame order
        for i in (0, FRAMES - 1):
            np.testing.assert_array_equal(shard.images[i], np.asarray(Image.open(scene / f"images/frame_{i:05d}.png")))
            if with_masks:
                np.testing.assert_array_equal(
                    shard.masks[i], np.asarray(Image.open(scene / f"masks/frame_{i:05d}.png"))
                )
        # intrinsics are the file's; poses are the file's up to one similarity (nerfstudio's normalisation)
        tf = json.loads((scene / "transforms.json").read_text())
        np.testing.assert_allclose(shard.intrinsics, [[tf["fl_x"], tf["fl_y"], tf["cx"], tf["cy"]]] * FRAMES, rtol=1e-6)
        src = np.array([f["transform_matrix"] for f in tf["frames"]])[:, :3, 3]
        dst = shard.c2w[:, :, 3].astype(np.float64)
        d_src = np.linalg.norm(src[:, None] - src[None], axis=-1)[np.triu_indices(FRAMES, 1)]
        d_dst = np.linalg.norm(dst[:, None] - dst[None], axis=-1)[np.triu_indices(FRAMES, 1)]
        np.testing.assert_allclose(d_dst / d_src, np.full_like(d_src, d_dst[0] / d_src[0]), rtol=1e-4)
        rot = shard.c2w[:, :, :3].astype(np.float64)
        np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)


def test_psnr_on_input_views_rises_with_steps(exported) -> None:
    out, _, _ = exported
    for path in list_shards(out):
        shard = load_shard(path)
        idx = shard.input_indices
        # with masks, splatfacto fits the object only (the loss ignores the background): score object pixels
        mask = shard.masks[idx] > 127 if shard.masks is not None else np.ones(shard.images[idx].shape[:3], bool)
        psnr = [_masked_psnr(shard.renders[k, idx], shard.images[idx], mask) for k in range(len(shard.steps))]
        assert psnr[-1] > psnr[0] + 2.0, (path.name, psnr)
        assert psnr[-1] > max(psnr[:-1]), (path.name, psnr)
        assert not np.array_equal(shard.renders[0], shard.renders[-1])


def test_rerun_skips_finished_shards(exported, scenes: Path) -> None:
    out, _, _ = exported
    stamps = {p.name: (p / "renders.npy").stat().st_mtime_ns for p in list_shards(out)}
    report = _config(scenes, out).export()
    assert sorted(report.skipped) == sorted(stamps) and not report.written and not report.failed
    assert {p.name: (p / "renders.npy").stat().st_mtime_ns for p in list_shards(out)} == stamps


def test_killed_export_leaves_no_partial_shard_and_rerun_completes(resumed) -> None:
    out, name, after_kill, report, calls = resumed
    assert calls == 3  # died in the third snapshot, i.e. mid-shard
    assert after_kill == []  # neither a shard nor a temp dir survived the interruption
    assert report.written == [name]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [".tmp-other__run00-999998", name]
    assert load_shard(out / "shards" / name).renders.shape == (4, FRAMES, SIZE, SIZE, 3)


def test_export_is_deterministic_from_the_seed(exported, resumed) -> None:
    """Same seed, same thread count -> the same bytes, even after an interrupted first attempt."""
    out_a, _, _ = exported
    out_b, name, _, _, _ = resumed
    a, b = load_shard(out_a / "shards" / name), load_shard(out_b / "shards" / name)
    files = sorted(p.name for p in a.path.glob("*.npy"))
    assert files == sorted(p.name for p in b.path.glob("*.npy")) and "renders.npy" in files
    for f in files:
        assert (a.path / f).read_bytes() == (b.path / f).read_bytes(), f
    assert a.meta["seed"] == b.meta["seed"] and a.meta["num_input_views"] == b.meta["num_input_views"]


def test_summary_command_lists_shards_scenes_snapshots_bytes(exported, capsys) -> None:
    out, _, _ = exported
    capsys.readouterr()
    assert cli.main(["snapshots-summary", "--root", str(out)]) == 0
    text = capsys.readouterr().out
    disk = sum(f.stat().st_size for p in list_shards(out) for f in p.iterdir())
    assert f"2 shards, 2 scenes, 8 snapshots, {2 * 4 * FRAMES} rendered frames, {disk} bytes" in " ".join(text.split())
    for p in list_shards(out):
        assert p.name in text


def test_too_few_frames_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    make_scenes(tmp_path / "short", num_scenes=1, seed=1, num_frames=3, resolution=16, supersample=1)
    out = tmp_path / "out"
    config = _config(tmp_path / "short", out, min_views=3, max_views=3)
    report = config.export()
    name = shard_name(tmp_path / "short" / "scene_0000", 0)
    assert list(report.failed) == [name] and not report.written
    assert "scene_0000: 3 frames, need at least 4 for 3 input view(s)" in report.failed[name]
    assert list((out / "shards").glob("*")) == []
    assert config.main() == 1


def test_unreadable_image_is_reported_by_cli_and_leaves_nothing(scenes: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad" / "scene_x"
    shutil.copytree(scenes / "scene_0000", bad)
    (bad / "images" / "frame_00005.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = cli.main(["export-snapshots", "--data", str(bad), "--out", str(out), *_cli_overrides()])
    assert rc == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "scene_x" in text and "unreadable image" in text and "frame_00005.png" in text
    assert list((out / "shards").glob("*")) == []


def test_output_root_of_another_format_version_is_refused(scenes: Path, tmp_path: Path) -> None:
    (tmp_path / "format.json").write_text(json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=f"version {FORMAT_VERSION + 1}.*new directory"):
        _config(scenes, tmp_path).export()
    assert not (tmp_path / "shards").exists()


def test_bad_arguments_are_refused_before_training(scenes: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--shard '2/2'"):
        _config(scenes, tmp_path / "o", shard="2/2").export()
    with pytest.raises(FileNotFoundError, match="no such scene"):
        _config(tmp_path / "missing", tmp_path / "o").export()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no scenes"):
        _config(tmp_path / "empty", tmp_path / "o").export()
    with pytest.raises(ValueError, match="min-views"):
        _config(scenes, tmp_path / "o", min_views=4, max_views=2).export()


def test_scene_discovery_and_runs_per_scene(scenes: Path, tmp_path: Path) -> None:
    assert [p.name for p in discover_scenes([scenes])] == ["scene_0000", "scene_0001"]
    assert [p.name for p in discover_scenes([scenes], include_heldout=True)] == [
        "scene_0000",
        "scene_0001",
        "scene_0002",
    ]
    assert [p.name for p in discover_scenes([scenes / "scene_0002", scenes])] == [
        "scene_0002",
        "scene_0000",
        "scene_0001",
    ]
    jobs = _config(scenes, tmp_path, runs_per_scene=3).jobs()
    names = [shard_name(s, r) for s, r in jobs]
    assert names == [f"{scenes.name}_scene_000{i}__run0{r}" for i in range(2) for r in range(3)]
    seeds = {export_plan.run_seed(0, n) for n in names}
    assert len(seeds) == len(names)  # every run has its own seed (and so its own C and input views)


def test_num_views_distribution_favours_one_to_three() -> None:
    rng = np.random.default_rng(0)
    draws = np.array([draw_num_views(rng, 1.5, 1, 6) for _ in range(20000)])
    frac = np.bincount(draws, minlength=7)[1:] / len(draws)
    np.testing.assert_allclose(
        frac[:3], [1 - np.exp(-2 / 3), np.exp(-2 / 3) - np.exp(-4 / 3), np.exp(-4 / 3) - np.exp(-2)], atol=0.015
    )
    assert frac[:3].sum() > 0.85 and draws.min() == 1 and draws.max() == 6
    clipped = [draw_num_views(rng, 1.5, 2, 3) for _ in range(2000)]
    assert set(clipped) == {2, 3}
    assert snapshot_steps(60, 20) == [0, 20, 40, 60] and snapshot_steps(50, 20) == [0, 20, 40, 50]


def test_overrides_take_the_type_of_the_field() -> None:
    from itergen_ns.engine.runner import method_config

    config = method_config("itergen-splatfacto")
    apply_overrides(config, {
        "pipeline.model.sh_degree": "1",
        "pipeline.model.cull_alpha_thresh": "0",
        "pipeline.model.use_scale_regularization": "true",
        "pipeline.datamanager.input_views": "[1, 2]",
        "optimizers.means.optimizer.lr": "0.001",
        "output_dir": "somewhere",
    })  # fmt: skip
    model = config.pipeline.model
    assert model.sh_degree == 1 and model.cull_alpha_thresh == 0.0 and isinstance(model.cull_alpha_thresh, float)
    assert model.use_scale_regularization is True and config.pipeline.datamanager.input_views == (1, 2)
    assert config.optimizers["means"]["optimizer"].lr == 0.001 and config.output_dir == Path("somewhere")
    with pytest.raises(ValueError, match="no field 'sh_degre'"):
        apply_overrides(config, {"pipeline.model.sh_degre": "1"})


def test_render_latents_from_a_diffusion_checkpoint_feed_the_diffusion_reader(scenes: Path, tmp_path: Path) -> None:
    from itergen_ns.diffusion.presets import tiny_config
    from itergen_ns.diffusion.data import SnapshotClipDataset
    from itergen_ns.diffusion.model import IterGenDiffusionModel

    model = IterGenDiffusionModel.from_config(tiny_config(seed=3))
    checkpoint = model.save_pretrained(tmp_path / "diffusion")
    out = tmp_path / "out"
    report = _config(scenes / "scene_0001", out, max_steps=20, every=10, latents_vae=checkpoint).export()
    shard = load_shard(out / "shards" / report.written[0])
    latent_shape = (4, *model.latent_hw)
    assert shard.render_latents.dtype == np.float16 and shard.render_latents.shape == (3, FRAMES, *latent_shape)
    assert shard.meta["render_latents"]["shape"] == list(latent_shape)
    x = torch.from_numpy(np.ascontiguousarray(shard.renders[2])).permute(0, 3, 1, 2).float() / 255
    expected = model.encode_latents(model.resize(x)).numpy()
    np.testing.assert_allclose(shard.render_latents[2].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert np.abs(expected).max() > 0.01  # not trivially zero
    data = SnapshotClipDataset(out, height=32, width=32, num_frames=8, max_input_views=3, latent_shape=latent_shape)
    assert data.use_render_latents
    item = data[0]
    assert item["render_latents"].shape == (8, *latent_shape) and item["renders"].shape == (8, 3, 32, 32)


def test_co3d_category_exports_through_the_co3d_parser(tmp_path: Path) -> None:
    from co3d_fixture import make_co3d_sequence

    from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig

    seq = make_co3d_sequence(tmp_path / "co3d", num_frames=8)  # frames of 4 different sizes
    out = tmp_path / "out"
    co3d = CO3DDataParserConfig(crop_size=1 << 16, crop_output_size=24)  # largest square, resized to 24 px
    report = _config(seq.category_dir, out, max_steps=10, every=5, co3d=co3d, min_views=2, max_views=2).export()
    assert report.written == [f"hydrant_{seq.sequence_dir.name}__run00"]  # the annotation-only sequence is no scene
    shard = load_shard(out / "shards" / report.written[0])
    assert shard.images.shape == (8, 24, 24, 3) and shard.renders.shape == (3, 8, 24, 24, 3)
    assert shard.input_indices.shape == (2,) and shard.meta["source"] == str(seq.sequence_dir)
    for i, rel in enumerate(shard.meta["frame_files"]):  # the parser's processed crops, in frame-number order
        assert rel.startswith(".itergen_cache/") and f"frame{2 * i + 1:06d}" in rel
        np.testing.assert_array_equal(shard.images[i], np.asarray(Image.open(seq.sequence_dir / rel).convert("RGB")))
    # every crop is square and resized to 24 px: the principal point stays inside it
    assert np.all((shard.intrinsics[:, 2:] > 0) & (shard.intrinsics[:, 2:] < 24))
