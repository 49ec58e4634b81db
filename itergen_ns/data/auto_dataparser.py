"""Default dataparser of the project's methods: CO3D sequence folders go to the CO3D parser, anything else to
the nerfstudio-format sparse parser, so `ns-train itergen --data co3d/hydrant/<seq>` needs no subcommand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Type

from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig

from itergen_ns.data.splits import SparseSplitConfig


@dataclass
class ItergenDataParserConfig(DataParserConfig, SparseSplitConfig):
    """Picks ``co3d`` or ``itergen-scene`` from what ``data`` points at; use those subcommands for their options."""

    _target: Type = field(default_factory=lambda: DataParser)
    data: Path = Path()
    frame_size: Optional[int] = None
    """The shared framing (``itergen_ns.data.framing``, centred square crop resized to this side) for either parser.
    None: the parser's default (CO3D: 256; nerfstudio-format: full frames); 0: full frames."""

    def resolve(self) -> DataParserConfig:
        """The concrete parser config for ``data``, carrying this config's split."""
        from itergen_ns.data.co3d_dataparser import CO3DDataParserConfig, is_co3d_sequence
        from itergen_ns.data.sparse_dataparser import SparseNerfstudioDataParserConfig

        split: Dict[str, Any] = dict(
            num_input_views=self.num_input_views,
            input_view_seed=self.input_view_seed,
            input_views=self.input_views,
            input_view_rule=self.input_view_rule,
        )
        if self.frame_size is not None:
            split["frame_size"] = self.frame_size if self.frame_size > 0 else None
        if is_co3d_sequence(self.data):
            return CO3DDataParserConfig(data=self.data, **split)
        return SparseNerfstudioDataParserConfig(data=self.data, **split)

    def setup(self, **kwargs) -> DataParser:
        return self.resolve().setup(**kwargs)
