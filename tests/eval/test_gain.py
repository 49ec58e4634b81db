"""Tests of `itergen gain` (itergen_ns.eval.gain): metric arithmetic, trivial predictors, aggregation, and
end-to-end runs on a synthetic snapshot root with the untrained tiny model (CPU, one torch thread)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from itergen_ns import cli
from itergen_ns.eval import metrics
from itergen_ns.diffusion.clip_metrics import PSNR_CAP, psnr_frames, ssim_frames
from itergen_ns.eval.gain_predictors import clip_windows, conditioning_views, mean_frame, nearest_inputs
from itergen_ns.eval.gain_summary import PREDICTORS, summarize
from itergen_ns.snapshots.format import load_shard, write_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, FRAMES, STEPS, INPUTS = 48, 12, (100, 200), (0, 5)  # shards at 48 px; the tiny model works at 32 px
MODEL_HW = (32, 32)


def look_at(eye, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """OpenGL camera-to-world [3, 4] at ``eye`` looking at ``target`` (world +y up)."""
    eye = np.asarray(eye, np.float64)
    fwd = np.asarray(target, np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return np.stack([right, up, -fwd, eye], axis=1).astype(np.float32)


def orbit(n: int, radius: float = 2.0) -> np.ndarray:
    return np.stack(
        [
            look_at([radius * math.sin(2 * math.pi * i / n), 0.4, radius * math.cos(2 * math.pi * i / n)])
            for i in range(n)
        ]
    )


def make_shard(root: Path, name: str, seed: int, frames: int = FRAMES) -> Path:
    """A coloured blob circling with the camera; renders are noisier at the earlier snapshot step."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    colour = rng.uniform(0.2, 1.0, 3)
    images = np.zeros((frames, SIZE, SIZE, 3), np.float32)
    for f in range(frames):
        cx = 0.5 + 0.3 * math.sin(2 * math.pi * f / frames)
        images[f] = 0.1 + np.exp(-((xx - cx) ** 2 + (yy - 0.5) ** 2) / 0.02)[..., None] * colour
    images = images.clip(0, 1)
    renders = np.stack([np.clip(images + rng.normal(0, 0.3 / (s + 1), images.shape), 0, 1) for s in range(len(STEPS))])
    arrays = {
        "images": (images * 255).round().astype(np.uint8),
        "c2w": orbit(frames),
        "intrinsics": np.tile(np.array([40.0, 40.0, SIZE / 2, SIZE / 2], np.float32), (frames, 1)),
        "input_indices": np.array(INPUTS, np.int64),
        "steps": np.array(STEPS, np.int64),
        "renders": (renders * 255).round().astype(np.uint8),
    }
    return write_shard(root, name, arrays, {"scene": name, "num_frames": frames, "steps": list(STEPS)})


