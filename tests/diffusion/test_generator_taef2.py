"""The TAEF2 generator preset (issue 14): render-residual output, nearest-input map, SDEdit start, latent cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from itergen_ns.diffusion import edm
from itergen_ns.diffusion.presets import get_model_config
from itergen_ns.diffusion.conditioning import nearest_input_latents
from itergen_ns.diffusion.denoiser import residual_to_v
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.pipeline import IterGenVideoPipeline
from itergen_ns.diffusion.train import TrainDiffusionConfig, train
from shard_fixture import make_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

G = 4


def small_taef2(**overrides):
    """The taef2 preset with a 2-level UNet and 4-frame clips (fast on CPU; same code paths)."""
    cfg = get_model_config("taef2", num_frames=G, **overrides)
    kw = dict(cfg.unet.kwargs)
    kw.update(
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        num_attention_heads=(2, 2),
        num_frames=G,
    )
    cfg.unet.kwargs = kw
    return cfg


def orbit(n: int, radius: float = 2.0) -> torch.Tensor:
    poses = torch.eye(4).repeat(n, 1, 1)
    for i in range(n):
        a = torch.tensor(0.3 * i)
        eye = torch.stack([radius * a.sin(), torch.tensor(0.3), radius * a.cos()])
        fwd = -eye / eye.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0]))
        right = right / right.norm()
        up = torch.linalg.cross(right, fwd)
        poses[i, :3] = torch.stack([right, up, -fwd, eye], dim=1)
    return poses


def smooth_images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=gen)
    return torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)


def test_residual_to_v_denoises_to_base_plus_correction():
    gen = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0])
    x = torch.randn(4, 2, 3, 5, 5, generator=gen) * 2
    base, corr = torch.randn(2, 4, 2, 3, 5, 5, generator=gen)
    v = residual_to_v(corr, edm.scale_input(x, sigma), edm.c_noise(sigma), base)
    torch.testing.assert_close(edm.denoised(v, x, sigma), base + corr, atol=1e-4, rtol=1e-4)


def test_nearest_input_latents_picks_the_nearest_valid_view():
    latents = torch.arange(3.0).view(1, 3, 1, 1, 1).expand(1, 3, 2, 2, 2).clone()
    inputs = torch.eye(4).repeat(1, 3, 1, 1)
    inputs[0, :, 0, 3] = torch.tensor([0.0, 5.0, 1.0])  # centres on the x axis
    targets = torch.eye(4).repeat(1, 3, 1, 1)
    targets[0, :, 0, 3] = torch.tensor([0.9, 4.0, 1.2])
    mask = torch.tensor([[True, True, False]])  # slot 2 (x=1) is padding: never chosen
    out = nearest_input_latents(latents, mask, inputs, targets)
    assert out[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def untrained():
    return IterGenDiffusionModel.from_config(small_taef2()).eval()


def test_preset_uses_taef2_latents_and_input_map(untrained):
    cfg = untrained.config
    assert cfg.latent_channels == 32 and untrained.latent_hw == (8, 8)
    assert cfg.unet_in_channels == 32 + 32 + 6 + 32
    assert untrained.denoiser.unet.conv_in.in_channels == cfg.unet_in_channels
    assert untrained.denoiser.unet.conv_out.out_channels == 32
    assert float(untrained.denoiser.unet.conv_out.weight.abs().sum()) == 0.0


@pytest.mark.parametrize("start_sigma", [None, 1.0])
def test_untrained_residual_model_returns_the_render(untrained, start_sigma):
    """Gain 0 at init: sampling (any guidance, full noise or SDEdit) reproduces the render's autoencoder round trip."""
    renders = smooth_images(G, 1)
    inputs = smooth_images(2, 2)
    poses = orbit(G + 2)
    intr = torch.tensor([60.0, 60.0, 32.0, 32.0]).repeat(G, 1)
    out = IterGenVideoPipeline(untrained)(
        renders,
        inputs,
        poses[G:],
        poses[:G],
        num_inference_steps=4,
        guidance_3d=0.5,
        guidance_input=2.0,
        generator=torch.Generator().manual_seed(0),
        target_intrinsics=intr,
        start_sigma=start_sigma,
    )
    round_trip = untrained.decode_latents(untrained.encode_latents(renders)[None])[0]
    torch.testing.assert_close(out, round_trip, atol=2e-4, rtol=0)
    psnr = -10 * torch.log10(((out - renders) ** 2).mean())
    assert psnr > 24.0  # TAEF2 round trip of random colour fields at 64 px (measured 26.4 dB)


