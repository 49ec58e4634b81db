"""Tests of the `itergen` method (issue 6) on CPU: datamanager, generator wiring, loss, viewer panel, depth init, CLI.

Data: one procedural scene of 12 frames at 32x32 px (3 input views, 9 evaluation views). The diffusion model is the
`tiny` config with random weights (32 px, 8 frames, up to 3 input views), sampled with 2 steps; Gaussians start from
500 points. Torch runs single-threaded (shared 2-core machine; it also fixes float reduction order, which the
sync-vs-async comparison relies on).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from nerfstudio.engine.callbacks import TrainingCallbackAttributes

from conftest import tiny_scenes
from itergen_ns.diffusion.presets import tiny_config
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.pipeline import IterGenVideoPipeline
from itergen_ns import compat
from itergen_ns.models import lpips_loader
from itergen_ns.models.itergen_model import GENERATED_KEY
from itergen_ns.engine.runner import TrainSpec, build_config, seed_everything, train

FRAMES, SIZE, G = 12, 32, 8
BIN = Path(sys.executable).parent
BASE = {
    "pipeline.datamanager.init_num_points": 500,
    "pipeline.generator.num_inference_steps": 2,
    "pipeline.generation.generate_every": 10,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return (
        tiny_scenes(tmp_path_factory.mktemp("scenes"), 1, seed=3, num_frames=FRAMES, size=SIZE, shadows=False)
        / "scene_0000"
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved (untrained) tiny diffusion model: 32x32, 8 frames."""
    path = tmp_path_factory.mktemp("diffusion") / "latest"
    torch.manual_seed(0)
    IterGenVideoPipeline(IterGenDiffusionModel.from_config(tiny_config())).save_pretrained(path)
    return path


def itergen_config(scene: Path, out: Path, method: str = "itergen", steps: int = 30, **overrides):
    values = dict(BASE) if method == "itergen" else {"pipeline.datamanager.init_num_points": 500}
    if method == "itergen" and "pipeline.generator.checkpoint" not in overrides:
        values["pipeline.generator.random_init"] = True
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return build_config(TrainSpec(method=method, data=scene, output_dir=out, steps=steps, seed=0, overrides=values))


def make_pipeline(scene: Path, out: Path, **overrides):
    config = itergen_config(scene, out, **overrides)
    seed_everything(config.machine.seed)
    return config.pipeline.setup(device="cpu", test_mode="val")


def next_batch(pipe, step: int):
    """What a training step draws: generation refreshed (as IterGenPipeline.get_train_loss_dict does), then the
    datamanager's batch."""
    pipe.generation.refresh(step)
    return pipe.datamanager.next_train(step)


# --- the real CLI: ns-train -> checkpoint -> ns-eval / ns-render ------------------------------------------------


