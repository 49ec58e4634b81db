"""Real captures end to end (issue 15): the CO3D apple sequence and the Middlebury dino / temple rings in
``../shared/data`` (provenance and camera conventions in its README.md) through the parsers, the baseline, itergen
and ``ns-render dataset``.

Skipped when ``../shared/data`` (next to the repository) is absent, e.g. in a fresh clone. Runs are short and use
the shared framing at 64-96 px so each test stays well under a minute on one CPU thread.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from itergen_ns.data.camera_utils import nearest_point_to_axes
from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig
from itergen_ns.data.sparse_dataparser import SparseNerfstudioDataParserConfig
from conftest import REPO_ROOT, SHARED

DATA = SHARED / "data"
APPLE = DATA / "co3d_apple" / "apple" / "posediffusion_sample"
DINO = DATA / "middlebury_dino"
TEMPLE = DATA / "middlebury_temple"
SCENES = {"apple": APPLE, "dino": DINO, "temple": TEMPLE}
SHIPPED_GENERATOR = REPO_ROOT / "itergen_ns" / "weights" / "generator"

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        not DATA.is_dir(),
        reason=f"real captures not found at {DATA} (a fresh clone has none; README 'Real captures' says where to get them)",
    ),
]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real capture {path} is absent")
    return path


# ------------------------------------------------------------------------------------------------ geometry helpers
def axes_spread(c2w: torch.Tensor) -> Dict[str, float]:
    """How well the optical axes meet: distances of the axes from their least-squares nearest point (RMS and max,
    as fractions of the median camera distance to it) and the angles (deg) between each axis and that point."""
    c2w = c2w.double()
    point = nearest_point_to_axes(c2w)
    origin, axis = c2w[:, :, 3], -c2w[:, :, 2] / c2w[:, :, 2].norm(dim=-1, keepdim=True)
    rel = point - origin
    along = (rel * axis).sum(-1)
    off_axis = (rel - along[:, None] * axis).norm(dim=-1)
    distance = rel.norm(dim=-1)
    median = float(distance.median())
    angle = torch.rad2deg(torch.acos((along / distance).clamp(-1, 1)))
    return {
        "rms": float(off_axis.pow(2).mean().sqrt()) / median,
        "max": float(off_axis.max()) / median,
        "max_angle": float(angle.max()),
        "point": point,
    }


def project(cameras, point: torch.Tensor) -> np.ndarray:
    """Pixel (u, v) of a world point in every nerfstudio camera (OpenGL: looks along -z, y up), and its depth."""
    c2w = cameras.camera_to_worlds.double()
    local = torch.einsum("nij,ni->nj", c2w[:, :, :3], point.double()[None] - c2w[:, :, 3])
    depth = -local[:, 2]
    u = cameras.fx[:, 0].double() * local[:, 0] / depth + cameras.cx[:, 0].double()
    v = -cameras.fy[:, 0].double() * local[:, 1] / depth + cameras.cy[:, 0].double()
    return torch.stack([u, v, depth], -1).numpy()


# ------------------------------------------------------------------------------------------------ the CO3D parser
APPLE_FRAMES = [7, 12, 17, 19, 24, 25, 43, 52, 70, 77, 85, 96, 128, 145, 160, 162, 168, 172, 191, 200]


def test_co3d_parser_reads_the_apple_sequence():
    """20 real frames, 288 x 512 (W x H) portrait, exact intrinsics, cameras looking at one point that lands on the
    apple in every frame; the shared framing (256 px square) keeps that geometry."""
    parser = CO3DDataParserConfig(data=need(APPLE), num_input_views=0, frame_size=None).setup()
    raw = parser.get_dataparser_outputs("train")
    cams = raw.cameras
    assert raw.metadata["co3d_frame_numbers"] == APPLE_FRAMES
    assert len(raw.image_filenames) == cams.shape[0] == 20
    assert set(cams.width.view(-1).tolist()) == {288} and set(cams.height.view(-1).tolist()) == {512}
    for path in raw.image_filenames:  # the files really are that size (no EXIF rotation: the parser checks)
        from PIL import Image

        with Image.open(path) as im:
            assert im.size == (288, 512)
    fx, fy, cx, cy = (getattr(cams, k)[:, 0].double() for k in ("fx", "fy", "cx", "cy"))
    # principal point at the image centre; square pixels up to the 0.05% resize anisotropy of the README
    assert torch.allclose(cx, torch.full_like(cx, 144.0)) and torch.allclose(cy, torch.full_like(cy, 256.0))
    assert ((fx / fy - 1).abs() < 1e-3).all()
    # f = gtFL * min(W, H) / 2 = 506-513 px: vertical field of view 2 atan(256 / f) ~ 53 degrees
    assert ((fx > 500) & (fx < 520)).all()
    vfov = torch.rad2deg(2 * torch.atan(256.0 / fy))
    assert ((vfov > 50) & (vfov < 55)).all()
    # frame 12: fx, fy, cx, cy = 506.24, 506.00, 144, 256 (README verification)
    i12 = APPLE_FRAMES.index(12)
    assert (float(fx[i12]), float(fy[i12])) == pytest.approx((506.24, 506.00), abs=0.01)

    # the optical axes meet: RMS 8.7%, max 14.6% of the median camera distance, max angle 9.0 deg (hand-held)
    spread = axes_spread(cams.camera_to_worlds)
    assert spread["rms"] < 0.10 and spread["max"] < 0.16 and spread["max_angle"] < 10.0
    # that object centre is in front of every camera and projects inside every frame, near the apple (the middle)
    uvd = project(cams, spread["point"])
    assert (uvd[:, 2] > 0).all()
    assert ((uvd[:, 0] > 0.25 * 288) & (uvd[:, 0] < 0.8 * 288)).all()
    assert ((uvd[:, 1] > 0.4 * 512) & (uvd[:, 1] < 0.65 * 512)).all()

    # the default framing: centred 288 x 288 window resized to 256, intrinsics scaled exactly, centre still inside
    framed = CO3DDataParserConfig(data=APPLE, num_input_views=0).setup().get_dataparser_outputs("train")
    fc = framed.cameras
    assert set(fc.width.view(-1).tolist()) == {256} and set(fc.height.view(-1).tolist()) == {256}
    s = 256 / 288
    assert torch.allclose(fc.fx[:, 0].double(), fx * s, rtol=1e-5)
    assert torch.allclose(fc.cy[:, 0].double(), (cy - 112) * s, rtol=1e-5)
    assert torch.equal(fc.camera_to_worlds, cams.camera_to_worlds)
    uvd = project(fc, spread["point"])
    assert ((uvd[:, :2] > 0) & (uvd[:, :2] < 256)).all()
    # a sparse split: evenly spaced along the capture, every other frame held out
    split = CO3DDataParserConfig(data=APPLE, num_input_views=3, input_view_rule="evenly_spaced").setup()
    train, test = split.get_dataparser_outputs("train"), split.get_dataparser_outputs("test")
    assert train.metadata["co3d_frame_numbers"] == [19, 85, 168]  # positions 3, 10, 16 of 20
    assert sorted(train.metadata["co3d_frame_numbers"] + test.metadata["co3d_frame_numbers"]) == APPLE_FRAMES


@pytest.mark.parametrize("name", ["dino", "temple"])
def test_middlebury_rings_parse_and_frame(name):
    """16 calibrated ring views, 480 x 640, axes meeting within 2% of the camera distance, the meeting point inside
    every (framed) frame."""
    data = need(SCENES[name])
    raw = SparseNerfstudioDataParserConfig(data=data, num_input_views=0).setup().get_dataparser_outputs("train")
    assert len(raw.image_filenames) == 16
    assert set(raw.cameras.width.view(-1).tolist()) == {480} and set(raw.cameras.height.view(-1).tolist()) == {640}
    spread = axes_spread(raw.cameras.camera_to_worlds)
    assert spread["rms"] < 0.02 and spread["max"] < 0.025 and spread["max_angle"] < 1.5  # README: <= 1.9%, 1.07 deg
    framed = SparseNerfstudioDataParserConfig(data=data, num_input_views=0, frame_size=96).setup()
    out = framed.get_dataparser_outputs("train")
    assert set(out.cameras.width.view(-1).tolist()) == {96} and set(out.cameras.height.view(-1).tolist()) == {96}
    assert not any(str(p).startswith(str(DATA)) for p in out.image_filenames)  # framed copies live in a cache
    assert all(not (d / ".itergen_cache").exists() for d in (DINO, TEMPLE, APPLE) if d.exists())  # read-only data
    # framing = centred 480 x 480 window (rows 80..560) resized by 96/480: intrinsics exactly, poses unchanged
    s = 96 / 480
    for key, shift in (("fx", 0.0), ("fy", 0.0), ("cx", 0.0), ("cy", 80.0)):
        ref = (getattr(raw.cameras, key).double() - shift) * s
        assert torch.allclose(getattr(out.cameras, key).double(), ref, rtol=1e-5, atol=1e-4), key
    assert torch.equal(out.cameras.camera_to_worlds, raw.cameras.camera_to_worlds)
    uvd = project(out.cameras, spread["point"])
    assert ((uvd[:, :2] > 0.3 * 96) & (uvd[:, :2] < 0.7 * 96)).all()
    from PIL import Image

    from itergen_ns.data.framing import frame_image

    with Image.open(out.image_filenames[5]) as im, Image.open(raw.image_filenames[5]) as src:
        assert im.size == (96, 96)
        expected = frame_image(np.asarray(src.convert("RGB")), 96)
        assert np.abs(np.asarray(im).astype(int) - expected.astype(int)).max() == 0


# ------------------------------------------------------------------------------------------------ training
def _spec(method: str, data: Path, out: Path, steps: int, views: int, frame_size: int, **overrides):
    from itergen_ns.engine.runner import TrainSpec, build_config

    spec = TrainSpec(
        method=method,
        data=data,
        output_dir=out,
        num_input_views=views,
        steps=steps,
        seed=0,
        overrides={
            "pipeline.datamanager.dataparser.frame_size": frame_size,
            "pipeline.datamanager.input_view_rule": "evenly_spaced",
            **overrides,
        },
    )
    return build_config(spec)


def heldout_psnr(pipeline) -> List[float]:
    """PSNR (dB) of the model's render at every held-out (eval split) frame against its ground truth."""
    from itergen_ns.data.all_frames import load_frames
    from itergen_ns.models.rendering import render_all_frames

    dataset = pipeline.datamanager.eval_dataset
    renders = render_all_frames(pipeline.model, dataset.cameras).astype(np.float64) / 255.0
    targets = np.stack(load_frames(list(dataset.image_filenames), renders.shape[1:3])).astype(np.float64) / 255.0
    mse = ((renders - targets) ** 2).reshape(len(renders), -1).mean(1)
    return [float(-10 * math.log10(max(m, 1e-12))) for m in mse]


