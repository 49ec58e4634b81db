"""Dataparser entry points (``nerfstudio.dataparser_configs``). Imports only dataparser modules, because nerfstudio
loads these while its own dataparser registry is still being built."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from itergen_ns.data.auto_dataparser import ItergenDataParserConfig
from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig
from itergen_ns.data.sparse_dataparser import SparseNerfstudioDataParserConfig

itergen_data = DataParserSpecification(
    config=ItergenDataParserConfig(),
    description="itergen: CO3D sequence or nerfstudio-format scene, detected from --data, sparse input split",
)
co3d = DataParserSpecification(config=CO3DDataParserConfig(), description="CO3D v2 sequence (sparse input split)")
itergen_scene = DataParserSpecification(
    config=SparseNerfstudioDataParserConfig(), description="nerfstudio-format scene with a sparse input split"
)
