"""Training-side tests: snapshot clip dataset, VAE fitting, checkpoint/resume, validation media (tiny, CPU)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import tyro

from itergen_ns.diffusion.data import EmptyDatasetError, SnapshotClipDataset, StepSampler
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.train import TrainDiffusionConfig, train
from itergen_ns.diffusion.vae_fit import fit_vae
from itergen_ns.diffusion.presets import tiny_config
from itergen_ns.snapshots.format import ensure_format

pytestmark = pytest.mark.usefixtures("one_torch_thread")


from shard_fixture import make_shard, orbit_c2w  # noqa: E402


@pytest.fixture()
def snapshots(tmp_path) -> Path:
    root = tmp_path / "snapshots"
    make_shard(root, "scene_a", seed=0)
    make_shard(root, "scene_b", seed=1)
    return root


def test_dataset_items(snapshots):
    ds = SnapshotClipDataset(snapshots, 32, 32, num_frames=4, max_input_views=3, seed=5)
    item = ds[7]
    assert item["frames"].shape == (4, 3, 32, 32) and item["renders"].shape == (4, 3, 32, 32)
    assert item["input_images"].shape == (3, 3, 32, 32)
    assert item["input_mask"].tolist() == [True, True, False]  # the run's two input views, then padding
    assert torch.count_nonzero(item["input_images"][2]) == 0
    assert item["frames"].min() >= 0 and item["frames"].max() <= 1
    # the clip is consecutive along the trajectory (either direction): neighbouring target cameras are one
    # orbit step apart, and the input views are frames 0 and 6 of the shard
    centres = item["target_c2w"][:, :3, 3]
    steps = (centres[1:] - centres[:-1]).norm(dim=-1)
    torch.testing.assert_close(steps, torch.full_like(steps, 2 * 2.0 * math.sin(math.pi / 12)), atol=1e-4, rtol=0)
    all_c2w = torch.from_numpy(orbit_c2w(12))
    torch.testing.assert_close(item["input_c2w"][0, :3], all_c2w[0])
    torch.testing.assert_close(item["input_c2w"][1, :3], all_c2w[6])
    # intrinsics follow the resize (24 -> 32 px)
    torch.testing.assert_close(item["target_intrinsics"][0], torch.tensor([40.0, 40.0, 16.0, 16.0]))
    # items are a pure function of (seed, index)
    again = ds[7]
    assert all(torch.equal(item[k], again[k]) for k in item)
    assert not torch.equal(ds[8]["target_c2w"], item["target_c2w"]) or not torch.equal(
        ds[8]["renders"], item["renders"]
    )
    assert list(StepSampler(10, 3)) == [10, 11, 12]


def test_precomputed_render_latents_used_when_shapes_match(tmp_path):
    root = tmp_path / "snap"
    make_shard(root, "with_latents", latents=True)
    ds = SnapshotClipDataset(root, 32, 32, 4, 3, latent_shape=(4, 8, 8))
    assert ds.use_render_latents and ds[0]["render_latents"].shape == (4, 4, 8, 8)
    ds = SnapshotClipDataset(root, 64, 64, 4, 3, latent_shape=(4, 16, 16))
    assert not ds.use_render_latents and "render_latents" not in ds[0]


def test_corrupt_shard_skipped_with_warning(snapshots):
    bad = make_shard(snapshots, "scene_bad", seed=2)
    (bad / "renders.npy").write_bytes(b"not a numpy file")
    short = make_shard(snapshots, "scene_short", frames=3, seed=3)
    with pytest.warns(UserWarning) as record:
        ds = SnapshotClipDataset(snapshots, 32, 32, 4, 3)
    messages = " | ".join(str(r.message) for r in record)
    assert "scene_bad" in messages and "corrupt" in messages
    assert "scene_short" in messages
    assert sorted(s.path.name for s in ds.shards) == ["scene_a", "scene_b"]
    assert short.exists()


def test_empty_dataset_is_an_error(tmp_path):
    root = tmp_path / "empty"
    ensure_format(root)
    with pytest.raises(EmptyDatasetError, match="no usable snapshot shards"):
        SnapshotClipDataset(root, 32, 32, 4, 3)
    bad = make_shard(root, "only_bad")
    (bad / "c2w.npy").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(EmptyDatasetError):
            SnapshotClipDataset(root, 32, 32, 4, 3)
    with pytest.raises(FileNotFoundError):
        SnapshotClipDataset(tmp_path / "missing", 32, 32, 4, 3)


def test_fit_vae_reduces_reconstruction_loss(snapshots):
    torch.manual_seed(0)
    model = IterGenDiffusionModel.from_config(tiny_config(num_frames=4))
    ds = SnapshotClipDataset(snapshots, 32, 32, 4, 3)
    before = float(model.vae.config.scaling_factor)
    losses = fit_vae(model.vae, ds, steps=30, lr=2e-3)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
    assert float(model.vae.config.scaling_factor) != before
    assert not any(p.requires_grad for p in model.vae.parameters())


def _cfg(data: Path, out: Path, **kw) -> TrainDiffusionConfig:
    base = dict(
        data=data,
        output_dir=out,
        model="tiny",
        max_steps=4,
        batch_size=1,
        learning_rate=1e-3,
        lr_warmup_steps=1,
        checkpoint_every=2,
        validate_every=0,
        log_every=1,
        vae_fit_steps=0,
        progress=False,
        model_overrides={"num_frames": 4},
    )
    base.update(kw)
    return TrainDiffusionConfig(**base)


def test_checkpoint_resume_gives_identical_next_losses(snapshots, tmp_path):
    full = train(_cfg(snapshots, tmp_path / "a"))
    assert sorted(full.losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in full.losses.values())
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert ckpts == ["step_00000002", "step_00000004"]  # no temporaries left behind
    state = json.loads((tmp_path / "a" / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["step"] == 2

    resumed = train(_cfg(snapshots, tmp_path / "b", resume=str(tmp_path / "a" / "checkpoints" / "step_00000002")))
    assert sorted(resumed.losses) == [3, 4]
    assert resumed.losses[3] == pytest.approx(full.losses[3], rel=1e-6, abs=1e-7)
    assert resumed.losses[4] == pytest.approx(full.losses[4], rel=1e-6, abs=1e-7)
    # the exported EMA models agree too (EMA state restored)
    a = IterGenDiffusionModel.from_pretrained(tmp_path / "a" / "latest")
    b = IterGenDiffusionModel.from_pretrained(tmp_path / "b" / "latest")
    for (name, pa), pb in zip(a.denoiser.state_dict().items(), b.denoiser.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    # "--resume latest" finds the newest checkpoint and has nothing left to do
    again = train(_cfg(snapshots, tmp_path / "a", resume="latest"))
    assert again.step == 4 and again.losses == {}


def test_training_writes_validation_media_and_logs(snapshots, tmp_path):
    out = tmp_path / "run"
    result = train(
        _cfg(
            snapshots,
            out,
            max_steps=1,
            checkpoint_every=1,
            validate_every=1,
            validation_clips=1,
            validation_inference_steps=2,
            vae_fit_steps=2,
        )
    )
    assert result.step == 1 and len(result.vae_losses) == 2
    png = out / "validation" / "step_00000001_clip0.png"
    assert png.exists()
    import imageio.v2 as imageio

    grid = imageio.imread(png)
    assert grid.shape == (3 * 128, 4 * 128, 3)  # rows: render | sample | ground truth; 32 px upscaled x4
    mp4 = out / "validation" / "step_00000001_clip0.mp4"
    assert mp4.exists() and mp4.stat().st_size > 0
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    # the fitted VAE travels with the exported model
    assert (out / "latest" / "vae").is_dir()
    loaded = IterGenDiffusionModel.from_pretrained(out / "latest")
    assert loaded.config.vae.pretrained is None


def test_cli_parses_config():
    cfg = tyro.cli(
        TrainDiffusionConfig,
        args=[
            "--data",
            "snap",
            "--model",
            "svd",
            "--init",
            "/models/svd",
            "--gradient-checkpointing",
            "--mixed-precision",
            "bf16",
            "--resume",
            "latest",
        ],
    )
    assert cfg.model == "svd" and cfg.init == "/models/svd" and cfg.gradient_checkpointing
    assert cfg.mixed_precision == "bf16" and cfg.resume == "latest" and cfg.data == Path("snap")


def test_model_directory_records_sampling_and_training_clip_motion(snapshots, tmp_path):
    """The saved model says how to sample it (render noise = the training std) and how its clips moved."""
    from itergen_ns.diffusion.components import read_model_config
    from itergen_ns.diffusion.sampling import SamplingConfig

    sampling = SamplingConfig(num_inference_steps=4, guidance_3d=0.5, guidance_input=1.0, render_noise=0.0)
    train(_cfg(snapshots, tmp_path / "run", max_steps=1, checkpoint_every=1, sampling=sampling))
    saved = read_model_config(tmp_path / "run" / "latest")
    assert saved.sampling == sampling
    stats = saved.clip_statistics
    # the synthetic shards: 12 cameras evenly on a circle of radius 2 at height 0.4, all looking at the origin
    # (the orbit centre): the angle between consecutive directions from the centre, and elevation atan(0.4 / 2)
    unit = np.array([[2 * math.sin(a), 0.4, 2 * math.cos(a)] for a in (0.0, math.pi / 6)]) / math.hypot(2, 0.4)
    assert stats.degrees_per_frame == pytest.approx(math.degrees(math.acos(unit[0] @ unit[1])), abs=1e-3)
    assert stats.mean_elevation_degrees == pytest.approx(math.degrees(math.atan2(0.4, 2.0)), abs=1e-4)
    assert stats.zoom_log_std == pytest.approx(0.0, abs=1e-9) and stats.num_clips == 2