# Measured on this project's 2-core CPU machine (200 steps, 3 evenly spaced inputs, seed 0, one thread), held-out
# PSNR of the initial Gaussians -> after training (mean over held-out frames):
#   apple  (CO3D, 17 held-out, 96 px): 11.72 -> 16.45 dB, +4.73 dB, 17/17 frames better
#   temple (Middlebury, 13 held-out, 64 px): 11.74 -> 12.17 dB, +0.43 dB (96 px: +0.38; dino at 96 px: +0.18)
# The Middlebury rings are hard for the 3-view baseline: narrow fields of view (8-18 deg) and black backgrounds, so
# held-out views look through dark floaters that explain the inputs' background; with 6 inputs temple gains +1.56 dB.
BASELINE = {
    # name: (frame size, asserted floor of the mean held-out PSNR gain in dB, floor of the share of frames improved)
    "apple": (96, 3.0, 0.9),
    "temple": (64, 0.2, 0.35),
}


@pytest.mark.parametrize("name", sorted(BASELINE))
def test_baseline_200_steps_raise_heldout_psnr(name, tmp_path):
    """200 itergen-splatfacto steps from 3 real views raise the held-out PSNR over the initial state (the initial
    Gaussians rendered before the first step) by at least the stated floor."""
    from itergen_ns.engine.runner import train

    data = need(SCENES[name])
    size, floor, share = BASELINE[name]
    config = _spec("itergen-splatfacto", data, tmp_path, steps=200, views=3, frame_size=size)
    before: Dict[str, List[float]] = {}
    trainer = train(config, on_setup=lambda t: before.setdefault("psnr", heldout_psnr(t.pipeline)))
    dm = trainer.pipeline.datamanager
    assert len(dm.train_dataset) == 3 and len(dm.eval_dataset) == (17 if name == "apple" else 13)
    after = heldout_psnr(trainer.pipeline)
    gain = float(np.mean(after) - np.mean(before["psnr"]))
    better = float(np.mean(np.array(after) > np.array(before["psnr"])))
    print(
        f"{name}: held-out PSNR {np.mean(before['psnr']):.2f} -> {np.mean(after):.2f} dB ({gain:+.2f}), {better:.0%} better"
    )
    assert gain > floor, f"{name}: held-out PSNR gain {gain:.2f} dB <= {floor} dB"
    assert better >= share


