"""Builds tiny synthetic CO3D v2 sequences on disk, and projects points the PyTorch3D way (the test reference).

Nothing here imports the parser: the cameras are made from a look-at in PyTorch3D's own convention (camera axes x left,
y up, z forward; ``X_cam = X_world @ R + T``) and the reference projection follows PyTorch3D's NDC definition.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

OBJECT_CENTER = np.array([0.4, -0.3, 2.0])
WORLD_UP = np.array([0.2, 0.9, -0.3]) / np.linalg.norm([0.2, 0.9, -0.3])
ORBIT_RADIUS = 3.0
DEFAULT_SIZES = [(48, 64), (64, 48), (40, 72), (56, 56)]  # (H, W), cycled over the frames


def look_at_pytorch3d(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """PyTorch3D ``(R, T)`` of a camera at ``eye`` looking at ``target``: R's columns are the camera's left, up and
    forward axes in world coordinates, and ``T = -R^T eye`` so that ``X_cam = X_world @ R + T`` is 0 at the eye."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    left = np.cross(up, forward)  # right-handed (left, up, forward): left = up x forward
    left /= np.linalg.norm(left)
    cam_up = np.cross(forward, left)
    R = np.stack([left, cam_up, forward], axis=1)
    T = -R.T @ eye
    return R, T


def ndc_scales(fmt: str, width: int, height: int) -> Tuple[float, float]:
    if fmt == "ndc_isotropic":
        s = min(width, height) / 2.0
        return s, s
    return width / 2.0, height / 2.0


def project_pytorch3d(frame: dict, points: np.ndarray) -> np.ndarray:
    """Pixels ``(u, v)`` of world points for one annotation dict, following PyTorch3D.

    ``X_cam = X @ R + T``; NDC ``x = f_x X/Z + p_x`` (NDC +x points left, +y up); screen pixels are
    ``u = W/2 - x * s_x``, ``v = H/2 - y * s_y`` with the scales of the intrinsics format.
    """
    vp = frame["viewpoint"]
    R, T = np.asarray(vp["R"]), np.asarray(vp["T"])
    cam = points @ R + T
    x_ndc = vp["focal_length"][0] * cam[:, 0] / cam[:, 2] + vp["principal_point"][0]
    y_ndc = vp["focal_length"][1] * cam[:, 1] / cam[:, 2] + vp["principal_point"][1]
    height, width = frame["image"]["size"]
    s_x, s_y = ndc_scales(vp.get("intrinsics_format", "ndc_norm_image_bounds"), width, height)
    return np.stack([width / 2.0 - x_ndc * s_x, height / 2.0 - y_ndc * s_y], axis=1)


@dataclass
class SequenceFixture:
    root: Path
    category_dir: Path
    sequence_dir: Path
    frames: List[dict]  # annotation dicts of the main sequence, sorted by frame number
    eye: np.ndarray  # [N, 3] camera centres
    set_lists: Dict[str, Path] = field(default_factory=dict)

    def frame(self, number: int) -> dict:
        return next(f for f in self.frames if f["frame_number"] == number)


def _write_jgz(path: Path, obj) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(obj, f)


