"""Programmatic training config: one override mechanism for every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from itergen_ns.eval import baseline
from itergen_ns.training.runner import TrainSpec, build_config


def test_string_overrides_take_the_fields_types(tmp_path: Path) -> None:
    spec = TrainSpec(
        method="itergen",
        data=tmp_path,
        output_dir=tmp_path,
        steps=100,
        overrides={
            "pipeline.model.sh_degree": "1",
            "pipeline.datamanager.p_input": "1",  # float field: an int string becomes 1.0
            "pipeline.datamanager.one_shot": "true",
            "pipeline.generator.checkpoint": "runs/diffusion/latest",  # Optional[Path], None now
        },
    )
    config = build_config(spec)
    assert config.pipeline.model.sh_degree == 1
    assert config.pipeline.datamanager.p_input == 1.0 and isinstance(config.pipeline.datamanager.p_input, float)
    assert config.pipeline.datamanager.one_shot is True
    assert config.pipeline.generator.checkpoint == Path("runs/diffusion/latest")
    assert config.max_num_iterations == 100
    with pytest.raises(ValueError, match="sh_degre"):
        build_config(TrainSpec(method="itergen", data=tmp_path, output_dir=tmp_path, overrides={"pipeline.model.sh_degre": "1"}))


def test_train_baseline_passes_its_overrides(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def fake_train(config):
        seen["config"] = config
        raise RuntimeError("stop before training")

    monkeypatch.setattr(baseline, "train", fake_train)
    cfg = baseline.TrainBaselineConfig(data=tmp_path, steps=10, overrides={"pipeline.model.sh_degree": "2"})
    with pytest.raises(RuntimeError, match="stop before training"):
        cfg.main()
    assert seen["config"].pipeline.model.sh_degree == 2
