"""Beyond one process (issue 17), on CPU: the diffusion trainer under ``accelerate launch --num_processes 2`` (gloo:
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2``),
and ``itergen export-snapshots --shard i/n`` run by two processes at once into one snapshot root.

Diffusion: two synthetic 12-frame shards at 24 px, the tiny model at 4 frames, 8 steps at a global batch of 2
clips (``--global-batch-size 2``: 1 process accumulates 2 micro-steps of 1 clip, 2 processes take 1 clip each).
Micro-batch m of process p is slot m * N + p of the step and its clip and noise depend on the slot only, and the
gradient average of 2 clips is the same sum either way, so the loss curves agree; measured: bit-identical
(max |diff| 0). The test allows 1e-5 relative (float reduction order of gloo's all-reduce may differ elsewhere).

Export: 2 procedural scenes of 12 frames at 32 px, 40 splatfacto steps from 300 points, a snapshot every 20.
Torch runs single-threaded everywhere (fixed float reduction order: exported bytes are reproducible).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from conftest import tiny_scenes
from shard_fixture import make_shard
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.train import TrainDiffusionConfig, accumulation_steps, train
from itergen_ns.snapshots.exporter import ExportSnapshotsConfig, shard_name
from itergen_ns.snapshots.format import ShardWriter, ensure_format, list_shards, load_shard, remove_stale_temporaries

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BIN = Path(sys.executable).parent
STEPS, CKPT_EVERY, GLOBAL_BATCH = 8, 4, 2
LOSS_RTOL = 1e-5
DIFFUSION_ARGS = dict(
    model="tiny", max_steps=STEPS, global_batch_size=GLOBAL_BATCH, learning_rate=1e-3, lr_warmup_steps=2,
    checkpoint_every=CKPT_EVERY, validate_every=0, log_every=1, vae_fit_steps=0, progress=False,
    model_overrides={"num_frames": 4},
)  # fmt: skip
EXPORT_STEPS, EXPORT_EVERY = 40, 20
EXPORT_OVERRIDES = ["--overrides", "pipeline.datamanager.init_num_points", "300"]


def cli_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                COLUMNS="200")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def diffusion_cli_args(data: Path, out: Path, **extra) -> list:
    """`itergen train-diffusion` arguments equal to TrainDiffusionConfig(**DIFFUSION_ARGS, **extra)."""
    args = ["train-diffusion", "--data", data, "--output-dir", out]
    for key, value in {**DIFFUSION_ARGS, **extra}.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            args += [flag] + [str(x) for kv in value.items() for x in kv]
        else:
            args += [flag, value]
    return [str(a) for a in args]


def loss_curve(out: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve = {}
    for run in sorted((out / "logs").iterdir()):
        events = EventAccumulator(str(run))
        events.Reload()
        curve.update({e.step: e.value for e in events.Scalars("train/loss")})
    return curve


def max_param_diff(a: Path, b: Path) -> float:
    ma, mb = IterGenDiffusionModel.from_pretrained(a), IterGenDiffusionModel.from_pretrained(b)
    sa, sb = ma.denoiser.state_dict(), mb.denoiser.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if sa[k].numel())


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("snapshots")
    make_shard(root, "scene_a", seed=0)
    make_shard(root, "scene_b", seed=1)
    return root


@pytest.fixture(scope="module")
def two_process_run(snapshots, tmp_path_factory) -> dict:
    """The same training, once in this process and once by `accelerate launch --cpu --num_processes 2`."""
    base = tmp_path_factory.mktemp("multiprocess")
    one = train(TrainDiffusionConfig(data=snapshots, output_dir=base / "one", **DIFFUSION_ARGS))
    # accelerate 1.16 on a machine without GPUs: `--cpu` runs ONE process whatever --num_processes says, and
    # `--multi_gpu` starts 2 processes that each train alone unless ACCELERATE_USE_CPU=true selects gloo (MULTI_CPU)
    launch = [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              BIN / "itergen"]  # fmt: skip
    start = time.time()
    proc = subprocess.run(
        [str(a) for a in launch] + diffusion_cli_args(snapshots, base / "two"),
        env=dict(cli_env(), ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    return {"one": one, "two": base / "two", "proc": proc, "seconds": time.time() - start, "base": base}


def test_two_processes_give_the_one_process_loss_curve(two_process_run) -> None:
    proc = two_process_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = two_process_run["two"]
    # really two processes: accelerate saved one RNG state per process
    ckpt = two / "checkpoints" / f"step_{STEPS:08d}"
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == STEPS
    one = two_process_run["one"].losses
    curve = loss_curve(two)
    assert sorted(curve) == sorted(one) == list(range(1, STEPS + 1))
    diffs = [abs(curve[s] - one[s]) / abs(one[s]) for s in one]
    print(f"1 vs 2 processes: max relative loss difference {max(diffs):.3g} over {STEPS} steps")
    assert max(diffs) <= LOSS_RTOL, (one, curve)
    assert one[STEPS] < one[1]  # it trains
    # the exported EMA models agree as well
    assert max_param_diff(two_process_run["base"] / "one" / "latest", two / "latest") <= 1e-5


def test_two_process_checkpoint_resumes_in_one_process(two_process_run, snapshots) -> None:
    """The 2-process checkpoint at step 4 loads in one process and continues the 1-process run's curve."""
    assert two_process_run["proc"].returncode == 0
    base, two = two_process_run["base"], two_process_run["two"]
    model = IterGenDiffusionModel.from_pretrained(two / "latest")  # what itergen loads
    assert model.num_frames == 4
    ckpt = two / "checkpoints" / f"step_{CKPT_EVERY:08d}"
    resumed = train(
        TrainDiffusionConfig(data=snapshots, output_dir=base / "resumed", resume=str(ckpt), **DIFFUSION_ARGS)
    )
    one = two_process_run["one"].losses
    assert sorted(resumed.losses) == list(range(CKPT_EVERY + 1, STEPS + 1))
    diffs = [abs(resumed.losses[s] - one[s]) / abs(one[s]) for s in resumed.losses]
    print(f"2-process checkpoint resumed in 1 process: max relative loss difference {max(diffs):.3g}")
    assert max(diffs) <= LOSS_RTOL, (one, resumed.losses)
    assert max_param_diff(base / "one" / "latest", base / "resumed" / "latest") <= 1e-5