def resized(arr: np.ndarray) -> torch.Tensor:
    """The loader's resize written out: uint8 [N, H, W, 3] -> float [N, 3, 32, 32], antialiased bilinear."""
    x = torch.from_numpy(np.array(arr)).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(x, size=MODEL_HW, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def np_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(np.mean((a.double().numpy() - b.double().numpy()) ** 2))
    return -10 * math.log10(mse)


# ------------------------------------------------------------------------------------------ metric arithmetic
def test_psnr_identical_is_capped_and_ssim_one():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert psnr_frames(x, x).tolist() == [PSNR_CAP] * 3
    assert torch.allclose(ssim_frames(x, x), torch.ones(3), atol=1e-6)


def test_psnr_known_noise_levels():
    gt = torch.full((2, 3, 16, 16), 0.5)
    offset = gt + 0.1  # mse 0.01 -> 20 dB
    signs = torch.randint(0, 2, gt.shape, generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    noisy = gt + 0.05 * signs  # mse 0.0025 -> 26.0206 dB
    assert torch.allclose(psnr_frames(offset, gt), torch.tensor([20.0, 20.0]), atol=1e-4)
    assert torch.allclose(psnr_frames(noisy, gt), torch.full((2,), 10 * math.log10(400.0)), atol=1e-4)
    # per frame: one frame exact, one with mse 0.01
    mixed = torch.stack([gt[0], offset[1]])
    assert psnr_frames(mixed, gt).tolist() == pytest.approx([PSNR_CAP, 20.0], abs=1e-4)


def test_batched_metrics_match_eval_metrics():
    g = torch.Generator().manual_seed(2)
    for size in (24, 32):  # both SSIM window sizes
        a, b = torch.rand(3, 3, size, size, generator=g), torch.rand(3, 3, size, size, generator=g)
        b = (0.7 * a + 0.3 * b).clamp(0, 1)
        for i in range(3):
            hwc = lambda t: t[i].permute(1, 2, 0)  # noqa: E731
            assert float(psnr_frames(a, b)[i]) == pytest.approx(metrics.psnr(hwc(a), hwc(b)), abs=1e-4)
            assert float(ssim_frames(a, b)[i]) == pytest.approx(metrics.ssim(hwc(a), hwc(b)), abs=1e-5)


def _record(step, views, render, sample, mean, nearest, first, ae=30.0, warp=None):
    values = dict(
        render=render, sample=sample, mean_frame=mean, nearest_input=nearest, first_input=first, autoencoder=ae,
        warped_input=render if warp is None else warp,
    )  # fmt: skip
    return {"step": step, "views": views, "psnr": values, "ssim": {k: v / 100 for k, v in values.items()}}


def test_summarize_gain_sign_and_margin():
    frames = [
        _record(0, 1, render=10, sample=14, mean=12, nearest=16, first=15),
        _record(0, 1, render=12, sample=16, mean=12, nearest=18, first=15),
        _record(100, 3, render=20, sample=18, mean=12, nearest=15, first=14),
    ]
    groups = {(g["step"], g["views"]): g for g in summarize(frames)}
    assert set(groups) == {(0, 1), (100, 3), (0, "all"), (100, "all"), ("all", 1), ("all", 3), ("all", "all")}
    one = groups[(0, 1)]
    assert one["frames"] == 2 and one["psnr"]["sample"] == 15.0 and one["psnr"]["render"] == 11.0
    assert one["gain_psnr"] == 4.0  # sample beats its render ...
    assert one["best_trivial_psnr"] == "nearest_input" and one["margin_psnr"] == -2.0  # ... but not the input copy
    assert one["margin_best_psnr"] == -2.0
    assert one["gain_ssim"] == pytest.approx(0.04)
    late = groups[(100, 3)]
    assert late["gain_psnr"] == -2.0 and late["margin_psnr"] == 3.0 and late["margin_best_psnr"] == -2.0
    overall = groups[("all", "all")]
    assert overall["frames"] == 3 and overall["psnr"]["sample"] == pytest.approx(16.0)
    assert overall["gain_psnr"] == pytest.approx(16.0 - 14.0)


# ------------------------------------------------------------------------------------ clips and predictors
def test_clip_windows_tile_the_trajectory():
    w = clip_windows(30, 8)
    assert [int(x[0]) for x in w] == [0, 8, 16, 22] and all(len(x) == 8 for x in w)
    assert set(np.concatenate(w).tolist()) == set(range(30))
    assert [int(x[0]) for x in clip_windows(30, 8, max_clips=2)] == [0, 22]
    assert [x.tolist() for x in clip_windows(5, 8)] == [[0, 1, 2, 3, 4]]
    assert [int(x[0]) for x in clip_windows(16, 8)] == [0, 8]


def test_conditioning_views_subset():
    assert conditioning_views([3, 9], 6).tolist() == [3, 9]
    assert conditioning_views([1, 2, 3, 4, 5, 6, 7, 8], 3).tolist() == [1, 5, 8]  # evenly spaced, first and last kept


def test_nearest_inputs_by_centre_and_angle():
    target = look_at([0.0, 0.0, 2.0])[None]
    side = look_at([2 * math.sin(math.radians(30)), 0.0, 2 * math.cos(math.radians(30))])  # centre 1.04 away, 30 deg
    far = look_at([0.0, 0.0, 4.0])  # centre 2.0 away, same viewing direction
    inputs = np.stack([side, far])
    assert nearest_inputs(target, inputs, "center").tolist() == [0]
    assert nearest_inputs(target, inputs, "angle").tolist() == [1]
    cams = orbit(12)
    assert nearest_inputs(cams[[1, 5, 7, 11]], cams[[0, 6]], "center").tolist() == [0, 1, 1, 0]


def test_mean_frame_of_synthetic_shards(tmp_path):
    root = tmp_path / "root"
    a, b = load_shard(make_shard(root, "a", seed=0)), load_shard(make_shard(root, "b", seed=1))
    every = torch.cat([resized(a.images[:]), resized(b.images[:])]).mean(0)
    assert torch.allclose(mean_frame([a, b], MODEL_HW), every, atol=1e-6)
    inputs = torch.cat([resized(a.images[list(INPUTS)]), resized(b.images[list(INPUTS)])]).mean(0)
    assert torch.allclose(mean_frame([a, b], MODEL_HW, inputs_only=True), inputs, atol=1e-6)


# ---------------------------------------------------------------------------------------------- end to end
NUM_FRAMES = 4  # clips of 4: windows [0-3], [4-7], [8-11]; --max-clips-per-shard 2 keeps the first and last


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("heldout")
    make_shard(root, "scene_a", seed=0)
    make_shard(root, "scene_b", seed=1)
    return root


def _run(heldout: Path, out: Path, *extra: str) -> dict:
    args = ["gain", "--data", str(heldout), "--generator.random-init", "True", "--output-dir", str(out)]
    args += ["--num-frames", str(NUM_FRAMES), "--max-clips-per-shard", "2", *extra]
    assert cli.main(args) == 0
    return json.loads((out / "gain.json").read_text())


@pytest.fixture(scope="module")
def two_seeds(heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("gain")
    return out, _run(heldout, out, "--seeds", "0", "1")


def test_gain_outputs_exist_and_are_finite(two_seeds):
    out, result = two_seeds
    scored = [0, 1, 2, 3, 8, 9, 10, 11]
    scored = [f for f in scored if f not in INPUTS]  # 7 frames per shard and step
    assert len(result["frames"]) == 2 * len(STEPS) * len(scored)
    assert sorted({f["frame"] for f in result["frames"]}) == scored
    assert result["resolution"] == list(MODEL_HW) and result["num_frames"] == NUM_FRAMES and result["seeds"] == [0, 1]
    assert "input views" in result["mean_frame_source"] and "sampling" in result
    for g in result["groups"]:
        for m in ("psnr", "ssim"):
            assert all(math.isfinite(v) for v in g[m].values()) and set(g[m]) == set(PREDICTORS)
            assert g[f"gain_{m}"] == pytest.approx(g[m]["sample"] - g[m]["render"])
            assert g[f"margin_{m}"] == pytest.approx(g[m]["sample"] - g[m][g[f"best_trivial_{m}"]])
            assert g[f"margin_{m}"] == pytest.approx(
                g[m]["sample"] - max(g[m][p] for p in ("mean_frame", "nearest_input", "first_input"))
            )
    groups = {(g["step"], g["views"]): g for g in result["groups"]}
    assert groups[("all", "all")]["frames"] == len(result["frames"]) and groups[(200, 2)]["frames"] == 2 * len(scored)
    with open(out / "gain.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result["groups"])
    assert float(rows[-1]["psnr_sample"]) == pytest.approx(groups[("all", "all")]["psnr"]["sample"])
    grid = np.asarray(Image.open(out / "gain_grid.png"))
    # 4 clips (2 shards x 2) of 4 rows (render | sample | nearest input | GT), 32 px cells upscaled 4x, 4 px gaps
    assert grid.shape == (4 * 4 * 128 + 3 * 4, NUM_FRAMES * 128, 3)


def test_gain_values_match_an_independent_computation(heldout, two_seeds):
    _, result = two_seeds
    shards = {name: load_shard(heldout / "shards" / name) for name in ("scene_a", "scene_b")}
    mean_inputs = torch.cat([resized(s.images[list(INPUTS)]) for s in shards.values()]).mean(0)
    render_psnr = []
    for rec in result["frames"]:
        shard = shards[rec["shard"]]
        f, si = rec["frame"], list(STEPS).index(rec["step"])
        gt = resized(shard.images[[f]])
        render = resized(shard.renders[si, [f]])
        render_psnr.append(np_psnr(render, gt))
        assert rec["psnr"]["render"] == pytest.approx(render_psnr[-1], abs=1e-4)
        assert rec["psnr"]["first_input"] == pytest.approx(np_psnr(resized(shard.images[[0]]), gt), abs=1e-4)
        arc = lambda a, b: min(abs(a - b), FRAMES - abs(a - b))  # noqa: E731  (frames along the orbit; no ties here)
        nearest = 0 if arc(f, 0) < arc(f, 5) else 5
        assert rec["psnr"]["nearest_input"] == pytest.approx(np_psnr(resized(shard.images[[nearest]]), gt), abs=1e-4)
        assert rec["psnr"]["mean_frame"] == pytest.approx(np_psnr(mean_inputs[None], gt), abs=1e-4)
        assert 0 < rec["ssim"]["render"] <= 1 and rec["psnr"]["autoencoder"] > 0
    overall = {(g["step"], g["views"]): g for g in result["groups"]}[("all", "all")]
    assert overall["psnr"]["render"] == pytest.approx(float(np.mean(render_psnr)), abs=1e-4)
    # the later snapshot's renders are less noisy, so they score higher
    by_step = {(g["step"], g["views"]): g["psnr"]["render"] for g in result["groups"]}
    assert by_step[(200, 2)] > by_step[(100, 2)] + 2


def test_seed_average_train_mean_and_overlap(heldout, two_seeds, tmp_path):
    _, both = two_seeds
    train = tmp_path / "train"
    make_shard(train, "scene_a", seed=0)  # a leaked held-out scene: must be reported
    make_shard(train, "train_x", seed=7)
    seed0 = _run(heldout, tmp_path / "s0", "--seeds", "0", "--snapshot-steps", "200", "--train-data", str(train))
    seed1 = _run(heldout, tmp_path / "s1", "--seeds", "1", "--snapshot-steps", "200", "--num-grid-clips", "0")
    assert seed0["scene_overlap_with_train"] == ["scene_a"] and "training root" in seed0["mean_frame_source"]
    assert not (tmp_path / "s1" / "gain_grid.png").exists()
    late = [r for r in both["frames"] if r["step"] == 200]
    assert len(late) == len(seed0["frames"]) == len(seed1["frames"])
    for r, a, b in zip(late, seed0["frames"], seed1["frames"]):
        assert (r["shard"], r["frame"]) == (a["shard"], a["frame"]) == (b["shard"], b["frame"])
        for m in ("psnr", "ssim"):  # per-frame sample metric of two seeds = mean of the single-seed runs
            assert r[m]["sample"] == pytest.approx((a[m]["sample"] + b[m]["sample"]) / 2, abs=1e-6)
            assert r[m]["render"] == a[m]["render"]
    shards = [load_shard(train / "shards" / n) for n in ("scene_a", "train_x")]
    train_mean = torch.cat([resized(s.images[:]) for s in shards]).mean(0)
    rec = seed0["frames"][0]
    gt = resized(load_shard(heldout / "shards" / rec["shard"]).images[[rec["frame"]]])
    assert rec["psnr"]["mean_frame"] == pytest.approx(np_psnr(train_mean[None], gt), abs=1e-4)


def test_gain_needs_a_model(heldout, tmp_path, capsys):
    # the CLI reports input errors as one stderr line and exit status 1 (itergen_ns.errors); --debug re-raises
    assert cli.main(["gain", "--data", str(heldout), "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ValueError:") and "--checkpoint" in err[0]
    with pytest.raises(ValueError, match="--checkpoint"):
        cli.main(["gain", "--data", str(heldout), "--output-dir", str(tmp_path), "--debug"])


def test_trainer_logs_gain_and_gain_reads_its_checkpoint(heldout, tmp_path):
    """`itergen train-diffusion` validation logs the gain scalars; `itergen gain --checkpoint` loads its model."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from itergen_ns.diffusion.data import SnapshotClipDataset
    from itergen_ns.diffusion.train import TrainDiffusionConfig, train

    run = tmp_path / "run"
    cfg = TrainDiffusionConfig(
        data=heldout,
        output_dir=run,
        model="tiny",
        max_steps=1,
        lr_warmup_steps=1,
        checkpoint_every=1,
        validate_every=1,
        validation_clips=1,
        validation_inference_steps=2,
        vae_fit_steps=0,
        log_every=1,
        progress=False,
        model_overrides={"num_frames": NUM_FRAMES},
    )
    train(cfg)
    events = EventAccumulator(str(next((run / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    scalar = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("val/")}
    assert {"val/gain_psnr", "val/gain_ssim", "val/margin_psnr", "val/psnr_render", "val/psnr_sample"} <= set(scalar)
    assert scalar["val/gain_psnr"] == pytest.approx(scalar["val/psnr_sample"] - scalar["val/psnr_render"], abs=1e-4)
    assert scalar["val/margin_psnr"] == pytest.approx(
        scalar["val/psnr_sample"] - scalar["val/psnr_first_input"], abs=1e-4
    )
    item = SnapshotClipDataset(heldout, *MODEL_HW, NUM_FRAMES, 6, seed=cfg.seed + 7919, length=1)[0]
    expected = float(psnr_frames(item["renders"], item["frames"]).mean())
    assert scalar["val/psnr_render"] == pytest.approx(expected, abs=1e-4)

    out = tmp_path / "gain"
    args = ["gain", "--data", str(heldout), "--checkpoint", str(run / "latest"), "--output-dir", str(out)]
    assert (
        cli.main(
            args + ["--max-clips-per-shard", "1", "--snapshot-steps", "100", "--generator.num-inference-steps", "2"]
        )
        == 0
    )
    result = json.loads((out / "gain.json").read_text())
    assert result["checkpoint"] == str(run / "latest") and result["num_frames"] == NUM_FRAMES
    assert result["generator"]["num_inference_steps"] == 2
    assert all(math.isfinite(v) for g in result["groups"] for v in g["psnr"].values())
