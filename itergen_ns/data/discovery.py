"""Which folders are scenes: one rule for the snapshot exporter and the eval harness.

A scene is a nerfstudio folder (``transforms.json``) or a CO3D sequence; a collection is a folder of scenes, and a
procedural collection's ``scenes.json`` (``itergen make-scenes``) says which of them are train, val or held-out.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from itergen_ns.data.co3d import is_co3d_sequence
from itergen_ns.data.scenes import INDEX_NAME, load_scene_index


def is_scene(path: Path) -> bool:
    return (path / "transforms.json").is_file() or is_co3d_sequence(path)


def collection_scenes(path: Path, include_heldout: bool) -> List[Path]:
    """Scene folders of a collection folder; a procedural collection's held-out scenes are left out by default."""
    index_file = path / INDEX_NAME
    if index_file.is_file() and not include_heldout:
        entries = load_scene_index(path)["scenes"]
        chosen = [Path(e["path"]) for e in entries if e.get("split", "train") == "train"]
        missing = [p for p in chosen if not is_scene(p)]
        if missing:
            raise FileNotFoundError(f"{index_file}: lists scenes that are missing or incomplete: {missing}")
        return sorted(chosen)
    return sorted(p for p in path.iterdir() if p.is_dir() and is_scene(p))


def discover_scenes(paths: Sequence[Path], include_heldout: bool = False) -> List[Path]:
    """Scene folders named by ``paths``: a scene (transforms.json / CO3D sequence) or a folder of scenes.

    The order is deterministic (sorted within each folder, paths in the given order, duplicates dropped), so
    every process of a ``--shard i/n`` export sees the same list.
    """
    scenes: List[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such scene or dataset directory")
        if is_scene(path):
            scenes.append(path)
            continue
        found = collection_scenes(path, include_heldout) if path.is_dir() else []
        if not found:
            raise ValueError(f"{path}: holds no scenes (expected transforms.json or CO3D sequence folders)")
        scenes.extend(found)
    unique, seen = [], set()
    for scene in scenes:
        if scene.resolve() not in seen:
            seen.add(scene.resolve())
            unique.append(scene)
    return unique


def discover_split_scenes(paths: Sequence[Path], split: str = "heldout") -> List[Path]:
    """Scenes to evaluate: a folder with scenes.json contributes its ``split`` scenes, else every scene below it."""
    scenes: List[Path] = []
    for path in map(Path, paths):
        if (path / INDEX_NAME).exists():
            scenes += [Path(e["path"]) for e in load_scene_index(path)["scenes"] if e.get("split") == split]
        else:
            scenes += discover_scenes([path])
    if not scenes:
        raise ValueError(f"no evaluation scenes found under {', '.join(map(str, paths))}")
    return scenes
