"""The run's 3D coordinate frame for a CO3D sequence: scene centre and normalisation from the input cameras.

The normalisation is computed from the train split's cameras only, so it is the same for every split and does not
depend on the held-out frames. CO3D's ``pointcloud.ply`` is reconstructed from *all* frames: it is only read for the
explicit leak flags (``load_3d_points``, ``center_method="pointcloud"``), never for evaluation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import numpy as np
import torch

from itergen_ns.data.camera_utils import nearest_point_to_axes
from itergen_ns.data.co3d import annotations as ann
from itergen_ns.data.co3d import geometry as geo

CenterMethod = Literal["axes", "pointcloud", "none"]
Points = Tuple[np.ndarray, np.ndarray]  # CO3D-world xyz [P, 3] float64, rgb uint8 [P, 3]


@dataclass
class Frame3D:
    """The run's 3D frame: computed from the input cameras (and, only when asked for, CO3D's point cloud)."""

    center: torch.Tensor  # [3] scene centre in CO3D world
    normalization: geo.Normalization
    points: Optional[Points]  # CO3D-world xyz [P, 3], rgb uint8 [P, 3]


def load_points(layout: ann.CO3DLayout) -> Optional[Points]:
    """CO3D-world point cloud of the sequence (path from sequence_annotations, else ``pointcloud.ply``).

    Only for the explicit leak flags (load_3d_points, center_method="pointcloud"): it is reconstructed from all frames.
    """
    path = layout.sequence_dir / "pointcloud.ply"
    record = ann.load_sequence_annotation(layout)
    if record and isinstance(record.get("point_cloud"), dict) and record["point_cloud"].get("path"):
        path = layout.root / record["point_cloud"]["path"]
    if not path.is_file():
        return None
    import trimesh  # nerfstudio dependency; imported lazily as it is only needed here

    cloud = trimesh.load(path, process=False)
    xyz = np.asarray(getattr(cloud, "vertices", np.zeros((0, 3))), dtype=np.float64)
    if xyz.shape[0] == 0:
        return None
    colors = np.asarray(getattr(cloud, "colors", np.zeros((0, 4))))
    rgb = colors[:, :3].astype(np.uint8) if colors.shape[0] == xyz.shape[0] else np.full_like(xyz, 128, np.uint8)
    return xyz, rgb


def compute_frame3d(
    inputs: torch.Tensor,
    layout: ann.CO3DLayout,
    center_method: CenterMethod,
    orient: bool,
    camera_radius: Optional[float],
    load_3d_points: bool,
    stacklevel: int = 2,
) -> Frame3D:
    """Centre and normalisation from the input cameras ``inputs`` ([N, 3, 4] OpenGL c2w, CO3D world).

    ``center_method``: the point nearest to the input camera axes, CO3D's origin ("none"), or the robust bounding box
    of the point cloud ("pointcloud"; without a point cloud it warns, at ``stacklevel`` as for ``warnings.warn``
    called here, and uses the camera axes). The point cloud is loaded when that or ``load_3d_points`` asks for it.
    """
    points = load_points(layout) if (load_3d_points or center_method == "pointcloud") else None
    if center_method == "pointcloud" and points is not None:
        lo, hi = np.quantile(points[0], [0.01, 0.99], axis=0)  # robust bounding box
        center = torch.from_numpy((lo + hi) / 2.0)
    elif center_method == "none":
        center = torch.zeros(3, dtype=torch.float64)
    else:
        if center_method == "pointcloud":
            warnings.warn(
                f"CO3D: no point cloud for {layout.sequence_dir}; centring on the camera axes", stacklevel=stacklevel
            )
        center = nearest_point_to_axes(inputs)
    normalization = geo.compute_normalization(inputs, center=center, orient=orient, radius=camera_radius)
    return Frame3D(center, normalization, points)
