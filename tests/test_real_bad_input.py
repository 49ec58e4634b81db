"""Bad input on real data (issue 15): a few real frames of the CO3D apple and the Middlebury temple copied into
tmp_path and corrupted. Each problem -- frames listed but missing, EXIF-rotated images, fewer frames than requested
views, intrinsics that do not fit the image, NaN poses -- must stop ``ns-train`` while the data is parsed, with a
one-line ValueError / FileNotFoundError (subclass) that names the file and the field, before any training step.

Skipped when ``../shared/data`` (next to the repository) is absent.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest
from PIL import Image

from itergen_ns.data.co3d_dataparser import CO3DDataError
from itergen_ns.data.image_checks import (
    ImageOrientationError,
    ImageSizeError,
    InputDataError,
    IntrinsicsError,
    PoseError,
)
from conftest import SHARED

DATA = SHARED / "data"
APPLE_CATEGORY = DATA / "co3d_apple" / "apple"
TEMPLE = DATA / "middlebury_temple"

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        not (APPLE_CATEGORY.is_dir() and TEMPLE.is_dir()),
        reason=f"real captures not found at {DATA} (a fresh clone has none; README 'Real captures' says where to get them)",
    ),
]

APPLE_FRAMES = (7, 25, 85, 128, 162)  # a few real frames (every 5th of the 20 and two more)


# ------------------------------------------------------------------------------------------------ copies of real data
def copy_apple(root: Path, numbers: Sequence[int] = APPLE_FRAMES) -> Path:
    """A CO3D layout ``root/apple/posediffusion_sample`` with only ``numbers``' annotations, images and set list."""
    category = root / "apple"
    (category / "posediffusion_sample" / "images").mkdir(parents=True)
    with gzip.open(APPLE_CATEGORY / "frame_annotations.jgz", "rt") as f:
        records = [r for r in json.load(f) if r["frame_number"] in numbers]
    for record in records:
        shutil.copy(APPLE_CATEGORY.parent / record["image"]["path"], root / record["image"]["path"])
    write_annotations(category, records)
    shutil.copy(APPLE_CATEGORY / "sequence_annotations.jgz", category / "sequence_annotations.jgz")
    (category / "set_lists").mkdir()
    entries = [["posediffusion_sample", r["frame_number"], r["image"]["path"]] for r in records]
    (category / "set_lists" / "set_lists_fewview_dev.json").write_text(json.dumps({"train": [], "test": entries}))
    return category / "posediffusion_sample"


def write_annotations(category: Path, records: List[dict]) -> Path:
    path = category / "frame_annotations.jgz"
    with gzip.open(path, "wt") as f:
        json.dump(records, f)
    return path


def read_annotations(category: Path) -> List[dict]:
    with gzip.open(category / "frame_annotations.jgz", "rt") as f:
        return json.load(f)


def frame(records: List[dict], number: int) -> dict:
    return next(r for r in records if r["frame_number"] == number)


def copy_temple(root: Path, num: int = 6) -> Path:
    """The first ``num`` temple frames (images and transforms.json entries) in ``root/temple``."""
    scene = root / "temple"
    (scene / "images").mkdir(parents=True)
    meta = json.loads((TEMPLE / "transforms.json").read_text())
    meta["frames"] = sorted(meta["frames"], key=lambda f: f["file_path"])[:num]
    for frame in meta["frames"]:
        shutil.copy(TEMPLE / frame["file_path"], scene / frame["file_path"])
    (scene / "transforms.json").write_text(json.dumps(meta))
    return scene


def edit_transforms(scene: Path, edit) -> Path:
    path = scene / "transforms.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))  # json writes NaN as the (Python-readable) literal NaN
    return path


def exif_rotated(path: Path, orientation: int = 6) -> None:
    """Re-save ``path`` with the same pixels and an EXIF Orientation tag (as phones write portrait shots)."""
    with Image.open(path) as im:
        pixels = im.copy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels.save(path, exif=exif, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}))


