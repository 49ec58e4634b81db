"""TAEF2 as a diffusers AutoencoderTiny: strict load, parity with an independent reference, round-trip PSNR."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itergen_ns.data.procedural.scene import sample_scene
from itergen_ns.diffusion.taef2 import TAEF2_DIR, AutoencoderTinyPool, load_taef2
from conftest import SHARED

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHARED = SHARED
APPLE_IMAGES = SHARED / "data" / "co3d_apple" / "apple" / "posediffusion_sample" / "images"
APPLE_FRAMES = (7, 85, 160)

# Floors: the measured per-frame minimum (float32, CPU, no latent quantisation, bilinear antialiased resize) minus
# about 1 dB. Measured: apple 256 px 36.63/36.40/36.57, 128 px 33.73/33.63/33.31, 64 px 30.85/30.24/30.44;
# procedural 128 px 34.21/33.85/34.29/33.36, 64 px 31.45/30.72/30.24/28.16. At 128 px the apple frames stay
# below 34 dB with every resize filter tried (PIL bilinear/bicubic/lanczos/box, torch area); the data README's
# ~35 dB is at 256 px.
MIN_PSNR = {
    ("apple", 256): 35.0,
    ("apple", 128): 32.0,
    ("apple", 64): 29.0,
    ("procedural", 128): 32.0,
    ("procedural", 64): 27.0,
}


@pytest.fixture(scope="module")
def vae() -> AutoencoderTinyPool:
    return load_taef2()


# --- independent reference: taesd's flux_2 layout as plain nn.Sequential, keys ``k.*`` ----------------------


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _RefBlock(nn.Module):
    def __init__(self, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(64, 64), nn.ReLU(), _conv(64, 64), nn.ReLU(), _conv(64, 64))
        self.pool = None
        if pool:
            c1 = lambda a, b: nn.Conv2d(a, b, 1, bias=False)  # noqa: E731
            self.pool = nn.Sequential(c1(64, 256), nn.GroupNorm(4, 256), nn.ReLU(), c1(256, 64))

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


class _RefClamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


def _ref_encoder() -> nn.Sequential:
    B = _RefBlock
    down = lambda: _conv(64, 64, stride=2, bias=False)  # noqa: E731
    return nn.Sequential(
        _conv(3, 64), B(),
        down(), B(), B(), B(),
        down(), B(), B(), B(),
        down(), B(True), B(True), B(True),
        _conv(64, 32),
    )  # fmt: skip


def _ref_decoder() -> nn.Sequential:
    B = _RefBlock
    up = lambda: (nn.Upsample(scale_factor=2), _conv(64, 64, bias=False))  # noqa: E731
    return nn.Sequential(
        _RefClamp(), _conv(32, 64), nn.ReLU(),
        B(True), B(True), B(True), *up(),
        B(), B(), B(), *up(),
        B(), B(), B(), *up(),
        B(), _conv(64, 3),
    )  # fmt: skip


def _load_ref(module: nn.Module, name: str) -> nn.Module:
    state = torch.load(TAEF2_DIR / name, map_location="cpu", weights_only=True)
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.eval()


# --- helpers ---------------------------------------------------------------------------------------------------


def _psnr(a: torch.Tensor, b: torch.Tensor) -> list:
    mse = (a - b).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).tolist()


@torch.no_grad()
def _round_trip(vae: AutoencoderTinyPool, images01: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> encode -> decode (float32, no quantisation) -> [0, 1]."""
    out = vae.decode(vae.encode(images01 * 2 - 1).latents).sample
    return ((out + 1) / 2).clamp(0, 1)


def _apple_frames(size: int) -> torch.Tensor:
    if not APPLE_IMAGES.is_dir():
        pytest.skip(f"shared CO3D apple frames not found at {APPLE_IMAGES}")
    from PIL import Image

    frames = []
    for index in APPLE_FRAMES:
        im = torch.from_numpy(np.array(Image.open(APPLE_IMAGES / f"frame{index:06d}.jpg").convert("RGB")))
        im = im.permute(2, 0, 1).float() / 255
        h, w = im.shape[1:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        frames.append(im[:, top : top + s, left : left + s])
    crops = torch.stack(frames)
    return F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _procedural_frames(size: int) -> torch.Tensor:
    images = [sample_scene(seed, num_frames=2, resolution=size).render()[0] for seed in (0, 1)]
    return torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).float() / 255


# --- tests -----------------------------------------------------------------------------------------------------


def test_strict_load_uses_every_tensor(vae):
    n_enc = sum(p.numel() for p in vae.encoder.parameters())
    n_dec = sum(p.numel() for p in vae.decoder.parameters())
    assert (n_enc, n_dec) == (1_338_528, 1_338_499)
    assert sum(p.numel() for p in vae.parameters()) == 2_677_027
    files = sum(len(torch.load(TAEF2_DIR / f, weights_only=True)) for f in ("taef2_encoder.pth", "taef2_decoder.pth"))
    assert len(vae.state_dict()) == files == 158
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert all(p.dtype == torch.float32 for p in vae.parameters())


@torch.no_grad()
def test_parity_with_reference(vae):
    enc, dec = _load_ref(_ref_encoder(), "taef2_encoder.pth"), _load_ref(_ref_decoder(), "taef2_decoder.pth")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    z_ref = enc(x)
    z = vae.encode(x * 2 - 1).latents
    assert z.shape == (2, 32, 8, 8)
    assert (z - z_ref).abs().max().item() < 1e-4
    img_ref = dec(z_ref)
    img = (vae.decode(z_ref).sample + 1) / 2
    assert img.shape == (2, 3, 64, 64)
    assert (img - img_ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("size", [256, 128, 64])
def test_round_trip_apple(vae, size):
    x = _apple_frames(size)
    psnr = _psnr(_round_trip(vae, x), x)
    print(
        f"\nTAEF2 round trip, apple frames {APPLE_FRAMES} at {size} px: " + ", ".join(f"{p:.2f}" for p in psnr) + " dB"
    )
    assert min(psnr) >= MIN_PSNR[("apple", size)]


@pytest.mark.parametrize("size", [128, 64])
def test_round_trip_procedural(vae, size):
    x = _procedural_frames(size)
    psnr = _psnr(_round_trip(vae, x), x)
    print(
        f"\nTAEF2 round trip, procedural frames (seeds 0, 1; 2 each) at {size} px: "
        + ", ".join(f"{p:.2f}" for p in psnr)
        + " dB"
    )
    assert min(psnr) >= MIN_PSNR[("procedural", size)]


def test_missing_weights_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_taef2(missing)


def test_sha256_mismatch(tmp_path):
    for name in ("taef2_encoder.pth", "taef2_decoder.pth"):
        shutil.copyfile(TAEF2_DIR / name, tmp_path / name)
    with open(tmp_path / "taef2_decoder.pth", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="taef2_decoder.pth"):
        load_taef2(tmp_path)


@torch.no_grad()
def test_save_from_pretrained_round_trip(vae, tmp_path):
    vae.save_pretrained(tmp_path / "taef2")
    again = AutoencoderTinyPool.from_pretrained(tmp_path / "taef2").eval()
    assert tuple(again.config.encoder_pool_layers) == (11, 12, 13)
    assert tuple(again.config.decoder_pool_layers) == (2, 3, 4)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z, z2 = vae.encode(x).latents, again.encode(x).latents
    assert torch.equal(z, z2)
    assert torch.equal(vae.decode(z).sample, again.decode(z).sample)
