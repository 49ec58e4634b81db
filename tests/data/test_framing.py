"""One framing (itergen_ns.data.framing) for the exporter, eval and the generator: exact geometry, same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from co3d_fixture import make_co3d_sequence

from nerfstudio.cameras.cameras import Cameras, CameraType

from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig
from itergen_ns.data.framing import frame_cameras, frame_image, frame_intrinsics, frame_view, frame_window

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "width, height, size, window",
    [
        (64, 48, 32, (8, 0, 48, 48)),  # wide: full height, centred horizontally
        (48, 64, 32, (0, 8, 48, 48)),  # tall
        (73, 40, 40, (16, 0, 40, 40)),  # odd margin: integer offset floor((73 - 40) / 2)
        (56, 56, 24, (0, 0, 56, 56)),  # square: a pure resize
        (64, 48, (24, 48), (0, 8, 64, 32)),  # non-square output: the window takes its aspect ratio
    ],
)
def test_window_is_centred_largest_with_the_output_aspect(width, height, size, window) -> None:
    win = frame_window(width, height, size)
    assert (win.x0, win.y0, win.width, win.height) == window
    out_h, out_w = (size, size) if isinstance(size, int) else size
    assert (win.out_height, win.out_width) == (out_h, out_w)


def test_pixels_and_intrinsics_agree() -> None:
    """An image whose channels are its own continuous pixel coordinates (u, v) (centres at +0.5): the framed image
    shows, at each pixel centre, the source position the framed intrinsics assign to it (within 0.1 source px, the
    discrete centroid error of the antialiasing filter), and 3D points project through both cameras consistently."""
    height, width, size = 48, 80, 30
    v, u = np.mgrid[0:height, 0:width] + 0.5
    coords = torch.from_numpy(np.stack([u, v, np.zeros_like(u)], -1).astype(np.float32))
    intr = torch.tensor([70.0, 65.0, 41.3, 22.8], dtype=torch.float64)
    framed, f_intr = frame_view(coords, intr, size)
    assert framed.shape == (size, size, 3) and framed.dtype == torch.float32
    win = frame_window(width, height, size)
    assert (win.x0, win.y0, win.width, win.height) == (16, 0, 48, 48)
    zoom = size / 48
    assert torch.allclose(f_intr, torch.tensor([70 * zoom, 65 * zoom, (41.3 - 16) * zoom, 22.8 * zoom],
                                                dtype=torch.float64))  # fmt: skip
    # framed pixel (i, j) centre (j + .5, i + .5) -> source (x0 + (j + .5) / zoom, y0 + (i + .5) / zoom)
    ii, jj = np.mgrid[0:size, 0:size] + 0.5
    inner = (slice(3, -3), slice(3, -3))
    err_u = np.abs(framed.numpy()[..., 0] - (win.x0 + jj / zoom))[inner]
    err_v = np.abs(framed.numpy()[..., 1] - (win.y0 + ii / zoom))[inner]
    assert err_u.max() < 0.1 and err_v.max() < 0.1
    # geometry: camera-space points project to pixel positions related by the same window map
    pts = torch.tensor([[0.1, -0.05, 2.0], [-0.2, 0.1, 3.0], [0.0, 0.0, 1.5]], dtype=torch.float64)

    def project(k):
        return torch.stack([k[0] * pts[:, 0] / pts[:, 2] + k[2], k[1] * pts[:, 1] / pts[:, 2] + k[3]], -1)

    src, dst = project(intr), project(f_intr)
    assert torch.allclose(dst, (src - torch.tensor([win.x0, win.y0], dtype=torch.float64)) * zoom, atol=1e-9)


def test_types_dtypes_identity_and_masks() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)
    as_np = frame_image(img, 32)
    as_torch = frame_image(torch.from_numpy(img), 32)
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.uint8 and as_np.shape == (32, 32, 3)
    assert torch.equal(as_torch, torch.from_numpy(as_np))
    as_float = frame_image(torch.from_numpy(img).float() / 255, 32)  # float in, float out, no rounding
    assert as_float.dtype == torch.float32
    diff = ((as_float * 255).round() - as_torch.float()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99  # the same resampling; only float ties differ
    assert not torch.equal(as_float * 255, as_torch.float())
    square = frame_image(as_np, 32)
    assert square is as_np  # already framed at this size: untouched
    mask = np.zeros((40, 72, 1), np.uint8)
    mask[10:30, 30:50] = 255
    framed_mask = frame_image(mask, 20, mode="nearest")
    assert set(np.unique(framed_mask)) == {0, 255}  # labels stay labels
    # cameras of any size, framed like their images
    cams = Cameras(
        camera_to_worlds=torch.eye(4)[:3][None].repeat(2, 1, 1),
        fx=torch.tensor([[50.0], [60.0]]), fy=torch.tensor([[50.0], [61.0]]),
        cx=torch.tensor([[36.0], [20.0]]), cy=torch.tensor([[20.0], [30.0]]),
        width=torch.tensor([[72], [40]]), height=torch.tensor([[40], [64]]),
        camera_type=CameraType.PERSPECTIVE,
    )  # fmt: skip
    framed = frame_cameras(cams, 32)
    assert framed.width.view(-1).tolist() == [32, 32] and framed.height.view(-1).tolist() == [32, 32]
    for i, (w, h) in enumerate([(72, 40), (40, 64)]):
        k = torch.tensor([cams.fx[i, 0], cams.fy[i, 0], cams.cx[i, 0], cams.cy[i, 0]])
        got = torch.stack([framed.fx[i, 0], framed.fy[i, 0], framed.cx[i, 0], framed.cy[i, 0]])
        assert torch.allclose(got, frame_intrinsics(k, w, h, 32))


def test_exporter_eval_and_function_frame_identically(tmp_path: Path) -> None:
    """The same CO3D frame, framed by the exporter (default CO3D parser), by ``itergen eval`` (ground truth it scores
    against) and by ``frame_view`` on the raw photo: the same pixels and intrinsics. The generator's resize of those
    frames (``frame_image`` at its resolution) matches what diffusion training does to snapshot frames."""
    from itergen_ns.diffusion.data import _to_float_images
    from itergen_ns.eval.harness import EvalConfig
    from itergen_ns.snapshots.exporter import ExportSnapshotsConfig
    from itergen_ns.snapshots.format import load_shard

    seq = make_co3d_sequence(tmp_path / "co3d", num_frames=5)  # frames of 4 different sizes, none square but one
    size = CO3DDataParserConfig().frame_size
    raw = CO3DDataParserConfig(data=seq.sequence_dir, frame_size=None).setup().get_dataparser_outputs("all")
    expected, expected_k = [], []
    for i, path in enumerate(raw.image_filenames):
        k = torch.tensor([float(raw.cameras.fx[i]), float(raw.cameras.fy[i]), float(raw.cameras.cx[i]),
                          float(raw.cameras.cy[i])], dtype=torch.float64)  # fmt: skip
        pixels, k_framed = frame_view(np.asarray(Image.open(path).convert("RGB")), k, size)
        expected.append(pixels)
        expected_k.append(k_framed)
    expected = np.stack(expected)
    assert expected.shape == (5, size, size, 3)

    overrides = {"pipeline.datamanager.init_num_points": "200"}
    out = tmp_path / "snapshots"
    report = ExportSnapshotsConfig(
        data=(seq.category_dir,), out=out, max_steps=2, every=2, min_views=1, max_views=1, overrides=overrides
    ).export()
    shard = load_shard(out / "shards" / report.written[0])
    np.testing.assert_array_equal(shard.images, expected)
    np.testing.assert_allclose(shard.intrinsics, torch.stack(expected_k).numpy(), rtol=1e-6, atol=1e-4)

    config = EvalConfig(data=(seq.sequence_dir,), methods=("itergen-splatfacto",), views=(1,), samples=1, steps=2,
                        output_dir=tmp_path / "eval", overrides=overrides)  # fmt: skip
    (result,) = config.run()
    ground_truth = np.load(tmp_path / "eval" / "runs" / seq.sequence_dir.name / "ground_truth.npz")["images"]
    np.testing.assert_array_equal(ground_truth, expected)
    renders = np.load(Path(tmp_path / "eval" / "runs" / seq.sequence_dir.name / "1v" / "itergen-splatfacto-s0" /
                           "frames.npz"))["renders"]  # fmt: skip
    assert renders.shape == expected.shape and json.loads(json.dumps(result["eval_indices"]))

    # the generator's view of a framed frame at its own resolution == diffusion training's resize of snapshot frames
    for res in (32, size):
        ours = frame_image(torch.from_numpy(shard.images[1]).float() / 255, res)
        theirs = _to_float_images(shard.images[1:2], (res, res))[0].permute(1, 2, 0)
        assert torch.allclose(ours, theirs, atol=1e-6)