# ------------------------------------------------------------------------------------------------ the check
def fails_before_training(error, data: Path, tmp_path: Path, views: int = 3, parser=None, **overrides) -> str:
    """Set up ``itergen-splatfacto`` as ``ns-train`` would (the auto parser from --data, or ``parser`` as with the
    ``co3d`` / ``itergen-scene`` subcommands) and expect ``error`` while the data is parsed: the trainer never
    reaches its first step and writes no checkpoint. Returns the message."""
    from itergen_ns.engine.runner import TrainSpec, build_config, train

    spec = TrainSpec(
        method="itergen-splatfacto",
        data=data,
        output_dir=tmp_path / "outputs",
        num_input_views=views,
        steps=5,
        overrides={} if parser is not None else {"pipeline.datamanager.dataparser.frame_size": 64, **overrides},
    )
    config = build_config(spec)
    if parser is not None:
        config.pipeline.datamanager.dataparser = parser
    reached: List[int] = []
    with pytest.raises(error) as info:
        train(config, on_setup=lambda trainer: reached.append(trainer.step))
    assert not reached, "training was set up although the data is bad"
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))
    assert isinstance(info.value, (ValueError, FileNotFoundError))
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, f"not a one-line message: {message!r}"
    return message


# ------------------------------------------------------------------------------------------------ frames listed but missing
def test_co3d_frame_listed_but_missing(tmp_path):
    """A frame the set list lists (the evaluation protocol) whose image is gone is an error naming the set list, the
    frame and the image; without a set list the parser skips the frame with a warning that names the image (a
    partial CO3D download), and the split is drawn from the frames that exist."""
    from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig

    seq = copy_apple(tmp_path)
    gone = seq / "images" / "frame000085.jpg"
    gone.unlink()
    parser = CO3DDataParserConfig(set_list="fewview_dev", frame_size=64)
    msg = fails_before_training(CO3DDataError, seq, tmp_path, parser=parser)
    assert "set_lists_fewview_dev.json" in msg and "frame 85" in msg and str(gone) in msg and "missing" in msg
    with pytest.warns(UserWarning, match=r"skipping 1 frame.*frame000085\.jpg"):
        out = CO3DDataParserConfig(data=seq, num_input_views=0, frame_size=64).setup().get_dataparser_outputs()
    assert out.metadata["co3d_frame_numbers"] == [7, 25, 128, 162]


def test_nerfstudio_frame_listed_but_missing(tmp_path):
    scene = copy_temple(tmp_path)
    (scene / "images" / "templeSR0003.png").unlink()
    msg = fails_before_training(FileNotFoundError, scene, tmp_path)
    assert str(scene / "images" / "templeSR0003.png") in msg and "frames[2].file_path" in msg
    assert str(scene / "transforms.json") in msg


# ------------------------------------------------------------------------------------------------ EXIF rotation
def test_co3d_exif_rotated_image(tmp_path):
    seq = copy_apple(tmp_path)
    exif_rotated(seq / "images" / "frame000025.jpg", 6)
    msg = fails_before_training(CO3DDataError, seq, tmp_path)
    assert str(seq / "images" / "frame000025.jpg") in msg and "EXIF Orientation=6" in msg and "frame 25" in msg
    assert isinstance(CO3DDataError(msg), ValueError)


@pytest.mark.parametrize("orientation", [3, 8])
def test_nerfstudio_exif_rotated_image(tmp_path, orientation):
    scene = copy_temple(tmp_path)
    exif_rotated(scene / "images" / "templeSR0004.png", orientation)
    msg = fails_before_training(ImageOrientationError, scene, tmp_path)
    assert str(scene / "images" / "templeSR0004.png") in msg and f"EXIF Orientation={orientation}" in msg
    assert "frames[3].file_path" in msg


# ------------------------------------------------------------------------------------------------ too few frames
def test_co3d_fewer_frames_than_requested_views(tmp_path):
    seq = copy_apple(tmp_path)  # 5 frames
    msg = fails_before_training(CO3DDataError, seq, tmp_path, views=6)
    assert "num_input_views=6" in msg and "only 5 usable frames" in msg and "frame_annotations.jgz" in msg
    from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig

    msg = fails_before_training(
        CO3DDataError, seq, tmp_path, views=6, parser=CO3DDataParserConfig(set_list="fewview_dev", frame_size=64)
    )
    assert "set list 'fewview_dev'" in msg and "num_input_views=6" in msg


def test_nerfstudio_fewer_frames_than_requested_views(tmp_path):
    scene = copy_temple(tmp_path, num=4)
    msg = fails_before_training(InputDataError, scene, tmp_path, views=6)
    assert str(scene) in msg and "num_input_views=6" in msg and "only 4 frames" in msg and "transforms.json" in msg


