"""CO3D v2 support: annotation/layout reading, camera conversion and normalisation, per-frame image processing."""

from itergen_ns.data.co3d.annotations import CO3DDataError, CO3DFrame, CO3DLayout, is_co3d_sequence

__all__ = ["CO3DDataError", "CO3DFrame", "CO3DLayout", "is_co3d_sequence"]
