"""Kill -9 anywhere (issue 17): SIGKILL the real commands at seeded random points, rerun the same command, and check
that no corrupt shard/checkpoint is ever visible, that the rerun resumes (finished shards, steps and eval runs are
not redone) and that the final outputs equal an uninterrupted run's, bit for bit (CPU, one torch thread).

Kill points: each kill waits for an event of the run being killed (a shard temporary of that process appears; a
new checkpoint appears; the eval stage starts), then a delay drawn from ``np.random.default_rng(seed)``, so the
kills land before, inside and after shard writes, checkpoint saves and eval runs. A run that finishes before its
kill time counts as not killed (the test still checks its outputs).

Also `ns-train itergen-splatfacto` killed right after a checkpoint and resumed with ``--load-dir`` from its last
checkpoint: nerfstudio does not save its RNG states (image order, densification noise), so that resume is not
bit-exact; the test checks the step count of every optimiser and the rendered PSNR (within 1 dB).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from conftest import tiny_scenes
from shard_fixture import make_shard
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.train import TrainDiffusionConfig, train
from itergen_ns.snapshots.exporter import ExportSnapshotsConfig, shard_name
from itergen_ns.snapshots.format import list_shards, load_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BIN = Path(sys.executable).parent
EXPORT_STEPS, EXPORT_EVERY, POINTS = 40, 20, 300
SHARD_ARRAYS = ("images", "c2w", "intrinsics", "input_indices", "steps", "renders", "masks")


def cli_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                PYTHONUNBUFFERED="1", COLUMNS="200")  # fmt: skip


def kill_at(cmd: list, log: Path, trigger: Callable[[int], bool], delay: float, timeout: float = 300) -> bool:
    """Run ``cmd``; once ``trigger(pid)`` holds, wait ``delay`` s and SIGKILL it. False if it exited first."""
    with open(log, "w") as f:
        proc = subprocess.Popen([str(c) for c in cmd], env=cli_env(), stdout=f, stderr=subprocess.STDOUT)
    start = time.time()
    try:
        while not trigger(proc.pid):
            if proc.poll() is not None:
                return False
            assert time.time() - start < timeout, f"{cmd[:2]}: trigger never fired"
            time.sleep(0.05)
        end = time.time() + delay
        while time.time() < end:
            if proc.poll() is not None:
                return False
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        return True
    finally:
        proc.wait(timeout=60)


def run_to_end(cmd: list, log: Path, timeout: float = 400) -> str:
    proc = subprocess.run([str(c) for c in cmd], env=cli_env(), capture_output=True, text=True, timeout=timeout)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


# --- itergen export-snapshots ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return tiny_scenes(tmp_path_factory.mktemp("scenes"), 2, seed=5, num_frames=12, size=32)


def visible_shards(out: Path) -> Dict[str, tuple]:
    """Every visible shard loads completely (strict listing, every array read); name -> stamp of meta.json."""
    if not (out / "format.json").exists():
        return {}
    found = {}
    for path in list_shards(out, strict=True):
        shard = load_shard(path)
        for key in SHARD_ARRAYS:
            arr = getattr(shard, key)
            if arr is not None:
                np.asarray(arr).sum()  # reads every byte
        found[path.name] = stamp(path / "meta.json")
    return found


@pytest.mark.parametrize("seed", [3])
def test_export_snapshots_survives_sigkill(scenes, tmp_path, seed) -> None:
    out = tmp_path / "snapshots"
    cmd = [BIN / "itergen", "export-snapshots", "--data", scenes, "--out", out, "--every", EXPORT_EVERY,
           "--max-steps", EXPORT_STEPS, "--overrides", "pipeline.datamanager.init_num_points", POINTS]  # fmt: skip
    rng = np.random.default_rng(seed)

    def shard_in_flight(pid: int) -> bool:  # this process is writing a shard
        shards = out / "shards"
        return shards.is_dir() and any(p.name.endswith(f"-{pid}") for p in shards.iterdir())

    kills, done = 0, {}
    for k in range(3):
        killed = kill_at(cmd, tmp_path / f"kill{k}.log", shard_in_flight, float(rng.uniform(0, 10)))
        kills += killed
        now = visible_shards(out)
        assert all(now[name] == st for name, st in done.items())  # finished shards are never rewritten
        done = now
    assert kills >= 2, "the runs finished before their kill times"
    log = run_to_end(cmd, tmp_path / "final.log")
    assert f"{2 - len(done)} shard(s) written, {len(done)} already finished, 0 failed" in log
    final = visible_shards(out)
    assert all(final[name] == st for name, st in done.items())  # the rerun did not redo them
    names = sorted(shard_name(scenes / s, 0) for s in ("scene_0000", "scene_0001"))
    assert sorted(final) == names
    assert sorted(p.name for p in (out / "shards").iterdir()) == names  # no temporaries left
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())
    # equal to an uninterrupted export, bit for bit
    ref = tmp_path / "reference"
    ExportSnapshotsConfig(data=(scenes,), out=ref, every=EXPORT_EVERY, max_steps=EXPORT_STEPS,
                          overrides={"pipeline.datamanager.init_num_points": str(POINTS)}).export()  # fmt: skip
    for name in names:
        got, want = load_shard(out / "shards" / name), load_shard(ref / "shards" / name)
        for key in SHARD_ARRAYS:
            a, b = getattr(got, key), getattr(want, key)
            assert (a is None) == (b is None) and (a is None or np.array_equal(a, b)), (name, key)
        drop = ("seconds", "created")
        assert {k: v for k, v in got.meta.items() if k not in drop} == {
            k: v for k, v in want.meta.items() if k not in drop
        }
    print(f"export-snapshots: {kills} kills survived, {len(done)} shard(s) finished before the last rerun")


# --- itergen train-diffusion -----------------------------------------------------------------------------------

DIFF_STEPS, DIFF_EVERY = 12, 3
DIFF_ARGS = dict(model="tiny", max_steps=DIFF_STEPS, checkpoint_every=DIFF_EVERY, keep_checkpoints=2,
                 learning_rate=1e-3, lr_warmup_steps=2, validate_every=0, log_every=1, vae_fit_steps=0,
                 progress=False, model_overrides={"num_frames": 4})  # fmt: skip


def diffusion_cmd(data: Path, out: Path) -> list:
    cmd = [BIN / "itergen", "train-diffusion", "--data", data, "--output-dir", out, "--resume", "auto"]
    for key, value in DIFF_ARGS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            cmd += [flag] + [x for kv in value.items() for x in kv]
        else:
            cmd += [flag, value]
    return cmd


def visible_checkpoints(out: Path) -> Dict[int, tuple]:
    """Every visible step_* checkpoint and latest/ load; step -> stamp of trainer_state.json."""
    from safetensors.torch import load_file

    found = {}
    for ckpt in sorted((out / "checkpoints").glob("step_*")) if (out / "checkpoints").is_dir() else []:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert int(ckpt.name.split("_")[1]) == state["step"]
        load_file(ckpt / "model.safetensors")
        for name in ("optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl"):
            torch.load(ckpt / name, weights_only=False)
        found[state["step"]] = stamp(ckpt / "trainer_state.json")
    if (out / "latest").exists():
        IterGenDiffusionModel.from_pretrained(out / "latest")
    return found


def all_logged_losses(out: Path) -> List[tuple]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events_file in sorted((out / "logs").rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(events_file))
        events.Reload()
        if "train/loss" in events.Tags()["scalars"]:
            values += [(e.step, e.value) for e in events.Scalars("train/loss")]
    return values


@pytest.mark.parametrize("seed", [11])
def test_train_diffusion_survives_sigkill(tmp_path, seed) -> None:
    data = tmp_path / "snapshots"
    make_shard(data, "scene_a", seed=0)
    make_shard(data, "scene_b", seed=1)
    out = tmp_path / "run"
    cmd = diffusion_cmd(data, out)
    rng = np.random.default_rng(seed)
    kills, seen = 0, {}
    for k in range(3):
        before = max(seen, default=0)

        def progressed(pid: int) -> bool:  # a checkpoint newer than the ones this run started from
            root = out / "checkpoints"
            return root.is_dir() and any(int(p.name.split("_")[1]) > before for p in root.glob("step_*"))

        killed = kill_at(cmd, tmp_path / f"kill{k}.log", progressed, float(rng.uniform(0, 2.5)))
        kills += killed
        if k > 0 and before:
            assert f"at step {before}" in (tmp_path / f"kill{k}.log").read_text()  # resumed from the newest one
        now = visible_checkpoints(out)
        assert all(now[s] == st for s, st in seen.items() if s in now)  # kept checkpoints are never rewritten
        assert len(now) <= 3 and (not now or max(now) >= before)  # 3: killed between a save and its pruning
        seen = now
    assert kills >= 2, "the runs finished before their kill times"
    resume_step = max(seen, default=0)
    log = run_to_end(cmd, tmp_path / "final.log")
    if resume_step:
        assert f"resumed from {out / 'checkpoints' / f'step_{resume_step:08d}'} at step {resume_step}" in log
    final = visible_checkpoints(out)
    assert sorted(final) == [DIFF_STEPS - DIFF_EVERY, DIFF_STEPS]
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    # equal to an uninterrupted run: every loss any run logged (killed ones included) and the final weights
    ref = train(TrainDiffusionConfig(data=data, output_dir=tmp_path / "reference", **DIFF_ARGS))
    logged = all_logged_losses(out)
    assert {s for s, _ in logged} == set(range(1, DIFF_STEPS + 1))
    assert all(value == pytest.approx(ref.losses[s], rel=1e-6, abs=0) for s, value in logged), (logged, ref.losses)
    exact = sum(value == np.float32(ref.losses[s]) for s, value in logged)
    a = IterGenDiffusionModel.from_pretrained(out / "latest").denoiser.state_dict()
    b = IterGenDiffusionModel.from_pretrained(tmp_path / "reference" / "latest").denoiser.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b), [k for k in b if not torch.equal(a[k], b[k])][:5]
    print(f"train-diffusion: {kills} kills survived, resumed at step {resume_step}; {exact}/{len(logged)} logged "
          "losses bit-equal to the uninterrupted run, final EMA weights bit-equal")  # fmt: skip


# --- itergen demo ----------------------------------------------------------------------------------------------

DEMO_ARGS = ["--num-train-scenes", "1", "--num-heldout-scenes", "1", "--num-frames", "8", "8", "--image-size", "32",
             "--eval-steps", "20", "--views", "1", "--methods", "itergen-splatfacto", "itergen",
             "--init-num-points", "200", "--generate-every", "10"]  # fmt: skip


def visible_demo_outputs(out: Path) -> Dict[str, tuple]:
    """Every visible stage marker and eval result parses, with its frames; result.json path -> stamp."""
    found = {}
    for marker in sorted((out / ".stages").glob("*.json")) if (out / ".stages").is_dir() else []:
        json.loads(marker.read_text())
    for result in sorted((out / "report" / "runs").rglob("result.json")) if (out / "report").is_dir() else []:
        data = json.loads(result.read_text())
        assert math.isfinite(data["metrics"]["psnr"])
        with np.load(result.parent / "frames.npz") as frames:
            assert frames["renders"].shape[0] == len(data["per_frame"]) + len(data["input_indices"])
        found[str(result.relative_to(out))] = stamp(result)
    for gt in (out / "report" / "runs").rglob("ground_truth.npz") if (out / "report").is_dir() else []:
        with np.load(gt) as f:
            f["images"].sum()
    return found


def run_results(out: Path) -> Dict[str, dict]:
    drop = ("seconds", "scene_path")  # scene_path: the run's own output folder
    return {str(p.relative_to(out)): {k: v for k, v in json.loads(p.read_text()).items() if k not in drop}
            for p in sorted((out / "report" / "runs").rglob("result.json"))}  # fmt: skip


@pytest.mark.parametrize("seed", [6])
def test_demo_survives_sigkill(tmp_path, seed) -> None:
    out = tmp_path / "demo"
    cmd = [BIN / "itergen", "demo", "--output-dir", out, *DEMO_ARGS]
    rng = np.random.default_rng(seed)
    kills, done = 0, {}
    for k in range(2):
        log = tmp_path / f"kill{k}.log"

        def evaluating(pid: int) -> bool:  # the eval stage of this run has begun (scenes exist)
            return log.exists() and "demo: eval" in log.read_text()

        def one_run_finished(pid: int) -> bool:  # the second kill lands after an eval run is complete
            return evaluating(pid) and any((out / "report" / "runs").rglob("result.json"))

        trigger, delay = (evaluating, rng.uniform(0, 3)) if k == 0 else (one_run_finished, rng.uniform(0, 0.5))
        kills += kill_at(cmd, log, trigger, float(delay))
        now = visible_demo_outputs(out)
        assert all(now[name] == st for name, st in done.items())
        done = now
    assert kills == 2, "a run finished before its kill time"
    assert 1 <= len(done) < 2, "the second kill should land after the first eval run and before the last"
    log = run_to_end(cmd, tmp_path / "final.log")
    assert "stage 'scenes' already done" in log
    final = visible_demo_outputs(out)
    assert len(final) == 2 and all(final[name] == st for name, st in done.items())  # finished runs not redone
    assert (out / "report" / "report.md").is_file() and (out / ".stages" / "eval.json").is_file()
    # equal to an uninterrupted demo
    from itergen_ns.eval.demo import DemoConfig
    import tyro

    ref_out = tmp_path / "reference"
    tyro.cli(DemoConfig, args=["--output-dir", str(ref_out), *DEMO_ARGS]).main()
    assert run_results(out) == run_results(ref_out)
    print(f"demo: {kills} kills survived, {len(done)} eval run(s) finished before the last rerun")


# --- ns-train itergen-splatfacto, resumed with --load-dir ------------------------------------------------------

NS_STEPS, NS_SAVE = 40, 10


def ns_train_cmd(scene: Path, out: Path, steps: int, *extra) -> list:
    return [BIN / "ns-train", "itergen-splatfacto", "--data", scene, "--output-dir", out, "--experiment-name", "k",
            "--timestamp", "run", "--machine.device-type", "cpu", "--pipeline.datamanager.num-input-views", "3",
            "--pipeline.datamanager.init-num-points", POINTS, "--vis", "tensorboard",
            "--viewer.quit-on-train-completion", "True", "--logging.local-writer.enable", "False",
            "--steps-per-save", NS_SAVE, "--save-only-latest-checkpoint", "False", "--steps-per-eval-batch", "0",
            "--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "1000",
            "--max-num-iterations", steps, *extra]  # fmt: skip


def heldout_psnr(run_dir: Path) -> float:
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
    dataset = pipeline.datamanager.eval_dataset
    mse = []
    with torch.no_grad():
        for i in range(len(dataset)):
            rgb = pipeline.model.get_outputs_for_camera(dataset.cameras[i : i + 1])["rgb"]
            gt = dataset.get_image_float32(i)[..., :3]
            mse.append(float(((rgb.clamp(0, 1) - gt) ** 2).mean()))
    return float(10 * np.log10(1.0 / np.mean(mse)))


def optimiser_steps(ckpt: Path) -> Dict[str, int]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return {name: int(next(iter(opt["state"].values()))["step"]) for name, opt in state["optimizers"].items()
            if opt["state"]}  # fmt: skip


def test_ns_train_resumes_with_load_dir_after_sigkill(scenes, tmp_path) -> None:
    scene = scenes / "scene_0000"
    models = tmp_path / "killed" / "k" / "itergen-splatfacto" / "run" / "nerfstudio_models"

    def checkpoint_written(pid: int) -> bool:  # kill right after the step-20 checkpoint is complete
        ckpt = models / "step-000000020.ckpt"
        try:
            return ckpt.exists() and bool(torch.load(ckpt, map_location="cpu", weights_only=False)["step"] == 20)
        except Exception:  # still being written
            return False

    full_log = open(tmp_path / "full.log", "w")  # the uninterrupted reference runs beside the killed one
    full = subprocess.Popen([str(c) for c in ns_train_cmd(scene, tmp_path / "full", NS_STEPS)], env=cli_env(),
                            stdout=full_log, stderr=subprocess.STDOUT)  # fmt: skip
    assert kill_at(ns_train_cmd(scene, tmp_path / "killed", NS_STEPS), tmp_path / "kill.log", checkpoint_written, 0)
    ckpts = sorted(models.glob("step-*.ckpt"))
    for ckpt in ckpts:  # every visible checkpoint loads
        torch.load(ckpt, map_location="cpu", weights_only=False)
    last = int(ckpts[-1].stem.split("-")[1])
    assert last >= 20
    # nerfstudio counts --max-num-iterations from the loaded step + 1: the rest of the 40-step run
    log = run_to_end(ns_train_cmd(scene, tmp_path / "killed", NS_STEPS - last - 1, "--load-dir", models),
                     tmp_path / "resume.log")  # fmt: skip
    assert f"step-{last:09d}.ckpt" in log.replace("\n", "")  # "Done loading Nerfstudio checkpoint from ..." (wrapped)
    assert full.wait(timeout=400) == 0, (tmp_path / "full.log").read_text()[-4000:]
    full_log.close()
    full_models = tmp_path / "full" / "k" / "itergen-splatfacto" / "run" / "nerfstudio_models"
    end = f"step-{NS_STEPS - 1:09d}.ckpt"
    before, after = (torch.load(models / n, weights_only=False)["pipeline"] for n in (f"step-{last:09d}.ckpt", end))
    assert any(not torch.equal(before[k], after[k]) for k in before), "the resumed run did not change the model"
    resumed_steps, full_steps = optimiser_steps(models / end), optimiser_steps(full_models / end)
    assert resumed_steps == full_steps and resumed_steps  # no step redone or skipped
    psnr_resumed = heldout_psnr(models.parent)
    psnr_full = heldout_psnr(full_models.parent)
    print(f"ns-train --load-dir from step {last}: held-out PSNR {psnr_resumed:.2f} dB vs {psnr_full:.2f} uninterrupted")
    assert abs(psnr_resumed - psnr_full) < 1.0