# ------------------------------------------------------------------------------------------------ intrinsics vs image size
def test_co3d_image_smaller_than_annotated(tmp_path):
    """Frames downscaled after annotation: image.size (and so the NDC -> pixel intrinsics) no longer fit."""
    seq = copy_apple(tmp_path)
    path = seq / "images" / "frame000128.jpg"
    with Image.open(path) as im:
        im.resize((144, 256)).save(path, quality=95)
    msg = fails_before_training(CO3DDataError, seq, tmp_path)
    assert str(path) in msg and "is 144x256 (W x H)" in msg and "image.size" in msg and "288x512" in msg


def test_co3d_principal_point_outside_image(tmp_path):
    seq = copy_apple(tmp_path)
    records = read_annotations(seq.parent)
    frame(records, 25)["viewpoint"]["principal_point"] = [0.0, 2.0]  # NDC: c_y = 256 - 2.0 * 144 = -32 px
    write_annotations(seq.parent, records)
    msg = fails_before_training(CO3DDataError, seq, tmp_path)
    assert "frame_annotations.jgz" in msg and "frame 25" in msg and "principal_point" in msg and "outside" in msg


def test_nerfstudio_images_downscaled_but_transforms_not(tmp_path):
    scene = copy_temple(tmp_path)
    path = scene / "images" / "templeSR0002.png"
    with Image.open(path) as im:
        im.resize((240, 320)).save(path)
    msg = fails_before_training(ImageSizeError, scene, tmp_path)
    assert str(path) in msg and "is 240x320 (W x H)" in msg and "w, h (top level) says 480x640" in msg
    assert "frames[1].file_path" in msg


def test_nerfstudio_principal_point_outside_image(tmp_path):
    scene = copy_temple(tmp_path)
    path = edit_transforms(scene, lambda meta: meta["frames"][4].update(cx=2 * 246.87))  # for a 960 px wide image
    msg = fails_before_training(IntrinsicsError, scene, tmp_path)
    assert str(path) in msg and "frames[4]" in msg and "(cx, cy)" in msg and "480x640" in msg


# ------------------------------------------------------------------------------------------------ NaN poses
def test_nerfstudio_nan_pose(tmp_path):
    scene = copy_temple(tmp_path)

    def poison(meta):
        meta["frames"][2]["transform_matrix"][1][3] = math.nan

    path = edit_transforms(scene, poison)
    assert "NaN" in path.read_text()
    msg = fails_before_training(PoseError, scene, tmp_path)
    assert str(path) in msg and "frames[2]" in msg and "transform_matrix" in msg and "nan" in msg.lower()


def test_co3d_nan_pose(tmp_path):
    seq = copy_apple(tmp_path)
    records = read_annotations(seq.parent)
    frame(records, 128)["viewpoint"]["T"][2] = math.nan
    write_annotations(seq.parent, records)
    msg = fails_before_training(CO3DDataError, seq, tmp_path)
    assert "frame_annotations.jgz" in msg and "frame 128" in msg and "viewpoint.T" in msg and "non-finite" in msg


# ------------------------------------------------------------------------------------------------ what ns-train prints
def test_ns_train_ends_with_the_one_line_error(tmp_path):
    """The real command: `ns-train` stops during set-up and its last output line is the error naming file and field."""
    scene = copy_temple(tmp_path)
    edit_transforms(scene, lambda meta: meta["frames"][0]["transform_matrix"][0].__setitem__(0, math.inf))
    ns_train = Path(sys.executable).parent / "ns-train"
    if not ns_train.exists():
        pytest.skip(f"{ns_train} not installed")
    cmd = [
        str(ns_train),
        "itergen-splatfacto",
        "--data",
        str(scene),
        "--max-num-iterations",
        "5",
        "--vis",
        "tensorboard",
        "--viewer.quit-on-train-completion",
        "True",
        "--output-dir",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("itergen_ns.data.image_checks.PoseError: ") or last.startswith("PoseError: "), last
    assert str(scene / "transforms.json") in last and "frames[0]" in last and "transform_matrix" in last
    assert not list((tmp_path / "o").rglob("*.ckpt"))