def test_dropping_inputs_zeroes_the_input_map(untrained):
    imgs = smooth_images(G, 3)
    lat = untrained.encode_latents(imgs)[None]
    k = untrained.config.max_input_views
    inputs = torch.zeros(1, k, 3, 64, 64)
    inputs[0, :1] = imgs[:1]
    mask = torch.zeros(1, k, dtype=torch.bool)
    mask[0, 0] = True
    poses = orbit(G)[None]
    cond = untrained.prepare_conditioning(
        lat, inputs, mask, poses[:, :1].expand(1, k, 4, 4), poses, 0.0, None, torch.ones(1, G, 4) * 32
    )
    assert cond.input_map is not None and float(cond.input_map.abs().sum()) > 0
    torch.testing.assert_close(cond.input_map[0, 0], lat[0, 0] / untrained.scaling_factor)
    assert float(cond.branch("no_input").input_map.abs().sum()) == 0.0
    torch.testing.assert_close(cond.branch("no_3d").input_map, cond.input_map)


def test_training_caches_latents_learns_and_resumes(tmp_path):
    root = tmp_path / "snapshots"
    for i in range(2):
        make_shard(root, f"scene_{i}", frames=10, steps=2, seed=i)
    cfg = TrainDiffusionConfig(
        data=root,
        output_dir=tmp_path / "run",
        model="taef2",
        max_steps=12,
        batch_size=2,
        learning_rate=1e-3,
        lr_warmup_steps=0,
        checkpoint_every=6,
        validate_every=0,
        progress=False,
        model_overrides={"num_frames": G},
    )
    first = train(cfg)
    caches = sorted((tmp_path / "run" / "latent_cache").glob("*.pt"))
    assert len(caches) == 2
    losses = list(first.losses.values())
    assert all(torch.isfinite(torch.tensor(losses)))
    mtimes = [c.stat().st_mtime_ns for c in caches]
    again = train(TrainDiffusionConfig(**{**cfg.__dict__, "max_steps": 14, "resume": "latest"}))
    assert again.step == 14
    assert [c.stat().st_mtime_ns for c in caches] == mtimes  # cache reused, not re-encoded
    model = IterGenDiffusionModel.from_pretrained(tmp_path / "run" / "latest")
    assert model.config.output_parameterization == "render_residual"
    assert not (tmp_path / "run" / "latest" / "vae").exists()  # TAEF2 is referenced, not copied
    assert float(model.denoiser.unet.conv_out.weight.abs().sum()) > 0  # training moved the correction


