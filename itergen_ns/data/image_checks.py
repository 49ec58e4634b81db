"""Cheap checks of real input images and cameras, shared by the parsers; every error is one line naming the file
and the field at fault, raised while parsing (before any image is cached or any training step runs).

* EXIF orientation: cameras (CO3D annotations, transforms.json) describe the *stored* pixel grid, but viewers and
  many tools show a JPEG with an EXIF ``Orientation`` other than 1 rotated or mirrored, and some loaders apply it.
  Which grid the poses were estimated on is ambiguous, so such images are refused (``ImageOrientationError``).
* size: the image's stored size must be the one its camera was given for (``ImageSizeError``).
* intrinsics: finite, focal lengths > 0, principal point inside the image (``IntrinsicsError``).
* poses: finite, and a rotation block that is a rotation (orthonormal, det +1; ``PoseError``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
_ORIENTATION_NAMES = {
    2: "mirrored",
    3: "rotated 180 degrees",
    4: "mirrored vertically",
    5: "mirrored and rotated 90 degrees",
    6: "rotated 90 degrees clockwise",
    7: "mirrored and rotated 270 degrees",
    8: "rotated 90 degrees counter-clockwise",
}


class InputDataError(ValueError):
    """A real-data input is inconsistent; the message is one line naming the file and field."""


class ImageOrientationError(InputDataError):
    """The image carries an EXIF orientation other than 1 (its displayed and stored grids differ)."""


class ImageSizeError(InputDataError):
    """The image's size is not the size its camera was given for."""


class IntrinsicsError(InputDataError):
    """Intrinsics are not finite, not positive, or put the principal point outside the image."""


class PoseError(InputDataError):
    """A camera pose is not finite or not rigid."""


def _orientation(im: Image.Image) -> int:
    """EXIF Orientation without decoding the pixels (PIL's PNG getexif() decodes the whole image; a PNG's eXIf chunk
    comes before its image data, where PIL's header parse has already put it in ``info``)."""
    if im.format == "PNG":
        raw = im.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(EXIF_ORIENTATION, 1)
    return im.getexif().get(EXIF_ORIENTATION, 1)


def image_size(path: Path, what: str = "", unreadable: str = "raise") -> Optional[Tuple[int, int]]:
    """``(width, height)`` of the stored pixels of ``path`` (header only); refuses EXIF-rotated images.

    ``what`` says where the image is listed (e.g. ``"frames[3].file_path"``). A file PIL cannot open raises
    InputDataError, or with ``unreadable="skip"`` gives None (for callers whose later decoding names the file).
    """
    where = f" ({what})" if what else ""
    try:
        with Image.open(path) as im:
            size = im.size
            orientation = _orientation(im)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: image not found{where}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if unreadable == "skip":
            return None
        raise InputDataError(f"{path}: cannot read image{where} ({type(err).__name__}: {err})") from err
    try:
        orientation = int(orientation)
    except (TypeError, ValueError):
        orientation = 0
    if orientation != 1:
        name = _ORIENTATION_NAMES.get(orientation, "an invalid value")
        raise ImageOrientationError(
            f"{path}: EXIF Orientation={orientation} ({name}){where}, so the displayed image is not the stored pixel "
            "grid the camera describes; rotate pixels and camera together and drop the tag, or drop the tag if the "
            "camera was estimated on the stored pixels"
        )
    return int(size[0]), int(size[1])


def check_image_size(
    path: Path, width: int, height: int, field: str, what: str = "", unreadable: str = "raise"
) -> None:
    """The stored size of ``path`` is ``width x height``; ``field`` names where those numbers come from.
    ``unreadable="skip"``: files PIL cannot open are left to the caller's decoding (which names them)."""
    got = image_size(path, what, unreadable)
    if got is not None and got != (int(width), int(height)):
        raise ImageSizeError(
            f"{path}: image is {got[0]}x{got[1]} (W x H) but {field} says {int(width)}x{int(height)}"
            + (f" ({what})" if what else "")
        )


def check_intrinsics(
    fx: float, fy: float, cx: float, cy: float, width: int, height: int, where: str, fields: Sequence[str]
) -> None:
    """Finite, positive focal lengths and a principal point inside the ``width x height`` image.

    ``fields`` names (fx, fy, cx, cy) as stored, e.g. ``("fl_x", "fl_y", "cx", "cy")``.
    """
    values = (fx, fy, cx, cy)
    for name, value in zip(fields, values):
        if not math.isfinite(float(value)):
            raise IntrinsicsError(f"{where}: {name} is {value}; expected a finite number")
    for name, value in zip(fields[:2], values[:2]):
        if float(value) <= 0:
            raise IntrinsicsError(f"{where}: {name} is {value}; expected a focal length > 0 px")
    if not (0.0 <= float(cx) <= float(width) and 0.0 <= float(cy) <= float(height)):
        raise IntrinsicsError(
            f"{where}: principal point ({fields[2]}, {fields[3]}) = ({float(cx):.6g}, {float(cy):.6g}) px lies outside "
            f"the {int(width)}x{int(height)} (W x H) image; the intrinsics do not belong to this image size"
        )


def check_finite_pose(matrix, where: str, field: str) -> None:
    """Every entry of a pose (nested lists or array) is a finite number."""
    flat: list = []
    for row in matrix:
        flat.extend(row if isinstance(row, (list, tuple)) else list(row))
    for value in flat:
        try:
            ok = math.isfinite(float(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise PoseError(f"{where}: {field} holds {value!r}; expected finite numbers")


def check_rigid_pose(matrix, where: str, field: str, tol: float = 1e-3) -> None:
    """The 3x3 rotation block of a (finite) camera-to-world pose is a rotation: R^T R = I and det R = +1 within
    ``tol`` (a scaled, sheared or mirrored camera is not a camera nerfstudio can render)."""
    import numpy as np

    rot = np.asarray(matrix, dtype=np.float64)[:3, :3]
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    det = float(np.linalg.det(rot))
    if err > tol or abs(det - 1.0) > tol:
        raise PoseError(
            f"{where}: {field} is not rigid (rotation block has |R^T R - I| = {err:.3g}, det R = {det:.3g}); "
            "expected an orthonormal rotation with det +1 and no scale"
        )
