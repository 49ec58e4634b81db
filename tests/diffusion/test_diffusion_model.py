"""P_theta model tests on the tiny config (CPU, random init, offline)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

from itergen_ns.diffusion import edm
from itergen_ns.diffusion.configs import ComponentSource
from itergen_ns.diffusion.presets import svd_config, tiny_config
from itergen_ns.diffusion.guidance import combine_guidance
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.pipeline import IterGenVideoPipeline
from itergen_ns.diffusion.poses import plucker_rays, relative_poses
from itergen_ns.diffusion.unet import build_unet, widen_conv_in
from itergen_ns.diffusion.weights import MissingWeightsError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def orbit_poses(n: int, radius: float = 2.0, start: float = 0.0, step: float = 0.15) -> torch.Tensor:
    """[n,4,4] OpenGL c2w on a horizontal circle looking at the origin."""
    poses = []
    for i in range(n):
        a = start + step * i
        eye = torch.tensor([radius * math.sin(a), 0.3, radius * math.cos(a)])
        fwd = -eye / eye.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0]))
        right = right / right.norm()
        up = torch.linalg.cross(right, fwd)
        m = torch.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, eye
        poses.append(m)
    return torch.stack(poses)


@pytest.fixture(scope="module")
def model() -> IterGenDiffusionModel:
    return IterGenDiffusionModel.from_config(tiny_config())


def make_batch(model: IterGenDiffusionModel, b: int = 1, views: int = 2, seed: int = 0) -> dict:
    g, k, h, w = model.num_frames, model.config.max_input_views, model.height, model.width
    gen = torch.Generator().manual_seed(seed)
    poses = orbit_poses(g + 3)
    mask = torch.zeros(b, k, dtype=torch.bool)
    mask[:, :views] = True
    input_c2w = torch.eye(4).repeat(b, k, 1, 1)
    input_c2w[:, :views] = poses[-views:]
    return {
        "frames": torch.rand(b, g, 3, h, w, generator=gen),
        "renders": torch.rand(b, g, 3, h, w, generator=gen),
        "input_images": torch.rand(b, k, 3, h, w, generator=gen) * mask[..., None, None, None],
        "input_mask": mask,
        "input_c2w": input_c2w,
        "target_c2w": poses[:g].expand(b, g, 4, 4).clone(),
        "target_intrinsics": torch.tensor([w * 1.2, h * 1.2, w / 2, h / 2]).expand(b, g, 4).clone(),
    }


def test_forward_backward_shapes_and_finite_loss(model):
    batch = make_batch(model, b=2)
    model.denoiser.zero_grad()
    loss, logs = model.training_loss(batch, torch.Generator().manual_seed(0), render_noise=0.1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.denoiser.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    # the UNet output has the latent shape [B, G, 4, h, w]
    cond = model.prepare_conditioning(
        model.encode_latents(batch["renders"].flatten(0, 1)).reshape(2, model.num_frames, 4, *model.latent_hw),
        batch["input_images"],
        batch["input_mask"],
        batch["input_c2w"],
        batch["target_c2w"],
        0.1,
        None,
    )
    x = torch.randn(2, model.num_frames, 4, *model.latent_hw)
    out = model.denoiser(x, torch.tensor([0.1, 0.5]), **cond.as_kwargs())
    assert out.shape == (2, model.num_frames, 4, 8, 8)
    model.denoiser.zero_grad()


def test_loss_decreases_when_overfitting_one_clip():
    torch.manual_seed(0)
    m = IterGenDiffusionModel.from_config(tiny_config(seed=1, num_frames=4))
    batch = make_batch(m, b=1, seed=3)
    shape = (1, m.num_frames, 4, *m.latent_hw)
    batch["latents"] = m.encode_latents(batch["frames"].flatten(0, 1)).reshape(shape)
    batch["render_latents"] = m.encode_latents(batch["renders"].flatten(0, 1)).reshape(shape)
    opt = torch.optim.Adam(m.denoiser.parameters(), lr=2e-3)
    seeds = [100, 101, 102]

    def eval_loss() -> float:
        with torch.no_grad():
            losses = [m.training_loss(batch, torch.Generator().manual_seed(s), 0.1, 0.0, 0.0, 0.0)[0] for s in seeds]
        return float(torch.stack(losses).mean())

    before = eval_loss()
    for step in range(50):
        loss, _ = m.training_loss(batch, torch.Generator().manual_seed(seeds[step % 3]), 0.1, 0.0, 0.0, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


def test_widened_unet_matches_original_at_init(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(tiny_config().unet.kwargs)
    original = UNetSpatioTemporalConditionModel(in_channels=8, **kwargs)
    original.save_pretrained(tmp_path / "svd_like" / "unet")
    widened = build_unet(
        ComponentSource(pretrained=str(tmp_path / "svd_like"), subfolder="unet"), in_channels=14, allow_download=False
    )
    assert widened.conv_in.in_channels == 14 and widened.config.in_channels == 14
    assert torch.count_nonzero(widened.conv_in.weight[:, 8:]) == 0
    x = torch.randn(1, 8, 8, 8, 8)
    extras = torch.randn(1, 8, 6, 8, 8)
    t = torch.tensor([0.3])
    tokens = torch.randn(1, 4, 32)
    ids = torch.tensor([[6.0, 127.0, 0.1]])
    with torch.no_grad():
        ref = original(x, t, tokens, ids).sample
        out = widened(torch.cat([x, extras], dim=2), t, tokens, ids).sample
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # widening to the same size is a no-op, narrowing is refused
    assert widen_conv_in(widened, 14) is widened
    with pytest.raises(ValueError):
        widen_conv_in(widened, 8)


def test_cfg_scales_one_and_zero(model):
    """Each scale at 1 gives the conditional prediction, at 0 that condition's unconditional prediction."""
    batch = make_batch(model, b=1)
    z = model.encode_latents(batch["renders"].flatten(0, 1)).reshape(1, model.num_frames, 4, *model.latent_hw)
    cond = model.prepare_conditioning(
        z,
        batch["input_images"],
        batch["input_mask"],
        batch["input_c2w"],
        batch["target_c2w"],
        0.1,
        torch.Generator().manual_seed(0),
    )
    # give the zero-initialised DINO/pose parameters some weight so all branches differ
    with torch.no_grad():
        for p in model.denoiser.view_tokenizer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.randn(1, model.num_frames, 4, *model.latent_hw)
    t = torch.tensor([0.2])
    with torch.no_grad():
        preds = {n: model.denoiser(x, t, **cond.branch(n).as_kwargs()) for n in ("full", "no_3d", "no_input")}
    full, no3d, noin = preds["full"], preds["no_3d"], preds["no_input"]
    assert (full - no3d).abs().max() > 1e-4 and (full - noin).abs().max() > 1e-4
    torch.testing.assert_close(combine_guidance(full, no3d, noin, 1.0, 1.0), full)
    torch.testing.assert_close(combine_guidance(full, no3d, noin, 0.0, 1.0), no3d)
    torch.testing.assert_close(combine_guidance(full, no3d, noin, 1.0, 0.0), noin)
    # in-between: linear along each direction; both scales combine additively
    torch.testing.assert_close(combine_guidance(full, no3d, noin, 0.5, 1.0), 0.5 * (full + no3d))
    torch.testing.assert_close(combine_guidance(full, no3d, noin, 2.0, 3.0), full + (full - no3d) + 2.0 * (full - noin))
    # the branch conditioning really drops what it says
    assert torch.count_nonzero(cond.branch("no_3d").render_cond) == 0
    assert not cond.branch("no_input").view_mask.any()
    assert torch.equal(cond.branch("no_input").render_cond, cond.render_cond)
    # unused guidance branches need not be evaluated
    torch.testing.assert_close(combine_guidance(full, None, None, 1.0, 1.0), full)
    with pytest.raises(ValueError):
        combine_guidance(full, None, noin, 0.5, 1.0)