def run_cli(args, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(scene, tiny_checkpoint, tmp_path_factory) -> dict:
    """30 steps of `ns-train itergen` (async generation, the default) from a saved tiny diffusion model, which is
    deleted afterwards: evaluating and rendering the result must not need it."""
    out = tmp_path_factory.mktemp("cli")
    checkpoint = out / "diffusion"
    shutil.copytree(tiny_checkpoint, checkpoint)
    proc = run_cli(
        [str(BIN / "ns-train"), "itergen", "--data", str(scene), "--output-dir", str(out / "runs")]
        + ["--experiment-name", "cli", "--timestamp", "run", "--max-num-iterations", "30", "--vis", "tensorboard"]
        + ["--viewer.quit-on-train-completion", "True", "--logging.local-writer.enable", "False"]
        + ["--pipeline.datamanager.init-num-points", "500", "--pipeline.generation.generate-every", "10"]
        + ["--pipeline.generator.checkpoint", str(checkpoint), "--pipeline.generator.num-inference-steps", "2"]
    )
    shutil.rmtree(checkpoint)
    return {"proc": proc, "dir": out / "runs" / "cli" / "itergen" / "run", "out": out}


def test_ns_train_cli_writes_loadable_checkpoint(cli_run):
    proc = cli_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    clips = [line for line in proc.stdout.splitlines() if "itergen: clip" in line]
    assert len(clips) >= 2, proc.stdout[-3000:]  # generation ran during training (step 0, then >= step 10)
    ckpt = cli_run["dir"] / "nerfstudio_models" / "step-000000029.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # torch>=2.6 default: plain tensors/floats only
    assert state["step"] == 29
    weights = state["pipeline"]
    means = weights["_model.gauss_params.means"]
    assert means.ndim == 2 and means.shape[1] == 3 and means.shape[0] > 100 and torch.isfinite(means).all()
    assert not any(k for k in weights if "unet" in k or "vae" in k or "denoiser" in k), "diffusion weights leaked"

    from nerfstudio.scripts.eval import ComputePSNR
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(cli_run["dir"] / "config.yml", test_mode="test")
    assert step == 29 and pipeline.generator is None  # the diffusion model directory no longer exists
    assert torch.equal(pipeline.model.means.detach().cpu(), means)

    result = cli_run["out"] / "eval.json"
    ComputePSNR(load_config=cli_run["dir"] / "config.yml", output_path=result).main()  # what ns-eval runs
    metrics = json.loads(result.read_text())["results"]
    assert 5.0 < metrics["psnr"] < 60.0 and 0.0 < metrics["ssim"] <= 1.0


def test_ns_render_writes_frames(cli_run):
    assert cli_run["proc"].returncode == 0
    renders = cli_run["out"] / "renders"
    proc = run_cli(
        [str(BIN / "ns-render"), "dataset", "--load-config", str(cli_run["dir"] / "config.yml")]
        + ["--output-path", str(renders), "--split", "test", "--rendered-output-names", "rgb"]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frames = sorted((renders / "test" / "rgb").glob("*.jpg"))
    assert len(frames) == FRAMES - 3  # every evaluation frame
    images = [np.asarray(Image.open(f)) for f in frames]
    assert all(im.shape == (SIZE, SIZE, 3) for im in images)
    assert np.std(np.stack(images).astype(float)) > 5.0  # something was rendered, not a blank background


def test_ns_train_cli_rejects_missing_checkpoint_before_training(scene, tmp_path):
    missing = tmp_path / "no-such-model"
    proc = run_cli(
        [str(BIN / "ns-train"), "itergen", "--data", str(scene), "--output-dir", str(tmp_path / "runs")]
        + ["--vis", "tensorboard", "--pipeline.generator.checkpoint", str(missing)]
    )
    assert proc.returncode != 0
    assert f"--pipeline.generator.checkpoint {missing}: no such directory" in proc.stdout + proc.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt")) and "Step (% Done)" not in proc.stdout


# --- datamanager ----------------------------------------------------------------------------------------------


def test_datamanager_serves_generated_views_with_configured_ratio(scene, tmp_path):
    pipe = make_pipeline(
        scene,
        tmp_path,
        pipeline__datamanager__p_input=0.3,
        pipeline__generation__async_generation=False,
        pipeline__generation__generate_every=50,
    )
    dm, gen = pipe.datamanager, pipe.generation
    draws = 600
    flags, served = [], []
    for step in range(draws):
        camera, batch = next_batch(pipe, step)
        flags.append(bool(batch[GENERATED_KEY]))
        if batch[GENERATED_KEY]:
            served.append((camera.camera_to_worlds[0].clone(), batch["image"].clone()))
    frac = float(np.mean(flags))
    sigma = math.sqrt(0.7 * 0.3 / draws)
    assert abs(frac - 0.7) < 4 * sigma, frac  # 0.7 +- 0.075
    # generation every 50 steps (sync), pool bounded to pool_clips, full history kept
    assert gen.num_generations == draws // 50
    assert [c.step for c in gen.history[:4]] == [0, 50, 100, 150]
    assert len(gen.pool) == 2 and gen.pool.clips[-1] is gen.history[-1]
    # the last generated draws are frames of the pooled clips: right image at the right pose
    pooled = [(clip.cameras.camera_to_worlds[f], clip.images[f]) for clip in gen.pool.clips for f in range(G)]
    pose, image = served[-1]
    match = [i for i, (p, _) in enumerate(pooled) if torch.allclose(p, pose)]
    assert match, "served a generated camera that is not in the pool"
    expected = (pooled[match[0]][1].permute(1, 2, 0) * 255).round().to(torch.uint8)
    assert torch.equal(image, expected)
    assert image.shape == (SIZE, SIZE, 3)

    dm.config.p_input = 1.0
    assert not any(dm.next_train(draws + i)[1][GENERATED_KEY] for i in range(20))
    dm.config.p_input = 0.0
    assert all(dm.next_train(draws + 20 + i)[1][GENERATED_KEY] for i in range(20))
    # one pass over the pool before any frame repeats (shuffled without replacement)
    gen.pool.reshuffle()
    images = [dm.next_train(draws + 40 + i)[1]["image"] for i in range(2 * G)]  # no generation in between
    assert len({im.numpy().tobytes() for im in images}) == 2 * G


def test_pose_order_random_flag_reaches_the_sampler(scene, tmp_path):
    pipe = make_pipeline(
        scene,
        tmp_path,
        pipeline__generation__pose_sampler__order="random",
        pipeline__generation__async_generation=False,
    )
    assert pipe.generation.pose_sampler.config.order == "random"
    next_batch(pipe, 0)
    first = pipe.generation.history[0].poses
    inputs = pipe.datamanager.train_dataset.cameras.camera_to_worlds
    assert min(float((first[0] - c).abs().max()) for c in inputs) > 1e-3  # not anchored at an input


def test_sync_and_async_give_the_same_first_pool(scene, tmp_path):
    """Same seed -> same first clip (poses, renders, samples) in both modes; async does not block the step.

    Later pools differ by design: async mode trains on input views only until its first clip arrives (sync mode
    already serves generated views from step 0), so the two models diverge; and each async clip is conditioned on
    renders of the model at its launch step, which lags behind the step where it joins the pool (and behind the sync
    schedule when sampling takes longer than generate_every steps).
    """
    sync = make_pipeline(scene, tmp_path / "sync", pipeline__generation__async_generation=False)
    next_batch(sync, 0)
    reference = sync.generation.pool.clips[0]

    pipe = make_pipeline(scene, tmp_path / "async", pipeline__generation__async_generation=True)
    gen = pipe.generation
    gate, original = threading.Event(), pipe.generator.sample

    def gated_sample(*args, **kwargs):
        assert threading.current_thread() is not threading.main_thread()  # runs in the worker
        gate.wait(timeout=60)
        return original(*args, **kwargs)

    pipe.generator.sample = gated_sample
    _, batch = next_batch(pipe, 0)
    assert not batch[GENERATED_KEY] and len(gen.pool) == 0  # training goes on while the clip is being sampled
    gate.set()
    gen.wait()
    clip = gen.pool.clips[0]
    assert torch.equal(clip.poses, reference.poses)
    assert torch.equal(clip.renders, reference.renders)
    assert torch.equal(clip.images, reference.images)
    assert clip.images.shape == (G, 3, SIZE, SIZE) and clip.images.std() > 0.01


def test_one_shot_generates_the_iterative_run_s_clips_once_from_the_initial_state(scene, tmp_path):
    """Paper's one-shot ablation: the same clips (count, poses, order) as the iterative run, all sampled at step 0."""
    steps, every = 30, 5
    config = itergen_config(
        scene,
        tmp_path / "oneshot",
        steps=steps,
        pipeline__generation__one_shot=True,
        pipeline__generation__generate_every=every,
    )
    calls = []

    def count_calls(trainer):
        generator = trainer.pipeline.generator
        original = generator.sample

        def counted(*args, **kwargs):
            calls.append(args[3].shape[0])
            return original(*args, **kwargs)

        generator.sample = counted

    trainer = train(config, on_setup=count_calls)  # nerfstudio's Trainer, 30 steps
    gen = trainer.pipeline.generation
    assert calls == [G] * (steps // every) and gen.num_generations == steps // every
    assert all(clip.step == 0 for clip in gen.history) and len(gen.pool) == steps // every  # fixed set, all kept
    assert (config.get_base_dir() / "nerfstudio_models" / "step-000000029.ckpt").is_file()

    iterative = make_pipeline(scene, tmp_path / "iter", pipeline__generation__generate_every=every)
    for oneshot_clip in gen.history:
        assert torch.equal(oneshot_clip.poses, iterative.generation.pose_sampler.next_clip(G))


def test_sampling_defaults_come_from_the_model_directory(scene, tmp_path):
    """One SamplingConfig, saved with the model; the generator uses it and applies only explicit overrides."""
    from itergen_ns.diffusion.sampling import ClipStatistics, SamplingConfig

    torch.manual_seed(0)
    cfg = tiny_config(
        sampling=SamplingConfig(num_inference_steps=3, guidance_3d=0.6, guidance_input=1.2, render_noise=0.0)
    )
    cfg.clip_statistics = ClipStatistics(2.5, 20.0, 3.0, 0.0, 4)
    path = tmp_path / "model"
    IterGenVideoPipeline(IterGenDiffusionModel.from_config(cfg)).save_pretrained(path)
    pipe = make_pipeline(
        scene, tmp_path / "run", pipeline__generator__checkpoint=path, pipeline__generator__num_inference_steps=None
    )
    assert pipe.generator.sampling == SamplingConfig(
        num_inference_steps=3, guidance_3d=0.6, guidance_input=1.2, render_noise=0.0
    )
    assert pipe.generation.pose_sampler.degrees_per_frame == 2.5  # the training clips' step
    over = make_pipeline(
        scene, tmp_path / "run2", pipeline__generator__checkpoint=path, pipeline__generator__guidance_3d=0.9
    )
    assert over.generator.sampling.guidance_3d == 0.9 and over.generator.sampling.num_inference_steps == 2


def test_plucker_model_trains_in_itergen(scene, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "plucker"
    IterGenVideoPipeline(IterGenDiffusionModel.from_config(tiny_config(extra_maps=("plucker",)))).save_pretrained(path)
    config = itergen_config(
        scene,
        tmp_path / "run",
        steps=5,
        pipeline__generator__checkpoint=path,
        pipeline__generation__async_generation=False,
        pipeline__datamanager__p_input=0.0,
    )
    trainer = train(config)
    gen = trainer.pipeline.generation
    assert gen.num_generations == 1 and gen.history[0].images.std() > 0.01


def test_warped_input_model_trains_in_itergen(scene, tmp_path):
    """A generator with the warped-input map gets the renders repainted by the nearest input through the current
    model's depth: at an input camera itself the composite is that input wherever a surface is rendered."""
    torch.manual_seed(0)
    path = tmp_path / "warped"
    maps = ("plucker", "nearest_input", "warped_input")
    IterGenVideoPipeline(IterGenDiffusionModel.from_config(tiny_config(extra_maps=maps))).save_pretrained(path)
    config = itergen_config(
        scene, tmp_path / "run", steps=5, pipeline__generator__checkpoint=path,
        pipeline__generation__async_generation=False, pipeline__datamanager__p_input=0.0,
    )  # fmt: skip
    trainer = train(config)
    gen = trainer.pipeline.generation
    assert gen.generator.needs_depth and gen.num_generations == 1 and gen.history[0].images.std() > 0.01
    cameras = gen.generated_cameras(gen.inputs.poses[:, :3])
    renders, depth = gen.render(cameras)
    assert float((depth > 0).float().mean()) > 0.2
    warped = gen.warp_inputs(cameras, renders, depth)
    seen = (depth > 0)[:, None].expand_as(warped)
    assert float((warped - gen.inputs.images).abs()[seen].mean()) < 0.02
    torch.testing.assert_close(warped[~seen], renders[~seen])


def test_render_noise_override_changes_samples(scene, tmp_path):
    pipe = make_pipeline(scene, tmp_path, pipeline__generator__render_noise=0.0)
    gen, generation = pipe.generator, pipe.generation
    assert gen.sampling.render_noise == 0.0
    poses = generation.pose_sampler.next_clip(G)
    renders = generation.render(generation.generated_cameras(poses))[0]
    target = torch.cat([poses, torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]).expand(G, 1, 4)], dim=1)
    args = (renders, generation.inputs.images, generation.inputs.poses, target)
    a, b = gen.sample(*args, seed=1), gen.sample(*args, seed=1)
    assert torch.equal(a, b)
    gen.sampling = gen.sampling.with_overrides(render_noise=0.5)
    c = gen.sample(*args, seed=1)
    assert (a - c).abs().max() > 1e-4


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_generator_checkpoints_fail_at_setup(scene, tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"generates 8 frames per clip, but the run expects 12"):
        make_pipeline(
            scene,
            tmp_path,
            pipeline__generator__checkpoint=tiny_checkpoint,
            pipeline__generation__num_generated_frames=12,
        )
    with pytest.raises(ValueError, match=r"resolution 32x32, but the run expects 64x64"):
        make_pipeline(
            scene,
            tmp_path,
            pipeline__generator__checkpoint=tiny_checkpoint,
            pipeline__generator__expected_resolution=64,
        )
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        make_pipeline(scene, tmp_path, pipeline__generator__checkpoint=missing)
    from itergen_ns.diffusion.presets import shipped_generator

    if shipped_generator() is not None:  # no checkpoint: the shipped generator
        shipped = make_pipeline(scene, tmp_path, pipeline__generator__random_init=False)
        assert Path(shipped.generator.pipe.model.config.vae.pretrained or "") == Path("taef2")
    else:
        with pytest.raises(ValueError, match="needs a trained diffusion model"):
            make_pipeline(scene, tmp_path, pipeline__generator__random_init=False)
    # the matching checkpoint loads
    pipe = make_pipeline(
        scene, tmp_path, pipeline__generator__checkpoint=tiny_checkpoint, pipeline__generator__expected_resolution=32
    )
    assert pipe.generator.num_frames == G and pipe.generation.num_frames == G


def test_zero_or_too_many_input_views_fail_at_setup(scene, tmp_path):
    with pytest.raises(ValueError, match="at least one input view"):
        make_pipeline(scene, tmp_path, pipeline__datamanager__input_views=())
    empty = tmp_path / "empty"
    empty.mkdir()
    meta = json.loads((scene / "transforms.json").read_text())
    (empty / "transforms.json").write_text(json.dumps(dict(meta, frames=[])))
    with pytest.raises(ValueError, match="non-empty 'frames' list"):
        make_pipeline(empty, tmp_path)
    with pytest.raises(ValueError, match="7 input views, but the diffusion model is conditioned on at most 6"):
        make_pipeline(scene, tmp_path, pipeline__datamanager__num_input_views=7)


# --- losses -----------------------------------------------------------------------------------------------------


@pytest.fixture
def model(scene, tmp_path):
    pipe = make_pipeline(scene, tmp_path)
    pipe.model.eval()
    return pipe.model


@pytest.fixture
def fresh_lpips():
    lpips_loader.reset_lpips_cache()
    yield
    lpips_loader.reset_lpips_cache()


def images_pair(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(SIZE, SIZE, 3, generator=gen)
    pred = (target + 0.2 * torch.randn(SIZE, SIZE, 3, generator=gen)).clamp(0, 1).requires_grad_(True)
    return pred, target


def test_generated_view_loss_uses_lpips_when_weights_exist(model, tmp_path, monkeypatch, fresh_lpips):
    import lpips
    import torchvision

    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoints / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert lpips_loader.lpips_unavailable_reason("alex") is None
    assert model.lpips_model is not None

    pred, target = images_pair()
    losses = model.generated_view_loss(pred, target)
    reference = lpips.LPIPS(net="alex", verbose=False).eval()
    a, b = pred.detach().permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]
    expected = model.config.generated_lpips_lambda * reference(a * 2 - 1, b * 2 - 1).mean()
    assert float(losses["generated_perceptual"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(losses["generated_perceptual"]) != pytest.approx(
        model.config.generated_lpips_lambda * (1 - float(model.ssim(a, b))), rel=1e-3
    )
    assert float(losses["generated_mse"]) == pytest.approx(float(((pred - target) ** 2).mean()), rel=1e-6)
    (losses["generated_mse"] + losses["generated_perceptual"]).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    same = model.generated_view_loss(target.clone(), target)
    assert float(same["generated_perceptual"]) == pytest.approx(0.0, abs=1e-6)


def test_generated_view_loss_falls_back_to_ssim_and_weights_sources(model, tmp_path, monkeypatch, fresh_lpips):
    from pytorch_msssim import ssim

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    assert "not found" in lpips_loader.lpips_unavailable_reason("alex")
    assert model.lpips_model is None
    cfg = model.config
    pred, target = images_pair(1)
    a, b = pred.detach().permute(2, 0, 1)[None], target.permute(2, 0, 1)[None]
    losses = model.generated_view_loss(pred, target)
    expected = cfg.generated_lpips_lambda * (1 - ssim(a, b, data_range=1.0, size_average=True))
    assert float(losses["generated_perceptual"]) == pytest.approx(float(expected), rel=1e-4)

    # per-source weights: generated views scale MSE + perceptual, input views scale splatfacto's main loss
    cfg.generated_view_weight, cfg.input_view_weight = 0.25, 2.0
    outputs = {"rgb": pred, "background": torch.zeros(3)}
    image = (target * 255).round().to(torch.uint8)
    gen_losses = model.get_loss_dict(outputs, {"image": image, GENERATED_KEY: True})
    plain = model.generated_view_loss(pred, image.float() / 255)
    assert set(gen_losses) == {"generated_mse", "generated_perceptual"}
    for key in gen_losses:
        assert float(gen_losses[key]) == pytest.approx(0.25 * float(plain[key]), rel=1e-5)
    in_losses = model.get_loss_dict(outputs, {"image": image, GENERATED_KEY: False})
    base = super(type(model), model).get_loss_dict(outputs, {"image": image})
    assert float(in_losses["main_loss"]) == pytest.approx(2.0 * float(base["main_loss"]), rel=1e-6)
    assert "generated_mse" not in in_losses


# --- viewer -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quat_to_matrix(q) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def test_viewer_panel_shows_generated_clips_as_they_arrive(scene, tmp_path):
    import viser
    from viser import _messages

    pipe = make_pipeline(scene, tmp_path, pipeline__generation__async_generation=False)
    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    try:
        sent = []
        compat.record_viser_messages(server, sent.append)
        trainer = SimpleNamespace(viewer_state=SimpleNamespace(viser_server=server))
        attrs = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=pipe, trainer=trainer)
        (update,) = [cb for cb in pipe.get_training_callbacks(attrs) if cb.func.__name__ == "update_viewer"]

        update.func(0)  # before any generation: an empty panel
        assert pipe.panel is not None and "No clip" in pipe.panel.markdown.content
        assert not [m for m in sent if isinstance(m, _messages.CameraFrustumMessage)]

        next_batch(pipe, 0)
        update.func(0)
        clip = pipe.generation.history[0]
        frusta = [m for m in sent if isinstance(m, _messages.CameraFrustumMessage)]
        assert [m.name for m in frusta] == [f"/itergen/generated/frame_{i:03d}" for i in range(G)]
        handles = pipe.panel.handles
        for i, (msg, handle) in enumerate(zip(frusta, handles)):
            c2w = clip.poses[i].double().numpy()
            np.testing.assert_allclose(handle.position, c2w[:, 3] * 10.0, atol=1e-5)
            np.testing.assert_allclose(quat_to_matrix(handle.wxyz), c2w[:, :3] @ np.diag([1, -1, -1]), atol=1e-5)
            shown = np.asarray(Image.open(io.BytesIO(msg.image_binary))).astype(float) / 255
            errors = [np.abs(shown - im.permute(1, 2, 0).numpy()).mean() for im in clip.images]
            assert errors[i] < 0.1 and int(np.argmin(errors)) == i  # the jpeg of this frame's sample
            assert msg.aspect == pytest.approx(1.0)
        assert "**Clip 1**" in pipe.panel.markdown.content and "step-0 model" in pipe.panel.markdown.content

        sent.clear()
        update.func(1)  # nothing new: nothing redrawn
        assert sent == []

        for step in range(1, 11):
            next_batch(pipe, step)
        update.func(10)
        removed = [m.name for m in sent if isinstance(m, _messages.RemoveSceneNodeMessage)]
        assert sorted(removed) == [f"/itergen/generated/frame_{i:03d}" for i in range(G)]
        assert len([m for m in sent if isinstance(m, _messages.CameraFrustumMessage)]) == G
        assert "**Clip 2**" in pipe.panel.markdown.content and "step-10 model" in pipe.panel.markdown.content
    finally:
        server.stop()


# --- depth initialisation ---------------------------------------------------------------------------------------


def save_tiny_depth_model(path: Path, kind: str) -> Path:
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    sizes = dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8
    )
    if kind == "dpt":
        model = DPTForDepthEstimation(
            DPTConfig(
                **sizes, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3]
            )
        )
    else:
        backbone = Dinov2Config(
            **sizes, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False
        )
        model = DepthAnythingForDepthEstimation(
            DepthAnythingConfig(
                backbone_config=backbone,
                neck_hidden_sizes=[8, 16, 32, 32],
                fusion_hidden_size=16,
                head_hidden_size=8,
                reassemble_hidden_size=32,
                patch_size=8,
            )
        )
    model.save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(path)
    return path


def test_align_depth_recovers_affine_disparity_and_depth():
    from itergen_ns.data.depth_init import align_depth

    z = torch.linspace(2.0, 4.0, 21)[torch.randperm(21, generator=torch.Generator().manual_seed(0))].reshape(3, 7)
    ordered = torch.sort(z.flatten()).values
    near, far = float(ordered[1]), float(ordered[19])  # the 5th / 95th percentiles of 21 values, exactly
    d0, radius = (near + far) / 2, (far - near) / 2
    region = torch.ones(3, 7, dtype=torch.bool)
    disparity = 5.0 / z + 0.3  # relative inverse depth: unknown scale and shift
    torch.testing.assert_close(align_depth(disparity, region, d0, radius, "disparity"), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(align_depth(2.0 * z - 1.0, region, d0, radius, "depth"), z, rtol=1e-5, atol=1e-5)
    flat = align_depth(torch.ones(3, 7), region, d0, radius)
    assert torch.all(flat == d0)


@pytest.mark.parametrize("kind", ["dpt", "depth_anything"])
def test_depth_init_back_projects_input_pixels(scene, tmp_path, kind):
    from itergen_ns.data.depth_init import MonocularDepth, align_depth, object_disc
    from itergen_ns.data.datamanager import uint8_image
    from itergen_ns.data.init_points import estimate_object_bounds

    path = save_tiny_depth_model(tmp_path / kind, kind)
    pipe = itergen_config(scene, tmp_path, method="itergen-splatfacto", pipeline__datamanager__depth_model=path)
    seed_everything(0)
    pipeline = pipe.pipeline.setup(device="cpu", test_mode="val")
    dm = pipeline.datamanager
    xyz, rgb = (
        dm.train_dataparser_outputs.metadata["points3D_xyz"],
        dm.train_dataparser_outputs.metadata["points3D_rgb"],
    )
    assert xyz.shape == (500, 3) and rgb.shape == (500, 3) and rgb.dtype == torch.uint8
    assert torch.allclose(pipeline.model.means.detach(), xyz)  # the model starts from these points

    cameras = dm.train_dataset.cameras
    images = [uint8_image(d["image"]) for d in dm.cached_train]
    centre, radius = estimate_object_bounds(cameras)
    depth_model = MonocularDepth(path)
    matched = torch.zeros(len(xyz), dtype=torch.bool)
    for i, image in enumerate(images):
        c2w = cameras.camera_to_worlds[i]
        local = (xyz - c2w[:, 3]) @ c2w[:, :3]
        z = -local[:, 2]
        u = cameras.fx[i] * local[:, 0] / z + cameras.cx[i]
        v = -cameras.fy[i] * local[:, 1] / z + cameras.cy[i]
        fu, fv = u - 0.5, v - 0.5  # integers at pixel centres
        on_centre = ((fu - fu.round()).abs() < 1e-3) & ((fv - fv.round()).abs() < 1e-3)
        on_centre &= (u > 0) & (u < SIZE) & (v > 0) & (v < SIZE) & (z > 0)
        if not on_centre.any():
            continue
        px, py = u[on_centre].floor().long(), v[on_centre].floor().long()
        assert torch.equal(rgb[on_centre], image[py, px])  # each point has its source pixel's colour
        disc, d0 = object_disc(cameras[i], centre, radius)
        aligned = align_depth(depth_model.predict(image), disc, d0, radius, depth_model.output)
        torch.testing.assert_close(z[on_centre], aligned[py, px], rtol=1e-4, atol=1e-4)  # at the aligned depth
        assert (
            float(z[on_centre].min()) >= d0 - 2 * radius - 1e-4 and float(z[on_centre].max()) <= d0 + 2 * radius + 1e-4
        )
        matched |= on_centre
    assert matched.all(), "every point back-projects from a pixel centre of some input view"


def test_depth_init_missing_model_is_a_clear_error(scene, tmp_path):
    missing = tmp_path / "no-depth-model"
    with pytest.raises(FileNotFoundError, match=f"depth model {missing}: no such directory"):
        itergen_config(
            scene, tmp_path, method="itergen-splatfacto", pipeline__datamanager__depth_model=missing
        ).pipeline.setup(device="cpu", test_mode="val")
    half = tmp_path / "weights-only"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing preprocessor_config.json"):
        itergen_config(
            scene, tmp_path, method="itergen-splatfacto", pipeline__datamanager__depth_model=half
        ).pipeline.setup(device="cpu", test_mode="val")


def test_float_scheduler_matches_nerfstudio_and_pickles_plain_floats():
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig

    from itergen_ns.engine.schedulers import FloatExponentialDecaySchedulerConfig

    for kwargs in (dict(lr_final=1.6e-6, max_steps=50), dict(lr_final=5e-7, max_steps=50, warmup_steps=10)):
        lrs = []
        for cfg in (ExponentialDecaySchedulerConfig(**kwargs), FloatExponentialDecaySchedulerConfig(**kwargs)):
            opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.6e-4)
            sched = cfg.setup().get_scheduler(opt, lr_init=1.6e-4)
            seq = []
            for _ in range(60):
                opt.step()
                sched.step()
                seq.append(opt.param_groups[0]["lr"])
            lrs.append(seq)
        np.testing.assert_allclose(lrs[1], lrs[0], rtol=1e-12)
        assert all(type(lr) is float for lr in lrs[1])
        buf = io.BytesIO()
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
        buf.seek(0)
        torch.load(buf, weights_only=True)  # what ns-eval / ns-render do under torch>=2.6