def test_warped_input_map_trains_from_cached_warps_and_samples_with_them(tmp_path):
    """The "warped_input" map: shards with render depths give cached warp latents (the same as the dataset's
    on-the-fly composites), a trained model needs warped_inputs at sampling, and an untrained one still returns
    the render."""
    from itergen_ns.diffusion.data import SnapshotClipDataset, _to_float_images, warp_composites
    from itergen_ns.snapshots.format import load_shard

    root = tmp_path / "snapshots"
    for i in range(2):
        make_shard(root, f"scene_{i}", frames=10, steps=2, seed=i, depths=True)
    make_shard(root, "no_depths", frames=10, steps=2, seed=5)  # left out, with a warning naming the file
    maps = ("plucker", "nearest_input", "warped_input")
    with pytest.warns(UserWarning, match="no_depths.*depths.npy"):
        ds = SnapshotClipDataset(root, 64, 64, G, 3, seed=1, warped_input=True)
    assert len(ds.shards) == 2 and "warped" in ds[0]
    shard = load_shard(root / "shards" / "scene_0")
    warped = warp_composites(shard, 1, [0, 1, 2, 3], (64, 64))
    renders = _to_float_images(shard.renders[1, :4], (64, 64))
    torch.testing.assert_close(warped[:, :, :14], renders[:, :, :14])  # no surface (top quarter): the render
    assert float((warped[:, :, 18:] - renders[:, :, 18:]).abs().mean()) > 0.01  # elsewhere the input is warped in

    cfg = TrainDiffusionConfig(
        data=root, output_dir=tmp_path / "run", model="taef2", max_steps=4, batch_size=2, learning_rate=1e-3,
        lr_warmup_steps=0, checkpoint_every=4, validate_every=4, validation_clips=1, validation_inference_steps=2,
        progress=False,
        model_overrides={"num_frames": G, "extra_maps": maps},
    )  # fmt: skip
    from itergen_ns.diffusion.train import Trainer

    with pytest.warns(UserWarning, match="no_depths"):
        trainer = Trainer(cfg)
    assert all(c.warped is not None and c.warped.shape == c.renders.shape for c in trainer.latent_cache)
    enc = trainer.model.encode_latents(warped).half()
    torch.testing.assert_close(trainer.latent_cache[0].warped[1, :4], enc, atol=1e-2, rtol=0)  # cache = composites
    item = trainer.dataset[3]
    assert "warped_latents" in item and "warped" not in item
    assert trainer.train().step == 4
    assert (tmp_path / "run" / "validation" / "step_00000004_clip0.png").is_file()  # sampled with the warp map
    model = IterGenDiffusionModel.from_pretrained(tmp_path / "run" / "latest").eval()
    assert model.config.extra_maps == maps and model.config.unet_in_channels == 32 * 4 + 6
    pipe = IterGenVideoPipeline(model)
    poses, intr = orbit(G + 1), torch.tensor([60.0, 60.0, 32.0, 32.0]).repeat(G, 1)
    args = (smooth_images(G, 1), smooth_images(1, 2), poses[G:], poses[:G])
    with pytest.raises(ValueError, match="warped_inputs"):
        pipe(*args, num_inference_steps=2, target_intrinsics=intr)
    out = pipe(*args, num_inference_steps=2, target_intrinsics=intr, warped_inputs=smooth_images(G, 3),
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.shape == (G, 3, 64, 64) and torch.isfinite(out).all()

    untrained = IterGenDiffusionModel.from_config(small_taef2(extra_maps=maps)).eval()
    out = IterGenVideoPipeline(untrained)(
        *args,
        num_inference_steps=2,
        target_intrinsics=intr,
        warped_inputs=smooth_images(G, 3),
        generator=torch.Generator().manual_seed(0),
    )
    round_trip = untrained.decode_latents(untrained.encode_latents(args[0])[None])[0]
    torch.testing.assert_close(out, round_trip, atol=2e-4, rtol=0)


def test_fp16_save_loads_as_float32_and_matches(untrained, tmp_path):
    path = untrained.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    assert untrained.denoiser.unet.conv_in.weight.dtype == torch.float32  # the saved copy was converted, not us
    from safetensors import safe_open

    with safe_open(str(next((path / "unet").glob("*.safetensors"))), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    loaded = IterGenDiffusionModel.from_pretrained(path)
    assert loaded.denoiser.unet.conv_in.weight.dtype == torch.float32
    ref = untrained.denoiser.unet.conv_in.weight
    torch.testing.assert_close(loaded.denoiser.unet.conv_in.weight, ref.half().float())


def test_recipe_commands_match_its_build_settings():
    from itergen_ns.eval.generator_recipe import GeneratorRecipe

    recipe = GeneratorRecipe()
    text = " ".join(recipe.commands())
    for flag, value in [
        ("--num-scenes", recipe.num_scenes),
        ("--seed", recipe.scene_seed),
        ("--max-steps", recipe.export_steps),
        ("--model", recipe.model),
        ("--max-steps", recipe.diffusion_steps),
        ("--sampling.render-noise", recipe.render_noise),
        ("--extra-maps", " ".join(recipe.extra_maps)),
    ]:
        assert f"{flag} {value}" in text
    assert recipe.scene_seed != 0  # disjoint from the demo's and the benchmark's collection (seed 0)


def test_demo_without_a_model_names_the_fix(tmp_path, monkeypatch):
    from itergen_ns.eval import demo as demo_module

    monkeypatch.setattr("itergen_ns.eval.generator_recipe.SHIPPED_GENERATOR_DIR", tmp_path / "none", raising=False)
    monkeypatch.setattr("itergen_ns.diffusion.presets.SHIPPED_GENERATOR_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="--from-scratch"):
        demo_module.DemoConfig(output_dir=tmp_path / "demo").demo_checkpoint()
    explicit = demo_module.DemoConfig(output_dir=tmp_path / "demo", generator_checkpoint=tmp_path / "m")
    assert explicit.demo_checkpoint() == tmp_path / "m"


def test_shipped_generator_matches_its_recipe():
    import dataclasses
    import json

    from itergen_ns.diffusion.presets import SHIPPED_GENERATOR_DIR, shipped_generator
    from itergen_ns.diffusion.components import read_model_config
    from itergen_ns.eval.generator_recipe import GeneratorRecipe

    if shipped_generator() is None:
        pytest.skip("no shipped generator in this checkout")
    files = [f for f in SHIPPED_GENERATOR_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25e6
    recipe = json.loads((SHIPPED_GENERATOR_DIR / "recipe.json").read_text())
    expected = json.loads(json.dumps(dataclasses.asdict(GeneratorRecipe())))  # tuples as JSON lists
    assert recipe == expected  # `itergen demo --from-scratch` rebuilds this model
    cfg = read_model_config(SHIPPED_GENERATOR_DIR)
    assert cfg.name == "taef2" and cfg.output_parameterization == "render_residual"
    assert list(cfg.extra_maps) == recipe["extra_maps"]
    assert (cfg.sampling.guidance_3d, cfg.sampling.guidance_input) == (recipe["guidance_3d"], recipe["guidance_input"])
    assert cfg.sampling.render_noise == recipe["render_noise"]
    from safetensors import safe_open

    with safe_open(str(SHIPPED_GENERATOR_DIR / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in list(f.keys())[:5]} == {torch.float16}


def test_untrained_input_residual_model_returns_the_nearest_input():
    """input_residual: the identity is the nearest input view's latent, so an untrained model samples the
    autoencoder round trip of the input copy (margin 0 over it) whatever the render."""
    model = IterGenDiffusionModel.from_config(small_taef2(output_parameterization="input_residual")).eval()
    renders, inputs = smooth_images(G, 1), smooth_images(2, 2)
    poses = orbit(G + 2)
    targets = torch.cat([poses[G : G + 1].expand(2, 4, 4), poses[G + 1 :].expand(2, 4, 4)])  # nearest: 0, 0, 1, 1
    out = IterGenVideoPipeline(model)(
        renders, inputs, poses[G:], targets, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
        target_intrinsics=torch.tensor([60.0, 60.0, 32.0, 32.0]).repeat(G, 1),
    )  # fmt: skip
    copy = inputs[[0, 0, 1, 1]]
    round_trip = model.decode_latents(model.encode_latents(copy)[None])[0]
    torch.testing.assert_close(out, round_trip, atol=2e-4, rtol=0)