def test_padded_views_are_masked(model):
    """A padded slot contributes zero tokens: its image and pose have no effect on the prediction."""
    batch = make_batch(model, b=1, views=1)
    z = torch.zeros(1, model.num_frames, 4, *model.latent_hw)
    other = {**batch, "input_images": batch["input_images"].clone(), "input_c2w": batch["input_c2w"].clone()}
    other["input_images"][0, 1:] = torch.rand_like(other["input_images"][0, 1:])
    other["input_c2w"][0, 1:, :3, 3] += 5.0
    outs, tokens = [], []
    for b in (batch, other):
        cond = model.prepare_conditioning(
            z, b["input_images"], b["input_mask"], b["input_c2w"], b["target_c2w"], 0.0, None
        )
        kw = cond.as_kwargs()
        tok = model.denoiser.view_tokenizer(cond.features, cond.rel_poses, cond.view_mask)
        tokens.append(tok)
        with torch.no_grad():
            outs.append(model.denoiser(torch.ones_like(z), torch.tensor([0.0]), **kw))
    assert tokens[0].shape == (1, 1 + 3 * model.config.max_input_views, 32)
    assert torch.count_nonzero(tokens[0][0, 4:]) == 0  # slots 2..K are exactly zero
    torch.testing.assert_close(outs[0], outs[1])