def make_co3d_sequence(
    root: Path,
    category: str = "hydrant",
    sequence: str = "106_12650_23736",
    num_frames: int = 10,
    sizes: Sequence[Tuple[int, int]] = DEFAULT_SIZES,
    intrinsics_format: Optional[str] = "ndc_isotropic",
    elevation_jitter: float = 0.1,
    other_sequences: Sequence[str] = ("999_1_2",),
    with_images: bool = True,
    with_masks: bool = True,
    with_pointcloud: bool = False,
    seed: int = 0,
) -> SequenceFixture:
    """Write ``root/category/{frame,sequence}_annotations.jgz``, set lists, and tiny images/masks of one sequence.

    Frame numbers are ``0, 2, 4, ...`` (so positions and numbers differ) and annotations are stored shuffled.
    ``intrinsics_format=None`` omits the field (CO3D v1 style).
    """
    rng = np.random.default_rng(seed)
    category_dir = root / category
    seq_dir = category_dir / sequence
    (seq_dir / "images").mkdir(parents=True, exist_ok=True)
    (seq_dir / "masks").mkdir(parents=True, exist_ok=True)
    # orthonormal basis of the orbit plane (perpendicular to WORLD_UP)
    a = np.cross(WORLD_UP, [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(WORLD_UP, a)
    records, eyes = [], []
    for k in range(num_frames):
        az = 2 * np.pi * 0.9 * k / num_frames
        el = 0.3 + elevation_jitter * np.sin(3.7 * k)
        direction = np.cos(el) * (np.cos(az) * a + np.sin(az) * b) + np.sin(el) * WORLD_UP
        eye = OBJECT_CENTER + ORBIT_RADIUS * direction
        R, T = look_at_pytorch3d(eye, OBJECT_CENTER, WORLD_UP)
        height, width = sizes[k % len(sizes)]
        number = 2 * k
        viewpoint = {
            "R": R.tolist(),
            "T": T.tolist(),
            "focal_length": [2.1 + 0.05 * k, 1.9 + 0.03 * k],
            "principal_point": [0.04 - 0.01 * k, -0.06 + 0.005 * k],
        }
        if intrinsics_format is not None:
            viewpoint["intrinsics_format"] = intrinsics_format
        rel = f"{category}/{sequence}"
        record = {
            "sequence_name": sequence,
            "frame_number": number,
            "frame_timestamp": 0.1 * number,
            "image": {"path": f"{rel}/images/frame{number + 1:06d}.jpg", "size": [height, width]},
            "depth": {"path": f"{rel}/depths/frame{number + 1:06d}.jpg.geometric.png", "scale_adjustment": 1.0},
            "mask": {"path": f"{rel}/masks/frame{number + 1:06d}.png", "mass": 100.0},
            "viewpoint": viewpoint,
            "meta": {"frame_type": "test_unseen"},
        }
        records.append(record)
        eyes.append(eye)
        if with_images:
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / record["image"]["path"], quality=95)
        if with_masks:
            u, v = project_pytorch3d(record, OBJECT_CENTER[None])[0]
            yy, xx = np.mgrid[0:height, 0:width] + 0.5
            dist = np.hypot(xx - u, yy - v)
            soft = np.clip((9.0 - dist) / 3.0, 0.0, 1.0)  # 1 inside r=6, 0 outside r=9
            Image.fromarray((soft * 255).astype(np.uint8)).save(root / record["mask"]["path"])
    others = []
    for name in other_sequences:  # a second sequence, so the parser has to pick the right one
        for k in range(min(3, num_frames)):
            rec = json.loads(json.dumps(records[k]))
            rec["sequence_name"] = name
            rec["image"]["path"] = f"{category}/{name}/images/frame{k + 1:06d}.jpg"
            others.append(rec)
    shuffled = [records[i] for i in rng.permutation(len(records))] + others
    _write_jgz(category_dir / "frame_annotations.jgz", shuffled)
    seq_annotations = [
        {
            "sequence_name": sequence,
            "category": category,
            "video": {"path": f"{category}/{sequence}/video.mp4", "length": 1.0},
            "point_cloud": {"path": f"{category}/{sequence}/pointcloud.ply", "quality_score": 1.0, "n_points": 1},
            "viewpoint_quality_score": 1.0,
        }
    ] + [{"sequence_name": n, "category": category} for n in other_sequences]
    _write_jgz(category_dir / "sequence_annotations.jgz", seq_annotations)

    def entry(rec: dict) -> list:
        return [rec["sequence_name"], rec["frame_number"], rec["image"]["path"]]

    (category_dir / "set_lists").mkdir(exist_ok=True)
    set_lists = {
        # sequence held out as a whole (its frames are the pool to choose input views from), first frame excluded
        "fewview_dev": {"train": [entry(r) for r in others], "val": [], "test": [entry(r) for r in records[1:]]},
        # a within-sequence split: first 4 frames train, the rest test
        "manyview_test_0": {
            "train": [entry(r) for r in records[:4]],
            "val": [],
            "test": [entry(r) for r in records[4:]],
        },
    }
    paths = {}
    for name, content in set_lists.items():
        paths[name] = category_dir / "set_lists" / f"set_lists_{name}.json"
        paths[name].write_text(json.dumps(content), encoding="utf-8")
    if with_pointcloud:
        import trimesh

        pts = OBJECT_CENTER + rng.uniform(-1.0, 1.0, size=(400, 3)) * np.array([0.5, 0.3, 0.4]) + [0.1, 0.05, -0.1]
        colors = np.concatenate([rng.integers(0, 256, (400, 3)), np.full((400, 1), 255)], axis=1).astype(np.uint8)
        trimesh.PointCloud(pts, colors=colors).export(seq_dir / "pointcloud.ply")
    frames = sorted(records, key=lambda r: r["frame_number"])
    return SequenceFixture(root, category_dir, seq_dir, frames, np.stack(eyes), paths)
