"""The evaluation harness scores the right frames and writes a complete report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itergen_ns.data.scenes import make_scenes
from itergen_ns.data.splits import select_input_views
from itergen_ns.eval.harness import EvalConfig
from itergen_ns.eval.scoring import score_frames
from itergen_ns.eval.report import summarize_results, write_report


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, num_scenes=2, seed=3, num_frames=10, resolution=32, supersample=1, shadows=False, num_heldout=1)
    return root


def _ground_truth(scene: Path) -> np.ndarray:
    meta = json.loads((scene / "transforms.json").read_text())
    paths = sorted(scene / f["file_path"] for f in meta["frames"])
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def test_score_frames_identity_and_constant() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    perfect = score_frames(gt, gt, [0, 2])
    assert len(perfect) == 2 and all(math.isinf(m["psnr"]) and m["ssim"] == pytest.approx(1.0) for m in perfect)
    grey = np.full_like(gt, 128)
    bad = score_frames(grey, gt, [0, 1, 2])
    assert all(m["psnr"] < 12 and m["ssim"] < 0.2 for m in bad)
    # masks: outside the object both images become white, so errors there do not count
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[:, 8:24, 8:24] = 255
    wrong_outside = gt.copy()
    wrong_outside[:, :4] = 0
    assert math.isinf(score_frames(wrong_outside, gt, [1], masks)[0]["psnr"])
    assert not math.isinf(score_frames(wrong_outside, gt, [1])[0]["psnr"])


def test_harness_scores_heldout_frames_and_writes_report(scene_root: Path, tmp_path: Path) -> None:
    calls = []

    def oracle(scene, views, sample, run_dir):
        """Ground truth on held-out frames, garbage on the inputs: perfect only if inputs are excluded."""
        gt = _ground_truth(scene)
        inputs = select_input_views(len(gt), views, 0)[0]
        renders = gt.copy()
        renders[inputs] = 0
        calls.append((scene.name, views, sample))
        return renders, gt, inputs

    def constant(scene, views, sample, run_dir):
        gt = _ground_truth(scene)
        return np.full_like(gt, 128), gt, select_input_views(len(gt), views, 0)[0]

    config = EvalConfig(
        data=(scene_root,), methods=("oracle", "constant"), views=(1, 3), samples=2, output_dir=tmp_path / "eval"
    )
    results = config.run(custom_methods={"oracle": oracle, "constant": constant})
    heldout = json.loads((scene_root / "scenes.json").read_text())
    heldout_names = {s["name"] for s in heldout["scenes"] if s["split"] == "heldout"}
    assert {r["scene"] for r in results} == heldout_names  # only held-out scenes are evaluated
    assert len(results) == 2 * 2  # custom methods are deterministic: one sample each, 2 view counts
    for r in results:
        assert not set(r["input_indices"]) & set(r["eval_indices"])
        assert len(r["eval_indices"]) == 10 - r["views"]
        if r["method"] == "oracle":
            assert math.isinf(r["metrics"]["psnr"])
        else:
            assert r["metrics"]["psnr"] < 20 and r["metrics"]["ssim"] < 0.5

    # rerun resumes: nothing recomputed
    calls.clear()
    config.run(custom_methods={"oracle": oracle, "constant": constant})
    assert calls == []

    report = write_report(results, config.output_dir, config)
    text = report.read_text()
    assert "| 1 | constant |" in text and "| 3 | oracle |" in text
    summary = json.loads((config.output_dir / "results.json").read_text())["summary"]
    assert {(r["method"], r["views"]) for r in summary} == {(m, v) for m in ("oracle", "constant") for v in (1, 3)}
    rows = list(csv.DictReader((config.output_dir / "results.csv").open()))
    assert len(rows) == 4 and {row["method"] for row in rows} == {"oracle", "constant"}
    grids = sorted((config.output_dir / "grids").glob("*.png"))
    assert len(grids) == 2
    grid = np.asarray(Image.open(grids[0]))
    assert grid.shape[1] == 128 * 4  # input | oracle | constant | ground truth, 32 px cells enlarged 4x
    gt = _ground_truth(scene_root / grids[0].stem.rsplit("_", 1)[0])  # grids are named <scene>_<views>v.png
    last_row = grid[-128:, -128:]  # ground-truth cell of the last row (unlabelled), enlarged
    assert any(np.array_equal(last_row, f.repeat(4, 0).repeat(4, 1)) for f in gt)
    assert list((config.output_dir / "videos").iterdir())


def test_best_of_s_and_mean() -> None:
    def run(scene, sample, psnr):
        return {"scene": scene, "views": 1, "method": "m", "sample": sample, "metrics": {"psnr": psnr, "ssim": 0.5}}

    rows = summarize_results([run("a", 0, 10.0), run("a", 1, 14.0), run("b", 0, 20.0), run("b", 1, 16.0)])
    assert len(rows) == 1
    assert rows[0]["psnr_best"] == pytest.approx((14.0 + 20.0) / 2)
    assert rows[0]["psnr_mean"] == pytest.approx(15.0)
    assert rows[0]["psnr_std"] == pytest.approx(np.std([10.0, 14.0, 20.0, 16.0]))


def test_unknown_method_is_rejected(scene_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown methods"):
        EvalConfig(data=(scene_root,), methods=("nope",), output_dir=tmp_path).run()


def test_no_render_noise_row_needs_a_model_trained_without_noise(scene_root: Path, tmp_path: Path) -> None:
    import torch

    from itergen_ns.diffusion.presets import tiny_config
    from itergen_ns.diffusion.model import IterGenDiffusionModel
    from itergen_ns.diffusion.sampling import SamplingConfig

    cfg = EvalConfig(data=(scene_root,), methods=("itergen-no-render-noise",), output_dir=tmp_path / "eval")
    with pytest.raises(ValueError, match="--generator-checkpoint-no-render-noise"):
        cfg.run()
    torch.manual_seed(0)
    noisy = tmp_path / "noisy"
    IterGenDiffusionModel.from_config(tiny_config(sampling=SamplingConfig(render_noise=0.1))).save_pretrained(noisy)
    cfg.generator_checkpoint_no_render_noise = noisy
    with pytest.raises(ValueError, match="trained with render noise 0.1, expected 0"):
        cfg.run()
    assert not (tmp_path / "eval").exists()  # nothing trained or written


def test_shards_split_the_jobs_exactly_once():
    from itergen_ns.eval.harness import EvalConfig

    jobs = list(range(11))
    parts = [EvalConfig(data=(), shard=f"{i}/3").shard_jobs(jobs) for i in range(3)]
    assert sorted(j for part in parts for j in part) == jobs
    assert EvalConfig(data=()).shard_jobs(jobs) == jobs
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            EvalConfig(data=(), shard=bad).shard_jobs(jobs)