def test_relative_pose_first_target_is_identity():
    targets = orbit_poses(6, start=0.7)
    inputs = orbit_poses(3, start=-0.4, step=0.5)
    rel_targets = relative_poses(targets, targets[0])
    torch.testing.assert_close(rel_targets[0], torch.eye(4), atol=1e-6, rtol=0)
    # rel = inv(T0) @ C, so T0 @ rel recovers the world pose, and an input at T0 is the identity
    rel_inputs = relative_poses(inputs, targets[0])
    torch.testing.assert_close(targets[0] @ rel_inputs, inputs, atol=1e-5, rtol=0)
    torch.testing.assert_close(relative_poses(targets[:1], targets[0])[0], torch.eye(4), atol=1e-6, rtol=0)
    # invariant to a change of world frame
    world = torch.eye(4)
    world[:3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    world[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(relative_poses(world @ inputs, world @ targets[0]), rel_inputs, atol=1e-5, rtol=0)
    # Plücker rays of the first target: origin at 0 (moment 0), centre ray along -z
    rays = plucker_rays(rel_targets[:1], torch.tensor([[10.0, 10.0, 4.0, 4.0]]), (8, 8), (2, 2))
    assert rays.shape == (1, 6, 2, 2)
    torch.testing.assert_close(rays[0, 3:], torch.zeros(3, 2, 2), atol=1e-6, rtol=0)
    assert (rays[0, 2] < 0).all()


def test_edm_matches_euler_scheduler():
    """Training parameterisation == EulerDiscreteScheduler(v_prediction, continuous) sampling."""
    sched = IterGenDiffusionModel.from_config(tiny_config()).make_scheduler()
    assert isinstance(sched, EulerDiscreteScheduler)
    sched.set_timesteps(5)
    x = torch.randn(1, 2, 4, 3, 3)
    t = sched.timesteps[1]
    sigma = sched.sigmas[1].reshape(1)
    torch.testing.assert_close(sched.scale_model_input(x, t), edm.scale_input(x, sigma))
    torch.testing.assert_close(edm.c_noise(sigma), t.reshape(1), atol=1e-5, rtol=0)
    x0 = torch.randn_like(x)
    v = edm.v_target(x0, x, sigma)
    pred_x0 = sched.step(v, t, x).pred_original_sample
    torch.testing.assert_close(pred_x0, x0, atol=1e-4, rtol=1e-4)


def test_pipeline_range_and_determinism(model):
    pipe = IterGenVideoPipeline(model)
    assert (pipe.height, pipe.width, pipe.num_frames) == (32, 32, 8)
    g = 4  # the UNet accepts other clip lengths than its training default; fewer frames keep this test fast
    poses = orbit_poses(g + 1)
    gen = torch.Generator().manual_seed(0)
    renders = torch.rand(g, 3, 40, 40, generator=gen)
    inputs = torch.rand(2, 3, 32, 32, generator=gen)

    def run(seed: int) -> torch.Tensor:
        return pipe(
            renders,
            inputs,
            poses[-2:],
            poses[:g],
            num_inference_steps=2,
            guidance_3d=0.5,
            guidance_input=2.0,
            render_noise=0.05,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (g, 3, 40, 40)
    assert a.min() >= 0.0 and a.max() <= 1.0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-4
    with pytest.raises(ValueError):
        pipe(renders, torch.rand(7, 3, 32, 32), orbit_poses(7), poses[:g], num_inference_steps=1)  # > max_input_views


def test_save_load_roundtrip(model, tmp_path):
    path = model.save_pretrained(tmp_path / "ckpt")
    assert (path / "itergen_diffusion.json").exists()
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (path / "vae").is_dir() and (path / "image_encoder").is_dir()  # random-init frozen parts are saved
    loaded = IterGenDiffusionModel.from_pretrained(path)
    for (n, p), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == n2
        torch.testing.assert_close(p, p2, rtol=0, atol=0)
    pipe = IterGenVideoPipeline.from_pretrained(path)
    assert pipe.num_frames == model.num_frames
    # saving again over an existing directory replaces it atomically
    model.save_pretrained(tmp_path / "ckpt")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_weights_error_names_the_path(tmp_path):
    missing = tmp_path / "no-such-svd"
    with pytest.raises(MissingWeightsError) as err:
        IterGenDiffusionModel.from_config(svd_config(init=str(missing)))
    msg = str(err.value)
    assert str(missing) in msg and "huggingface-cli download" in msg
    # a hub id that is not in the (offline) cache
    with pytest.raises(MissingWeightsError) as err:
        IterGenDiffusionModel.from_config(
            tiny_config(dino=ComponentSource(pretrained="itergen-test/not-a-real-dinov2"))
        )
    assert "itergen-test/not-a-real-dinov2" in str(err.value)
    assert "huggingface-cli download itergen-test/not-a-real-dinov2" in str(err.value)


def test_plucker_extra_maps_need_intrinsics():
    m = IterGenDiffusionModel.from_config(tiny_config(extra_maps=("plucker",)))
    assert m.denoiser.unet.config.in_channels == 14
    pipe = IterGenVideoPipeline(m)
    poses = orbit_poses(3)
    args = (torch.rand(2, 3, 32, 32), torch.rand(1, 3, 32, 32), poses[2:], poses[:2])
    with pytest.raises(ValueError, match="target_intrinsics"):
        pipe(*args, num_inference_steps=1)
    out = pipe(*args, num_inference_steps=1, target_intrinsics=torch.tensor([[40.0, 40.0, 16.0, 16.0]] * 2))
    assert out.shape == (2, 3, 32, 32)


def test_named_configs_roundtrip():
    from itergen_ns.diffusion.configs import SVD_HUB_ID, config_from_dict, config_to_dict
    from itergen_ns.diffusion.presets import get_model_config

    for cfg in (tiny_config(), svd_config(), svd_config(random_init=True), tiny_config(extra_maps=("plucker",))):
        assert config_from_dict(config_to_dict(cfg)) == cfg
    svd = svd_config()
    assert (svd.unet.pretrained, svd.unet.subfolder) == (SVD_HUB_ID, "unet")
    assert (svd.clip.subfolder, svd.vae.subfolder) == ("image_encoder", "vae")
    assert svd.dino.pretrained == "facebook/dinov2-base" and svd.unet_in_channels == 8
    assert svd_config(random_init=True).unet.pretrained is None
    with pytest.raises(ValueError):
        get_model_config("huge")
    with pytest.raises(ValueError):
        tiny_config(extra_maps=("depth",))
