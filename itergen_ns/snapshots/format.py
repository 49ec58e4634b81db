"""On-disk format of snapshot data (docs/architecture.md, "Snapshots"): the one reader/writer shared by the exporter and the trainer.

Layout of a snapshot root::

    ROOT/format.json                    {"format": "itergen-snapshots", "version": 1}
    ROOT/shards/<name>/meta.json        scene, run, seed, sizes, steps ... (written last)
    ROOT/shards/<name>/images.npy       uint8   [F, H, W, 3]  ground-truth frames
    ROOT/shards/<name>/c2w.npy          float32 [F, 3, 4]     nerfstudio OpenGL camera-to-world
    ROOT/shards/<name>/intrinsics.npy   float32 [F, 4]        fx, fy, cx, cy in pixels of (H, W)
    ROOT/shards/<name>/input_indices.npy int64  [C]           frames the splatfacto run trained on
    ROOT/shards/<name>/steps.npy        int64   [S]           snapshot steps
    ROOT/shards/<name>/renders.npy      uint8   [S, F, H, W, 3] renders of the run at every frame
    ROOT/shards/<name>/masks.npy        uint8   [F, H, W]     optional foreground masks (255 = object)
    ROOT/shards/<name>/render_latents.npy float16 [S, F, 4, h, w] optional VAE latents of the renders
    ROOT/shards/<name>/depths.npy       float16 [S, F, H, W]  optional render depth (view-axis distance; 0 = no
                                                              surface: accumulated opacity < 0.5)

A shard directory is assembled under a hidden temporary name and renamed into place, so a shard either
exists whole or not at all; ``.npy`` files are memory-mapped when read so large shards stay cheap. The writer
holds an advisory lock (flock) on its temporary directory until it is done, so cleaning up after a killed
export never deletes the temporary of a writer that is still running (the kernel drops a dead process's lock).

This module is the format's public face: import from here. The parts live in ``format_schema`` (constants,
``meta.json`` fields, paths), ``format_writer`` (atomic writing, clean-up) and ``format_reader`` (loading, listing,
checks).
"""

from __future__ import annotations

from itergen_ns.snapshots.format_reader import ShardSummary, SnapshotShard, list_shards, load_shard, summarize
from itergen_ns.snapshots.format_schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    OPTIONAL_ARRAYS,
    REQUIRED_ARRAYS,
    ShardMeta,
    ensure_format,
    payload_bytes,
    shard_dir,
    shard_exists,
)
from itergen_ns.snapshots.format_writer import ShardWriter, remove_stale_temporaries, write_shard

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "OPTIONAL_ARRAYS",
    "REQUIRED_ARRAYS",
    "ShardMeta",
    "ShardSummary",
    "ShardWriter",
    "SnapshotShard",
    "ensure_format",
    "list_shards",
    "load_shard",
    "payload_bytes",
    "remove_stale_temporaries",
    "shard_dir",
    "shard_exists",
    "summarize",
    "write_shard",
]
