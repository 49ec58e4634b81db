"""Tests of the sparse-view nerfstudio dataparser (itergen_ns.data.sparse_dataparser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from itergen_ns.data.sparse_dataparser import SparseNerfstudio, SparseNerfstudioDataParserConfig

from nerfstudio_fixture import NUM, write_dataset


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "scene")


def _parse(data: Path, **kwargs):
    parser = SparseNerfstudioDataParserConfig(data=data, **kwargs).setup()
    assert isinstance(parser, SparseNerfstudio)
    return parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("val"), parser


def _frame_ids(outputs) -> list:
    return [int(p.stem.split("_")[1]) for p in outputs.image_filenames]


def test_splits_disjoint_and_cover(dataset: Path) -> None:
    train, val, _ = _parse(dataset, num_input_views=3, input_view_seed=4, use_masks=True)
    assert len(train.image_filenames) == 3 and len(val.image_filenames) == NUM - 3
    assert not set(train.image_filenames) & set(val.image_filenames)
    assert sorted(_frame_ids(train) + _frame_ids(val)) == list(range(NUM))
    assert train.metadata["input_view_indices"] == _frame_ids(train)
    assert val.metadata["eval_view_indices"] == _frame_ids(val) == val.metadata["split_indices"]
    assert train.cameras.shape == (3,) and val.cameras.shape == (NUM - 3,)
    # masks follow their images
    assert [m.stem for m in train.mask_filenames] == [p.stem for p in train.image_filenames]
    assert [m.parent.name for m in val.mask_filenames] == ["masks"] * (NUM - 3)


def test_split_is_deterministic_from_seed(dataset: Path) -> None:
    a = _frame_ids(_parse(dataset, num_input_views=4, input_view_seed=1)[0])
    b = _frame_ids(_parse(dataset, num_input_views=4, input_view_seed=1)[0])
    assert a == b
    others = {tuple(_frame_ids(_parse(dataset, num_input_views=4, input_view_seed=s)[0])) for s in range(2, 6)}
    assert len(others | {tuple(a)}) > 1


def test_explicit_input_views(dataset: Path) -> None:
    train, val, _ = _parse(dataset, num_input_views=1, input_views=(7, 0, 13))
    assert _frame_ids(train) == [0, 7, 13]
    assert 7 not in _frame_ids(val) and len(val.image_filenames) == NUM - 3
    with pytest.raises(ValueError, match="outside"):
        _parse(dataset, input_views=(0, NUM))


def test_zero_views_means_all(dataset: Path) -> None:
    train, val, _ = _parse(dataset, num_input_views=0)
    assert _frame_ids(train) == _frame_ids(val) == list(range(NUM))


def test_transform_shared_by_splits_and_from_inputs(dataset: Path) -> None:
    """Every split (and split="all") has the transform computed from the inputs; it maps back to the raw poses."""
    from nerfstudio.data.dataparsers.base_dataparser import transform_poses_to_original_space

    meta = json.loads((dataset / "transforms.json").read_text())
    raw = {f["file_path"]: torch.tensor(f["transform_matrix"], dtype=torch.float32)[:3] for f in meta["frames"]}
    for n in (1, 5):
        train, val, parser = _parse(dataset, num_input_views=n, input_view_seed=2)
        every = parser.get_dataparser_outputs("all")
        assert _frame_ids(every) == list(range(NUM))
        for out in (train, val):
            assert torch.equal(out.dataparser_transform, every.dataparser_transform)
            assert out.dataparser_scale == every.dataparser_scale
            idx = torch.tensor(out.metadata["split_indices"])
            assert torch.equal(out.cameras.camera_to_worlds, every.cameras.camera_to_worlds[idx])
        c2w = train.cameras.camera_to_worlds.double()
        # the input cameras are at distance 1 from the centre, which is where their axes meet
        assert torch.allclose(c2w[:, :, 3].norm(dim=-1).median(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5)
        back = transform_poses_to_original_space(
            every.cameras.camera_to_worlds, every.dataparser_transform, every.dataparser_scale, "opengl"
        )
        expected = torch.stack([raw[f"images/{p.name}"] for p in every.image_filenames])
        assert torch.allclose(back, expected, atol=1e-4)
    # with one input the camera looks at the new origin from distance 1, with its own up vector tilted to +z
    one = _parse(dataset, num_input_views=1, input_view_seed=2)[0].cameras.camera_to_worlds[0].double()
    assert torch.allclose(one[:, 3].norm(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(-one[:, 2], -one[:, 3] / one[:, 3].norm(), atol=1e-6)
    assert torch.allclose(one[:, 1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-6)


def test_orientation_override_rejected(dataset: Path) -> None:
    meta = json.loads((dataset / "transforms.json").read_text())
    meta["orientation_override"] = "up"
    (dataset / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="orientation_override.*all frames"):
        _parse(dataset)


def test_masks_can_be_turned_off(dataset: Path) -> None:
    train, val, _ = _parse(dataset, num_input_views=2)  # off by default: full images train and evaluate
    assert train.mask_filenames is None and val.mask_filenames is None


def test_missing_transforms(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="transforms.json"):
        _parse(tmp_path)


def test_corrupt_json(dataset: Path) -> None:
    (dataset / "transforms.json").write_text('{"frames": [')
    with pytest.raises(ValueError, match=r"transforms\.json.*not valid JSON"):
        _parse(dataset)


def test_missing_image_and_mask(dataset: Path) -> None:
    (dataset / "images/frame_00004.png").unlink()
    with pytest.raises(FileNotFoundError, match="frame_00004.png"):
        _parse(dataset)
    write_dataset(dataset.parent / "other")
    (dataset.parent / "other/masks/frame_00002.png").unlink()
    _parse(dataset.parent / "other")  # masks are opt-in: a missing mask only matters with use_masks
    with pytest.raises(FileNotFoundError, match=r"masks/frame_00002\.png.*mask_path"):
        _parse(dataset.parent / "other", use_masks=True)


def test_malformed_frames(dataset: Path) -> None:
    meta = json.loads((dataset / "transforms.json").read_text())
    meta["frames"][3]["transform_matrix"] = [[1, 0, 0]]
    (dataset / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"frames\[3\]\.transform_matrix"):
        _parse(dataset)
    (dataset / "transforms.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(ValueError, match="non-empty 'frames'"):
        _parse(dataset)


def test_unknown_split(dataset: Path) -> None:
    parser = SparseNerfstudioDataParserConfig(data=dataset).setup()
    with pytest.raises(ValueError, match="split"):
        parser.get_dataparser_outputs("holdout")


def test_tyro_cli(dataset: Path) -> None:
    import tyro

    config = tyro.cli(
        SparseNerfstudioDataParserConfig,
        args=["--data", str(dataset), "--num-input-views", "2", "--input-views", "3", "1"],
    )
    train = config.setup().get_dataparser_outputs("train")
    assert _frame_ids(train) == [1, 3]
