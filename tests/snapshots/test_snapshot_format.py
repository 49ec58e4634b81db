"""Tests of the snapshot shard format (itergen_ns.snapshots.format): round trip, atomicity, corrupt shards, versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from itergen_ns.snapshots.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ShardMeta,
    ShardWriter,
    ensure_format,
    list_shards,
    load_shard,
    payload_bytes,
    remove_stale_temporaries,
    shard_exists,
    summarize,
    write_shard,
)

F, H, W, S, C = 5, 6, 8, 3, 2


def _arrays(seed: int = 0, latents: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "images": rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8),
        "c2w": rng.normal(size=(F, 3, 4)).astype(np.float32),
        "intrinsics": rng.uniform(1, 10, size=(F, 4)).astype(np.float32),
        "input_indices": np.array([1, 3], dtype=np.int64),
        "steps": np.array([0, 10, 20], dtype=np.int64),
        "renders": rng.integers(0, 256, (S, F, H, W, 3), dtype=np.uint8),
        "masks": rng.integers(0, 2, (F, H, W), dtype=np.uint8) * 255,
    }
    if latents:
        arrays["render_latents"] = rng.normal(size=(S, F, 4, H // 2, W // 2)).astype(np.float16)
    return arrays


def test_round_trip_keeps_arrays_dtypes_and_meta(tmp_path: Path) -> None:
    arrays = _arrays(latents=True)
    path = write_shard(tmp_path, "scene_a__run00", arrays, {"scene": "scene_a", "num_frames": F, "steps": [0, 10, 20]})
    assert path == tmp_path / "shards" / "scene_a__run00"
    assert json.loads((tmp_path / "format.json").read_text()) == {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    shard = load_shard(path)
    for key, arr in arrays.items():
        loaded = getattr(shard, key)
        assert loaded.dtype == arr.dtype, key
        np.testing.assert_array_equal(loaded, arr, err_msg=key)
    assert shard.num_frames == F
    assert shard.meta["scene"] == "scene_a" and shard.meta["format_version"] == FORMAT_VERSION
    assert shard.meta["bytes"] == sum(a.nbytes for a in arrays.values())
    assert isinstance(shard.renders, np.memmap)  # large stacks are memory-mapped, not read
    assert shard_exists(tmp_path, "scene_a__run00") and not shard_exists(tmp_path, "other")


def test_shard_meta_round_trips_and_tolerates_partial_metadata(tmp_path: Path) -> None:
    meta = ShardMeta(scene="c_s", run=1, num_frames=4, steps=[0, 20], input_indices=[0, 2], has_masks=False)
    shard = load_shard(write_shard(tmp_path, "c_s__run01", _arrays(), meta))
    info = shard.info
    assert (info.scene, info.run, info.steps, info.input_indices) == ("c_s", 1, [0, 20], [0, 2])
    assert info.name == "c_s__run01" and info.format_version == FORMAT_VERSION and info.bytes > 0
    assert ShardMeta.from_dict({"scene": "x", "unknown_key": 1}) == ShardMeta(scene="x")  # other tools' shards
    assert [s.scene for s in summarize(tmp_path)] == ["c_s"]


def test_optional_arrays_may_be_absent(tmp_path: Path) -> None:
    arrays = _arrays()
    del arrays["masks"]
    shard = load_shard(write_shard(tmp_path, "s", arrays, {}))
    assert shard.masks is None and shard.render_latents is None


def test_writer_leaves_nothing_on_error_or_without_commit(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, "s") as writer:
            writer.save("images", _arrays()["images"])
            writer.open("renders", (S, F, H, W, 3), np.uint8)
            raise RuntimeError("boom")
    with ShardWriter(tmp_path, "t") as writer:  # left without commit()
        writer.save("images", _arrays()["images"])
    assert list((tmp_path / "shards").iterdir()) == []


def test_commit_requires_every_required_array(tmp_path: Path) -> None:
    arrays = _arrays()
    del arrays["steps"]
    with pytest.raises(ValueError, match="missing arrays \\['steps'\\]"):
        write_shard(tmp_path, "s", arrays, {})
    assert list((tmp_path / "shards").iterdir()) == []


def test_existing_shard_is_not_overwritten(tmp_path: Path) -> None:
    write_shard(tmp_path, "s", _arrays(0), {})
    with pytest.raises(FileExistsError):
        write_shard(tmp_path, "s", _arrays(1), {})
    np.testing.assert_array_equal(load_shard(tmp_path / "shards" / "s").images, _arrays(0)["images"])


def test_list_shards_skips_corrupt_shards_with_warnings(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        write_shard(tmp_path, name, _arrays(), {"scene": name})
    (tmp_path / "shards" / "b" / "meta.json").write_text("{not json")
    (tmp_path / "shards" / "c" / "renders.npy").unlink()
    (tmp_path / "shards" / "d" / "meta.json").unlink()
    (tmp_path / "shards" / ".tmp-e-123").mkdir()  # an export in flight: not a shard, not a warning
    with pytest.warns(UserWarning) as record:
        found = list_shards(tmp_path)
    assert [p.name for p in found] == ["a"]
    messages = "\n".join(str(w.message) for w in record)
    assert "b: meta.json is not valid JSON" in messages
    assert "c: missing renders.npy" in messages
    assert "d: no meta.json" in messages
    assert len(record) == 3
    with pytest.raises(ValueError, match="not valid JSON"):
        list_shards(tmp_path, strict=True)


def test_version_mismatch_is_an_error(tmp_path: Path) -> None:
    write_shard(tmp_path, "s", _arrays(), {})
    (tmp_path / "format.json").write_text(json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=f"version {FORMAT_VERSION + 1}.*expected.*version {FORMAT_VERSION}"):
        ensure_format(tmp_path)
    with pytest.raises(ValueError, match="version"):
        list_shards(tmp_path)
    with pytest.raises(ValueError, match="version"):
        write_shard(tmp_path, "t", _arrays(), {})


def test_shard_with_other_version_is_rejected_by_load_shard(tmp_path: Path) -> None:
    path = write_shard(tmp_path, "s", _arrays(), {})
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(dict(meta, format_version=FORMAT_VERSION + 1)))
    with pytest.raises(ValueError, match="format_version"):
        load_shard(path)
    with pytest.warns(UserWarning, match="format_version"):
        assert list_shards(tmp_path) == []


@pytest.mark.parametrize(
    "key, bad, match",
    [
        ("renders", np.zeros((S, F, H, W + 1, 3), np.uint8), "renders.npy: shape"),
        ("c2w", np.zeros((F, 4, 4), np.float32), "c2w.npy: shape"),
        ("input_indices", np.array([0, F], np.int64), "input_indices.npy"),
        ("masks", np.zeros((F, H, W + 1), np.uint8), "masks.npy: shape"),
        ("render_latents", np.zeros((S + 1, F, 4, 3, 4), np.float16), "render_latents.npy: shape"),
    ],
)
def test_load_shard_names_the_inconsistent_file(tmp_path: Path, key: str, bad: np.ndarray, match: str) -> None:
    arrays = _arrays()
    arrays[key] = bad
    path = write_shard(tmp_path, "s", arrays, {})
    with pytest.raises(ValueError, match=match):
        load_shard(path)


def test_remove_stale_temporaries_only_touches_named_shards(tmp_path: Path) -> None:
    ensure_format(tmp_path)
    shards = tmp_path / "shards"
    for name in (".tmp-a__run00-11", ".tmp-a__run00-12", ".tmp-b__run00-13", ".tmp-a__run001-14"):
        (shards / name).mkdir(parents=True)
    assert remove_stale_temporaries(tmp_path, ["a__run00"]) == 2
    assert sorted(p.name for p in shards.iterdir()) == [".tmp-a__run001-14", ".tmp-b__run00-13"]
    assert remove_stale_temporaries(tmp_path) == 2
    assert list(shards.iterdir()) == []


def test_summarize_reports_scenes_snapshots_and_disk_bytes(tmp_path: Path) -> None:
    write_shard(tmp_path, "x__run00", _arrays(), {"scene": "x", "num_frames": F, "steps": [0, 10, 20]})
    write_shard(tmp_path, "x__run01", _arrays(), {"scene": "x", "num_frames": F, "steps": [0, 10, 20]})
    rows = summarize(tmp_path)
    assert [(r.name, r.scene, r.frames, r.snapshots) for r in rows] == [
        ("x__run00", "x", F, S),
        ("x__run01", "x", F, S),
    ]
    disk = sum(f.stat().st_size for f in (tmp_path / "shards" / "x__run00").iterdir())
    assert rows[0].bytes == disk
    assert rows[0].bytes > sum(a.nbytes for a in _arrays().values())  # .npy headers + meta.json on top


def test_list_shards_requires_a_snapshot_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="format.json: missing"):
        list_shards(tmp_path)


@pytest.mark.parametrize("masks, latents", [(False, False), (True, False), (True, True)])
def test_payload_bytes_matches_a_written_shard(tmp_path: Path, masks: bool, latents: bool) -> None:
    arrays = _arrays(latents=latents)
    if not masks:
        del arrays["masks"]
    meta = json.loads((write_shard(tmp_path, "s", arrays, {}) / "meta.json").read_text())
    latent_shape = (4, H // 2, W // 2) if latents else None
    assert payload_bytes(F, H, W, S, C, masks=masks, latent_shape=latent_shape) == meta["bytes"]
