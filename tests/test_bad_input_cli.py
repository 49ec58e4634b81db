"""Bad input on every entry point (issue 17): one line on stderr naming the file/field and what was expected, a
non-zero exit, no traceback (unless ``--debug`` / ``ITERGEN_DEBUG=1``) and no partial output.

The ``itergen`` commands run in-process through ``itergen_ns.cli.main``; ``ns-train`` runs as a subprocess (a few
cases: each pays nerfstudio's imports).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Sequence

import numpy as np
import pytest

from itergen_ns.cli import main
from itergen_ns.data.scenes import make_scenes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Dict[str, Path]:
    """Good inputs the cases corrupt copies of: a 2-scene collection (6 frames, 16 px), a snapshot root with one
    synthetic shard, and a saved tiny generator (8 frames, 32 px, 4 latent channels)."""
    from itergen_ns.diffusion.presets import tiny_config
    from itergen_ns.diffusion.model import IterGenDiffusionModel
    from itergen_ns.snapshots.format import write_shard

    root = tmp_path_factory.mktemp("assets")
    make_scenes(root / "scenes", 2, seed=0, num_frames=6, resolution=16, supersample=1, shadows=False, num_heldout=1)
    f, h, w = 10, 16, 16
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(4, dtype=np.float32)[:3], (f, 1, 1))
    c2w[:, 0, 3] = np.linspace(0, 1, f)
    arrays = {
        "images": rng.integers(0, 255, (f, h, w, 3), dtype=np.uint8),
        "c2w": c2w,
        "intrinsics": np.tile(np.array([20.0, 20.0, 8.0, 8.0], np.float32), (f, 1)),
        "input_indices": np.array([0, 5], np.int64),
        "steps": np.array([10, 20], np.int64),
        "renders": rng.integers(0, 255, (2, f, h, w, 3), dtype=np.uint8),
    }
    write_shard(root / "snapshots", "scene_a", arrays, {"scene": "scene_a", "num_frames": f, "steps": [10, 20]})
    IterGenDiffusionModel.from_config(tiny_config()).save_pretrained(root / "generator")
    return {"scenes": root / "scenes", "snapshots": root / "snapshots", "generator": root / "generator"}


def copy_of(assets: Dict[str, Path], key: str, tmp_path: Path) -> Path:
    dst = tmp_path / key
    shutil.copytree(assets[key], dst)
    return dst


def edit_json(path: Path, edit: Callable[[dict], None]) -> Path:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return path


def files_under(path: Path) -> List[Path]:
    return sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else []


def set_matrix(frame: int, row: int, col: int, value: float) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        meta["frames"][frame]["transform_matrix"][row][col] = value

    return edit


# ------------------------------------------------------------------------------------------------ the table
class Case(NamedTuple):
    name: str
    setup: Callable[[Dict[str, Path], Path], List[str]]
    """(assets, tmp_path) -> argv of ``itergen``; may corrupt copies of the assets under tmp_path."""
    expect: Sequence[str]
    """Substrings of the error line ({tmp} is tmp_path)."""
    no_output: Sequence[str] = ("out",)
    """Paths under tmp_path that must hold no file afterwards."""


def scene_copy(edit: Callable[[Path], None]) -> Callable[[Dict[str, Path], Path], Path]:
    def make(assets: Dict[str, Path], tmp: Path) -> Path:
        scene = copy_of(assets, "scenes", tmp) / "scene_0000"
        edit(scene)
        return scene

    return make


def export(scene_fn, *extra: str):
    return lambda a, t: ["export-snapshots", "--data", str(scene_fn(a, t)), "--out", str(t / "out"),
                         "--max-steps", "2", "--every", "1", *extra]  # fmt: skip


def corrupt_transforms(scene: Path) -> None:
    (scene / "transforms.json").write_text('{"frames": [')


def missing_image(scene: Path) -> None:
    (scene / "images" / "frame_00002.png").unlink()


def unreadable_image(scene: Path) -> None:
    (scene / "images" / "frame_00003.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def nan_pose(scene: Path) -> None:
    edit_json(scene / "transforms.json", set_matrix(1, 0, 3, math.nan))


def sheared_pose(scene: Path) -> None:
    edit_json(scene / "transforms.json", set_matrix(4, 0, 1, 0.5))


def bad_snapshot_root(edit: Callable[[Path], None]):
    def make(assets, tmp):
        root = copy_of(assets, "snapshots", tmp)
        edit(root)
        return root

    return make


def other_version(root: Path) -> None:
    edit_json(root / "format.json", lambda m: m.update(version=99))


def corrupt_meta(root: Path) -> None:
    (root / "shards" / "scene_a" / "meta.json").write_text("{not json")


def corrupt_safetensors(assets, tmp) -> Path:
    gen = copy_of(assets, "generator", tmp)
    weights = next((gen / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    return gen


def train_diffusion(root_fn, *extra: str):
    return lambda a, t: ["train-diffusion", "--data", str(root_fn(a, t)), "--output-dir", str(t / "out"),
                         "--max-steps", "1", "--no-progress", "--vae-fit-steps", "0", *extra]  # fmt: skip


def demo(*extra: str, gen=None):
    def argv(a, t):
        checkpoint = [] if gen is None else ["--generator-checkpoint", str(gen(a, t))]
        return ["demo", "--output-dir", str(t / "out"), *checkpoint, *extra]

    return argv


CASES = [
    # make-scenes
    Case(
        "make-scenes: more held-out than scenes",
        lambda a, t: ["make-scenes", "--out-dir", str(t / "out"), "--num-scenes", "2", "--num-heldout", "3"],
        ["--num-heldout", "[0, 2]", "got 3"],
    ),
    Case(
        "make-scenes: image too small",
        lambda a, t: ["make-scenes", "--out-dir", str(t / "out"), "--num-scenes", "1", "--image-size", "4", "4"],
        ["--image-size", "8x8"],
    ),
    Case(
        "make-scenes: 0 frames",
        lambda a, t: ["make-scenes", "--out-dir", str(t / "out"), "--num-frames", "0", "0"],
        ["--num-frames", "positive"],
    ),
    # export-snapshots
    Case(
        "export: missing path",
        lambda a, t: ["export-snapshots", "--data", str(t / "nope"), "--out", str(t / "out")],
        ["{tmp}/nope", "no such scene"],
    ),
    Case(
        "export: empty folder",
        lambda a, t: [(t / "empty").mkdir(), "export-snapshots", "--data", str(t / "empty"), "--out", str(t / "out")][
            1:
        ],
        ["{tmp}/empty", "holds no scenes"],
    ),
    Case(
        "export: corrupt transforms.json",
        export(scene_copy(corrupt_transforms)),
        ["scene_0000/transforms.json", "not valid JSON"],
        ["out/shards", "out/runs"],
    ),
    Case(
        "export: image listed but missing",
        export(scene_copy(missing_image)),
        ["images/frame_00002.png", "frames[2].file_path", "not found"],
        ["out/shards", "out/runs"],
    ),
    Case(
        "export: unreadable image",
        export(scene_copy(unreadable_image)),
        ["images/frame_00003.png"],
        ["out/shards", "out/runs"],
    ),
    Case(
        "export: NaN pose",
        export(scene_copy(nan_pose)),
        ["transforms.json", "frames[1]", "transform_matrix", "nan"],
        ["out/shards", "out/runs"],
    ),
    Case(
        "export: non-rigid pose",
        export(scene_copy(sheared_pose)),
        ["transforms.json", "frames[4]", "transform_matrix", "not rigid"],
        ["out/shards", "out/runs"],
    ),
    Case("export: 0 input views", export(scene_copy(lambda s: None), "--min-views", "0"), ["--min-views"]),
    Case(
        "export: more input views than frames",
        export(scene_copy(lambda s: None), "--min-views", "6"),
        ["scene_0000", "6 frames", "6 input view"],
        ["out/shards", "out/runs"],
    ),
    # snapshots-summary
    Case(
        "summary: missing root",
        lambda a, t: ["snapshots-summary", "--root", str(t / "nope")],
        ["{tmp}/nope/format.json", "missing"],
    ),
    Case(
        "summary: other format version",
        lambda a, t: ["snapshots-summary", "--root", str(bad_snapshot_root(other_version)(a, t))],
        ["format.json", "version 99", "expected 'itergen-snapshots' version 1"],
    ),
    Case(
        "summary: corrupt meta.json",
        lambda a, t: ["snapshots-summary", "--root", str(bad_snapshot_root(corrupt_meta)(a, t))],
        ["shards/scene_a", "meta.json is not valid JSON"],
    ),
    # train-diffusion
    Case(
        "train-diffusion: missing path", train_diffusion(lambda a, t: t / "nope"), ["{tmp}/nope/format.json", "missing"]
    ),
    Case(
        "train-diffusion: other format version",
        train_diffusion(bad_snapshot_root(other_version)),
        ["format.json", "version 99"],
    ),
    Case(
        "train-diffusion: corrupt meta.json",
        train_diffusion(bad_snapshot_root(corrupt_meta)),
        ["shards/scene_a", "meta.json is not valid JSON", "no usable snapshot shards"],
    ),
    Case(
        "train-diffusion: resume from a missing checkpoint",
        train_diffusion(lambda a, t: a["snapshots"], "--resume", "latest"),
        ["--resume latest", "no checkpoints"],
    ),
    # eval
    Case(
        "eval: missing path",
        lambda a, t: ["eval", "--data", str(t / "nope"), "--output-dir", str(t / "out")],
        ["{tmp}/nope"],
    ),
    Case(
        "eval: corrupt scenes.json",
        lambda a, t: [
            (copy_of(a, "scenes", t) / "scenes.json").write_text("[1, 2"),
            "eval",
            "--data",
            str(t / "scenes"),
            "--output-dir",
            str(t / "out"),
        ][1:],
        ["scenes/scenes.json", "not valid JSON"],
    ),
    Case(
        "eval: 0 input views",
        lambda a, t: [
            "eval",
            "--data",
            str(a["scenes"]),
            "--views",
            "0",
            "--output-dir",
            str(t / "out"),
            "--methods",
            "itergen-splatfacto",
        ],
        ["--views", ">= 1"],
    ),
    Case(
        "eval: more input views than frames",
        lambda a, t: [
            "eval",
            "--data",
            str(a["scenes"]),
            "--views",
            "7",
            "--output-dir",
            str(t / "out"),
            "--methods",
            "itergen-splatfacto",
        ],
        ["--views 7", "6 frames"],
    ),
    Case(
        "eval: missing generator",
        lambda a, t: [
            "eval",
            "--data",
            str(a["scenes"]),
            "--views",
            "1",
            "--generator-checkpoint",
            str(t / "nope"),
            "--output-dir",
            str(t / "out"),
        ],
        ["{tmp}/nope", "itergen_diffusion.json"],
    ),
    Case(
        "eval: generator with corrupt safetensors",
        lambda a, t: [
            "eval",
            "--data",
            str(a["scenes"]),
            "--views",
            "1",
            "--generator-checkpoint",
            str(corrupt_safetensors(a, t)),
            "--output-dir",
            str(t / "out"),
        ],
        ["--generator-checkpoint", "unet/diffusion_pytorch_model.safetensors"],
    ),
    # demo
    Case("demo: missing generator", demo(gen=lambda a, t: t / "nope"), ["{tmp}/nope", "itergen_diffusion.json"]),
    Case(
        "demo: corrupt generator safetensors",
        demo(gen=corrupt_safetensors),
        ["--generator-checkpoint", "unet/diffusion_pytorch_model.safetensors"],
    ),
    Case("demo: 0 input views", demo("--views", "0"), ["--views", ">= 1"]),
    Case("demo: more input views than frames", demo("--views", "40"), ["--views 40", "--num-frames"]),
]


def run_cli(argv: Sequence[str], capsys) -> tuple:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_one_line_nonzero_nothing_written(case: Case, assets, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ITERGEN_DEBUG", raising=False)
    argv = case.setup(assets, tmp_path)
    code, lines = run_cli(argv, capsys)
    assert code != 0, f"exit status 0 for {argv}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n" + "\n".join(lines)
    line = lines[0]
    assert "Traceback" not in line
    for want in case.expect:
        want = want.replace("{tmp}", str(tmp_path))
        assert want.lower() in line.lower(), f"{want!r} not in {line!r}"
    for rel in case.no_output:
        assert not files_under(tmp_path / rel), f"{rel} holds {files_under(tmp_path / rel)}"
    assert not [p for p in tmp_path.rglob(".tmp*")], "temporary files left behind"


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    """``--debug`` or ITERGEN_DEBUG=1: the error propagates (Python prints its traceback)."""
    argv = ["snapshots-summary", "--root", str(tmp_path / "nope")]
    with pytest.raises(FileNotFoundError, match="format.json"):
        main(["--debug", *argv])
    monkeypatch.setenv("ITERGEN_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)


def test_disk_full_while_writing_scenes(tmp_path, capsys, monkeypatch):
    """ENOSPC half-way through a file: the message names the file and the cause; no file of the run remains."""
    import itergen_ns.data.scenes as scenes

    writes, real_write = [], scenes.write_file

    def full_disk(path: Path, data: bytes) -> None:
        writes.append(path)
        if len(writes) > 5:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    monkeypatch.setattr(scenes, "write_file", full_disk)
    out = tmp_path / "out"
    code, lines = run_cli(["make-scenes", "--out-dir", str(out), "--num-scenes", "2", "--num-frames", "4", "4",
                           "--image-size", "16", "16", "--supersample", "1"], capsys)  # fmt: skip
    assert code != 0 and len(lines) == 1, lines
    assert "No space left on device" in lines[0] and "free space" in lines[0]
    assert str(out / "scene_0000") in lines[0] and ".png" in lines[0], lines[0]
    assert not out.exists(), files_under(out)

    # into an existing collection: the scenes already there stay whole, the failed one leaves nothing
    monkeypatch.setattr(scenes, "write_file", real_write)
    make_scenes(out, 1, num_frames=4, resolution=16, supersample=1)
    before = {p: p.read_bytes() for p in files_under(out)}
    writes.clear()
    monkeypatch.setattr(scenes, "write_file", full_disk)
    code, lines = run_cli(["make-scenes", "--out-dir", str(out), "--num-scenes", "2", "--num-frames", "4", "4",
                           "--image-size", "16", "16", "--supersample", "1"], capsys)  # fmt: skip
    assert code != 0 and len(lines) == 1 and "No space left" in lines[0]
    assert {p: p.read_bytes() for p in files_under(out)} == before
    assert not list(out.glob(".*"))


def test_disk_full_while_writing_a_shard(assets, tmp_path, monkeypatch):
    """ENOSPC while a snapshot shard is assembled: no shard (and no temporary) is left."""
    from itergen_ns.snapshots import format as fmt
    from itergen_ns.snapshots.format import load_shard, shard_dir, write_shard

    shard = load_shard(assets["snapshots"] / "shards" / "scene_a")
    arrays = {k: np.asarray(getattr(shard, k)) for k in fmt.REQUIRED_ARRAYS}
    real_save = np.save

    def full(path, arr, *args, **kwargs):
        if str(path).endswith("renders.npy"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(path, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", full)  # numpy.save, which the shard writer calls
    with pytest.raises(OSError, match="No space left"):
        write_shard(tmp_path / "snap", "scene_b", arrays, {"scene": "scene_b"})
    assert not shard_dir(tmp_path / "snap", "scene_b").exists()
    assert not [p for p in (tmp_path / "snap" / "shards").iterdir()]


def test_make_scenes_one_scene_default_split(tmp_path, capsys):
    """`--num-scenes 1` works: the held-out default is min(2, num_scenes), so a lone scene is evaluable."""
    from itergen_ns.data.scenes import default_num_heldout, load_scene_index

    assert [default_num_heldout(n) for n in (1, 2, 3, 10)] == [1, 2, 2, 2]
    out = tmp_path / "one"
    code, lines = run_cli(["make-scenes", "--out-dir", str(out), "--num-scenes", "1", "--num-frames", "3", "3",
                           "--image-size", "16", "16", "--supersample", "1"], capsys)  # fmt: skip
    assert code == 0 and not lines, lines
    assert [e["split"] for e in load_scene_index(out)["scenes"]] == ["heldout"]


@pytest.fixture(scope="module")
def diffusion_run(assets, tmp_path_factory) -> Path:
    """A 1-step tiny train-diffusion run with a checkpoint (8 frames, 32 px, 4 latent channels)."""
    out = tmp_path_factory.mktemp("diffusion") / "run"
    argv = ["train-diffusion", "--data", str(assets["snapshots"]), "--output-dir", str(out), "--max-steps", "1",
            "--checkpoint-every", "1", "--validate-every", "0", "--no-progress", "--vae-fit-steps", "0",
            "--no-use-ema", "--lr-warmup-steps", "0"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.mark.parametrize(
    "name,edit,extra,expect",
    [
        ("frames", None, ("--model-overrides", "num_frames", "4"), ["trainer_state.json", "num_frames is 8", "has 4"]),
        ("resolution", None, ("--model-overrides", "height", "16", "width", "16"), ["height is 32", "has 16"]),
        (
            "latent channels",
            lambda ckpt: edit_json(ckpt / "trainer_state.json", lambda m: m.update(latent_channels=16)),
            (),
            ["latent_channels is 16", "has 4"],
        ),
        (
            "corrupt safetensors",
            lambda ckpt: (ckpt / "model.safetensors").write_bytes(b"\x10\x00garbage"),
            (),
            ["step_00000001", "cannot resume", "SafetensorError"],
        ),
    ],
)
def test_train_diffusion_resume_from_mismatched_checkpoint(name, edit, extra, expect, assets, diffusion_run, tmp_path,
                                                           capsys):  # fmt: skip
    """--resume from a checkpoint of another model (frames, resolution, latent channels) or a truncated one."""
    run = tmp_path / "src"
    shutil.copytree(diffusion_run, run)
    ckpt = next((run / "checkpoints").glob("step_*"))
    if edit is not None:
        edit(ckpt)
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = {p: p.stat().st_mtime_ns for p in files_under(out)}
    argv = ["train-diffusion", "--data", str(assets["snapshots"]), "--output-dir", str(out),
            "--max-steps", "2", "--checkpoint-every", "1", "--validate-every", "0", "--no-progress",
            "--vae-fit-steps", "0", "--no-use-ema", "--resume", "latest", *extra]  # fmt: skip
    code, lines = run_cli(argv, capsys)
    assert code != 0 and len(lines) == 1, lines
    for want in expect:
        assert want in lines[0], lines[0]
    assert {p: p.stat().st_mtime_ns for p in files_under(out)} == before, "the failed resume wrote files"


# ------------------------------------------------------------------------------------------------ ns-train
NS_TRAIN = Path(sys.executable).parent / "ns-train"


def ns_train(args: Sequence[str], tmp_path: Path, debug: bool = False) -> subprocess.CompletedProcess:
    if not NS_TRAIN.exists():
        pytest.skip(f"{NS_TRAIN} not installed")
    env = {k: v for k, v in os.environ.items() if k != "ITERGEN_DEBUG"}
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", **({"ITERGEN_DEBUG": "1"} if debug else {}))
    cmd = [str(NS_TRAIN), *args, "--max-num-iterations", "2", "--vis", "tensorboard",
           "--viewer.quit-on-train-completion", "True", "--output-dir", str(tmp_path / "outputs")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


NS_CASES = [
    (
        "itergen-splatfacto: missing path",
        lambda a, t: ["itergen-splatfacto", "--data", str(t / "nope")],
        ["{tmp}/nope"],
    ),
    (
        "itergen-splatfacto: non-rigid pose",
        lambda a, t: ["itergen-splatfacto", "--data", str(scene_copy(sheared_pose)(a, t))],
        ["frames[4]", "not rigid"],
    ),
    (
        "itergen: generator frames do not match",
        lambda a, t: [
            "itergen",
            "--data",
            str(a["scenes"] / "scene_0000"),
            "--pipeline.generator.checkpoint",
            str(a["generator"]),
            "--pipeline.generation.num-generated-frames",
            "4",
        ],
        ["generates 8 frames", "expects 4"],
    ),
]


@pytest.mark.parametrize("name,setup,expect", NS_CASES, ids=[c[0] for c in NS_CASES])
def test_ns_train_bad_input(name, setup, expect, assets, tmp_path):
    proc = ns_train(setup(assets, tmp_path), tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # stderr also holds the deprecation warnings torch/nerfstudio print on import and progress bars: the error is
    # the one line that reads "SomeError: ...", and it is the last one
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors_ = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    assert len(errors_) == 1 and errors_[0] == lines[-1], proc.stderr[-3000:]
    lines = errors_
    for want in expect:
        assert want.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    assert not files_under(tmp_path / "outputs"), files_under(tmp_path / "outputs")


def test_excepthook_one_line_unless_debugging(capsys, monkeypatch):
    """The hook the plugin installs for ns-* commands: one line for input errors, Python's traceback for bugs and
    with ITERGEN_DEBUG=1."""
    import itergen_ns.method_configs  # noqa: F401  (what nerfstudio imports through the entry point)
    from itergen_ns import errors

    assert sys.excepthook is errors.excepthook or sys.excepthook is not sys.__excepthook__
    monkeypatch.setattr(errors, "_previous_hook", lambda t, e, tb: print("TRACEBACK", file=sys.stderr))
    monkeypatch.delenv("ITERGEN_DEBUG", raising=False)
    bad = errors.InputError("/x/transforms.json: frames[0].transform_matrix holds nan;\nexpected finite numbers")
    errors.excepthook(type(bad), bad, None)
    assert (
        capsys.readouterr().err
        == "InputError: /x/transforms.json: frames[0].transform_matrix holds nan; expected finite numbers\n"
    )
    bug = KeyError("x")
    errors.excepthook(type(bug), bug, None)
    assert capsys.readouterr().err == "TRACEBACK\n"
    monkeypatch.setenv("ITERGEN_DEBUG", "1")
    errors.excepthook(type(bad), bad, None)
    assert capsys.readouterr().err == "TRACEBACK\n"