def _generator_overrides() -> Dict[str, object]:
    if (SHIPPED_GENERATOR / "itergen_diffusion.json").exists():
        return {}  # itergen's default: the shipped generator
    return {"pipeline.generator.random_init": True}


@pytest.mark.parametrize("name", ["apple", "dino", "temple"])
def test_itergen_20_steps_then_ns_render_dataset(name, tmp_path):
    """itergen trains 20 steps on the real scene; nerfstudio's `ns-render dataset` (its DatasetRender, in-process)
    reloads the saved config and checkpoint and writes a render and the ground truth of every held-out frame."""
    from nerfstudio.scripts.render import DatasetRender

    from itergen_ns.engine.runner import train

    data = need(SCENES[name])
    overrides = {"pipeline.generation.generate_every": 10, **_generator_overrides()}  # clips join within 20 steps
    config = _spec("itergen", data, tmp_path / "run", steps=20, views=3, frame_size=64, **overrides)
    trainer = train(config)
    assert trainer.step == 19
    generation = trainer.pipeline.generation
    assert generation.num_generations >= 1 and generation.pool, "no generated clip reached the training pool"
    clip = generation.pool.clips[0]
    assert clip.cameras.shape[0] == clip.images.shape[0] >= 2 and torch.isfinite(clip.images).all()
    config_path = config.get_base_dir() / "config.yml"
    assert config_path.is_file() and any((config.get_base_dir() / "nerfstudio_models").glob("step-*.ckpt"))
    out = tmp_path / "renders"
    DatasetRender(
        load_config=config_path, output_path=out, split="test", rendered_output_names=["rgb", "gt-rgb"]
    ).main()
    heldout = 17 if name == "apple" else 13
    rgb = sorted((out / "test" / "rgb").glob("*"))
    gt = sorted((out / "test" / "gt-rgb").glob("*"))
    assert len(rgb) == len(gt) == heldout
    from PIL import Image

    with Image.open(rgb[0]) as im:
        assert im.size == (64, 64)