def test_global_batch_size_sets_accumulation_from_the_process_count(snapshots) -> None:
    cfg = TrainDiffusionConfig(data=snapshots, batch_size=2, global_batch_size=8)
    assert [accumulation_steps(cfg, n) for n in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ValueError, match="not a multiple of --batch-size 2 x 3"):
        accumulation_steps(cfg, 3)
    assert accumulation_steps(TrainDiffusionConfig(data=snapshots, gradient_accumulation_steps=3), 2) == 3


# --- export-snapshots --shard i/n: two processes, one root -----------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return tiny_scenes(tmp_path_factory.mktemp("scenes"), 2, seed=5, num_frames=12, size=32)


def test_concurrent_shard_parts_export_every_scene_exactly_once(scenes, tmp_path) -> None:
    out = tmp_path / "snapshots"
    args = ["export-snapshots", "--data", scenes, "--out", out, "--every", EXPORT_EVERY, "--max-steps", EXPORT_STEPS]
    procs = [
        subprocess.Popen([str(a) for a in [BIN / "itergen", *args, "--shard", f"{i}/2", *EXPORT_OVERRIDES]],
                         env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    for log in logs:  # each process wrote its own scene, none found the other's
        assert "1 shard(s) written, 0 already finished, 0 failed" in log, log[-2000:]
    expected = sorted(shard_name(scenes / s, 0) for s in ("scene_0000", "scene_0001"))
    assert [p.name for p in list_shards(out, strict=True)] == expected
    assert sorted(p.name for p in (out / "shards").iterdir()) == expected  # no temporaries left
    assert not any((out / "runs").iterdir())
    # nothing clobbered: each shard is byte-identical to a single-process export of its scene
    ref_out = tmp_path / "reference"
    ExportSnapshotsConfig(data=(scenes,), out=ref_out, every=EXPORT_EVERY, max_steps=EXPORT_STEPS,
                          overrides={"pipeline.datamanager.init_num_points": "300"}).export()  # fmt: skip
    for name in expected:
        got, ref = load_shard(out / "shards" / name), load_shard(ref_out / "shards" / name)
        assert got.meta["scene"] == ref.meta["scene"] and got.meta["seed"] == ref.meta["seed"]
        for key in ("images", "c2w", "intrinsics", "input_indices", "steps", "renders"):
            assert np.array_equal(getattr(got, key), getattr(ref, key)), (name, key)


HOLD_WRITER = """
import sys, time
from itergen_ns.snapshots.format import ShardWriter
writer = ShardWriter(sys.argv[1], sys.argv[2]).__enter__()
print(writer.tmp, flush=True)
time.sleep(120)
"""


def test_cleanup_spares_a_live_writers_shard_and_a_second_commit_is_refused(tmp_path) -> None:
    """Overlapping exports into one root (e.g. the same --shard twice): a live writer's temporary is never
    deleted by another process's clean-up, and the later of two commits of one shard is refused."""
    root = tmp_path / "snap"
    ensure_format(root)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, str(root), "a__run00"], stdout=subprocess.PIPE,
                              text=True, env=cli_env())  # fmt: skip
    try:
        live = Path(holder.stdout.readline().strip())
        assert live.is_dir()
        dead = root / "shards" / ".tmp-a__run00-999999"  # what a SIGKILLed writer leaves
        dead.mkdir()
        assert remove_stale_temporaries(root, ["a__run00"]) == 1
        assert live.is_dir() and not dead.exists()
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale_temporaries(root, ["a__run00"]) == 1 and not live.exists()  # its lock died with it

    first, second = ShardWriter(root, "b__run00"), ShardWriter(root, "b__run00")
    second.tmp = second.tmp.with_name(second.tmp.name + "0")  # another process's temporary
    arrays = {"images": np.zeros((2, 4, 4, 3), np.uint8), "c2w": np.zeros((2, 3, 4), np.float32),
              "intrinsics": np.ones((2, 4), np.float32), "input_indices": np.zeros(1, np.int64),
              "steps": np.zeros(1, np.int64), "renders": np.zeros((1, 2, 4, 4, 3), np.uint8)}  # fmt: skip
    with first, second:
        for writer, value in ((first, 1), (second, 2)):
            for key, arr in arrays.items():
                writer.save(key, arr + value if key == "renders" else arr)
        first.commit({"scene": "b"})
        with pytest.raises(FileExistsError, match="another export"):
            second.commit({"scene": "b"})
    shard = load_shard(root / "shards" / "b__run00")
    assert int(shard.renders.max()) == 1  # the first shard, untouched
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["b__run00"]
