"""Procedural stand-in for CO3D hydrant: writes nerfstudio-format scene folders of hydrant-like objects.

Each scene ``out_dir/scene_XXXX/`` holds ``transforms.json`` (OPENCV camera model, zero distortion, OpenGL
c2w per frame), ``images/frame_XXXXX.png`` and ``masks/frame_XXXXX.png`` (255 = object). ``out_dir/scenes.json``
lists the scenes, their seeds and their train/heldout role. Ground truth comes from an analytic ray caster
(``itergen_ns.data.procedural.raycast``), so the same seed always gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from itergen_ns.errors import InputError, write_failed
from itergen_ns.io import atomic_path, remove_dead_temporaries
from itergen_ns.data.procedural.scene import (
    FrameCount,
    ProceduralScene,
    Resolution,
    _frame_count,
    _image_size,
    sample_scene,
    scene_seed,
)

GENERATOR = "itergen-procedural-hydrant-v1"
INDEX_NAME = "scenes.json"

BENCH_NUM_FRAMES: Tuple[int, int] = (30, 36)
"""Frames per capture of the benchmark's (and the demo's) scene distribution."""
BENCH_IMAGE_SIZE: Tuple[int, int] = (64, 64)
"""Image width and height of the benchmark's scene distribution."""
SPLITS = ("train", "val", "heldout")


def write_file(path: Path, data: bytes) -> None:
    """The one place a scene file hits the disk (a full disk is injected here in tests/test_bad_input_cli.py)."""
    with open(path, "wb") as f:
        f.write(data)


def _write_bytes(path: Path, data: bytes, shown: Optional[Path] = None) -> None:
    """Write one file of a folder being assembled under a temporary name; a failed write (e.g. a full disk) raises
    an error naming ``shown`` (default ``path``), the file as the user will look for it."""
    try:
        write_file(path, data)
    except OSError as err:
        raise write_failed(shown or path, err) from err


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def transforms_dict(scene: ProceduralScene) -> Dict[str, Any]:
    """nerfstudio transforms.json content of ``scene`` (plus an ``itergen_scene`` block nerfstudio ignores)."""
    frames = []
    for i, pose in enumerate(scene.c2w):
        mat = np.concatenate([pose, np.array([[0.0, 0.0, 0.0, 1.0]])], 0)
        frames.append(
            {
                "file_path": f"images/frame_{i:05d}.png",
                "mask_path": f"masks/frame_{i:05d}.png",
                "transform_matrix": [[float(v) for v in row] for row in mat],
            }
        )
    return {
        "camera_model": "OPENCV",
        "fl_x": scene.fx,
        "fl_y": scene.fy,
        "cx": scene.cx,
        "cy": scene.cy,
        "w": scene.width,
        "h": scene.height,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": frames,
        "itergen_scene": {
            "generator": GENERATOR,
            "seed": scene.seed,
            "up": [0.0, 0.0, 1.0],
            "object_center": [float(v) for v in scene.obj.center],
            "object_radius": scene.obj.radius,
            "object_height": scene.obj.height,
        },
    }


def write_scene(
    scene: ProceduralScene,
    scene_dir: Path,
    supersample: int = 2,
    shadows: bool = True,
    num_threads: Optional[int] = 1,
) -> None:
    """Render ``scene`` and write its folder, assembled under a hidden temporary name and renamed into place: the
    folder is complete or absent (a failed write, e.g. a full disk, leaves neither it nor the temporary)."""
    scene_dir = Path(scene_dir)
    images, masks = scene.render(supersample=supersample, shadows=shadows, num_threads=num_threads)
    meta = transforms_dict(scene)
    with atomic_path(scene_dir, directory=True) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for frame, image, mask in zip(meta["frames"], images, masks):
            for key, pixels in ((frame["file_path"], image), (frame["mask_path"], mask.astype(np.uint8) * 255)):
                _write_bytes(tmp / key, _png_bytes(pixels), shown=scene_dir / key)
        _write_bytes(tmp / "transforms.json", (json.dumps(meta, indent=2) + "\n").encode(),
                     shown=scene_dir / "transforms.json")  # fmt: skip


def make_scenes(
    out_dir: Union[str, Path],
    num_scenes: int,
    seed: int = 0,
    num_frames: FrameCount = (30, 100),
    resolution: Resolution = 64,
    supersample: int = 2,
    shadows: bool = True,
    num_heldout: int = 0,
    look_jitter: float = 0.02,
    num_threads: Optional[int] = 1,
    on_scene_done: Optional[Callable[[int, Path], None]] = None,
    num_val: int = 0,
) -> Dict[str, Any]:
    """Write ``num_scenes`` scene folders and ``scenes.json`` under ``out_dir``; return the index.

    ``num_frames``: a fixed count or an inclusive (min, max) range drawn per scene. ``resolution``: an int
    (square) or (width, height). The last ``num_heldout`` scenes are marked ``"heldout"`` (evaluation), the
    ``num_val`` before them ``"val"`` (tuning), the rest ``"train"``. Scene i depends only on (seed, i), so a bigger collection extends a smaller one.
    ``num_threads``: torch threads while rendering (see ``render_views``).
    """
    if num_scenes < 1:
        raise InputError(f"make_scenes: num_scenes (--num-scenes) must be >= 1, got {num_scenes}")
    if not 0 <= num_heldout <= num_scenes:
        raise InputError(f"make_scenes: num_heldout (--num-heldout) must be in [0, {num_scenes}], got {num_heldout}")
    if not 0 <= num_val <= num_scenes - num_heldout:
        raise InputError(
            f"make_scenes: num_val (--num-val) must be in [0, {num_scenes - num_heldout}] (num_scenes - num_heldout), "
            f"got {num_val}"
        )
    width, height = _image_size(resolution)
    _frame_count(np.random.default_rng(0), num_frames)  # checked before anything is written
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out)  # left by a killed run
    entries: List[Dict[str, Any]] = []
    try:
        for i in range(num_scenes):
            s = scene_seed(seed, i)
            scene = sample_scene(s, num_frames, (width, height), look_jitter=look_jitter)
            name = f"scene_{i:04d}"
            write_scene(scene, out / name, supersample, shadows, num_threads)
            entries.append(
                {
                    "name": name,
                    "seed": s,
                    "num_frames": scene.num_frames,
                    "split": split_of(i, num_scenes, num_val, num_heldout),
                }
            )
            if on_scene_done is not None:
                on_scene_done(i, out / name)
    except BaseException:
        if created:  # everything under it is this call's: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    index = {
        "generator": GENERATOR,
        "seed": int(seed),
        "image_size": [width, height],
        "supersample": supersample,
        "shadows": shadows,
        "scenes": entries,
    }
    with atomic_path(out / INDEX_NAME) as tmp:
        _write_bytes(tmp, (json.dumps(index, indent=2) + "\n").encode(), shown=out / INDEX_NAME)
    return index


def default_num_heldout(num_scenes: int, at_most: int = 2) -> int:
    """Held-out scenes when none are asked for: ``at_most``, or every scene of a smaller collection (so
    ``--num-scenes 1`` gives a scene `itergen eval --data DIR` scores, as tests/eval/test_bench_proxy.py pins)."""
    return max(0, min(at_most, num_scenes))


def split_of(index: int, num_scenes: int, num_val: int = 0, num_heldout: int = 0) -> str:
    """Role of scene ``index`` in a collection laid out as train | val | heldout."""
    if index >= num_scenes - num_heldout:
        return "heldout"
    return "val" if index >= num_scenes - num_heldout - num_val else "train"


def load_scene_index(out_dir: Union[str, Path]) -> Dict[str, Any]:
    """Read and check ``out_dir/scenes.json``; each entry gets a ``path`` to its scene folder."""
    path = Path(out_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scene index not found (generate it with `itergen make-scenes`)")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(index, dict) or not isinstance(index.get("scenes"), list):
        raise InputError(f"{path}: expected an object with a 'scenes' list")
    for k, entry in enumerate(index["scenes"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise InputError(f"{path}: scenes[{k}] must be an object with a 'name'")
        entry["path"] = Path(out_dir) / entry["name"]
    return index


@dataclass
class MakeScenesConfig:
    """Generate the procedural hydrant-like category: nerfstudio-format scene folders plus scenes.json."""

    out_dir: Path = Path("data/itergen-hydrant")
    """Where the scene folders and scenes.json go."""
    num_scenes: int = 10
    """How many scenes (object instances with their own capture)."""
    num_heldout: Optional[int] = None
    """The last this many scenes are marked 'heldout' (what `itergen eval` scores), the rest 'train'; default
    min(2, num-scenes) (`--num-scenes 1`: one held-out scene, evaluable by `itergen eval --data DIR`)."""
    num_val: int = 0
    """Scenes before the held-out ones marked 'val' (for tuning, never scored by `itergen eval`)."""
    seed: int = 0
    """Collection seed; scene i depends only on (seed, i)."""
    num_frames: Tuple[int, int] = BENCH_NUM_FRAMES
    """Inclusive range of frames per capture (equal bounds for a fixed count); the default is the benchmark's
    (`itergen bench`) and the demo's distribution."""
    image_size: Tuple[int, int] = BENCH_IMAGE_SIZE
    """Image width and height in pixels."""
    supersample: int = 2
    """Sub-pixel rays per pixel side (anti-aliasing)."""
    shadows: bool = True
    """Soft shadows of the object (on itself and on the ground)."""
    look_jitter: float = 0.02
    """How far the cameras' aim wanders around the object centre (object is ~1 unit tall)."""
    num_threads: int = 1
    """torch intra-op threads while rendering (0: leave torch's setting)."""

    def main(self) -> None:
        """Generate the scenes with a progress bar."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console()
        with Progress(
            TextColumn("[bold]make-scenes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("scenes", total=self.num_scenes)
            index = make_scenes(
                self.out_dir,
                self.num_scenes,
                self.seed,
                self.num_frames,
                self.image_size,
                self.supersample,
                self.shadows,
                default_num_heldout(self.num_scenes) if self.num_heldout is None else self.num_heldout,
                self.look_jitter,
                self.num_threads or None,
                on_scene_done=lambda i, p: progress.advance(task),
                num_val=self.num_val,
            )
        frames = sum(e["num_frames"] for e in index["scenes"])
        console.print(f"Wrote {len(index['scenes'])} scenes ({frames} frames) to {self.out_dir / INDEX_NAME}")
