"""Programmatic training config: one override mechanism for every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from itergen_ns.eval import baseline
from itergen_ns.engine.runner import TrainSpec, build_config


def test_string_overrides_take_the_fields_types(tmp_path: Path) -> None:
    spec = TrainSpec(
        method="itergen",
        data=tmp_path,
        output_dir=tmp_path,
        steps=100,
        overrides={
            "pipeline.model.sh_degree": "1",
            "pipeline.datamanager.p_input": "1",  # float field: an int string becomes 1.0
            "pipeline.generation.one_shot": "true",
            "pipeline.generator.checkpoint": "runs/diffusion/latest",  # Optional[Path], None now
        },
    )
    config = build_config(spec)
    assert config.pipeline.model.sh_degree == 1
    assert config.pipeline.datamanager.p_input == 1.0 and isinstance(config.pipeline.datamanager.p_input, float)
    assert config.pipeline.generation.one_shot is True
    assert config.pipeline.generator.checkpoint == Path("runs/diffusion/latest")
    assert config.max_num_iterations == 100
    with pytest.raises(ValueError, match="sh_degre"):
        build_config(
            TrainSpec(method="itergen", data=tmp_path, output_dir=tmp_path, overrides={"pipeline.model.sh_degre": "1"})
        )


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


def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch) -> None:
    """A save killed mid-write leaves neither a truncated step-*.ckpt nor a temporary in the checkpoint folder
    (``--load-dir`` parses every file name there); a finished save loads and prunes as nerfstudio's does."""
    from types import SimpleNamespace

    import torch

    from itergen_ns.engine.trainer import ItergenTrainer

    param = torch.nn.Parameter(torch.arange(3.0))
    opt = torch.optim.Adam([param])
    trainer = SimpleNamespace(
        checkpoint_dir=tmp_path / "run" / "nerfstudio_models",
        pipeline=torch.nn.Linear(2, 2),
        optimizers=SimpleNamespace(optimizers={"p": opt}, schedulers={}),
        grad_scaler=torch.cuda.amp.GradScaler(enabled=False),
        config=SimpleNamespace(save_only_latest_checkpoint=True),
    )
    ItergenTrainer.save_checkpoint(trainer, 10)
    real_save = torch.save

    def dies_mid_write(obj, f, *args, **kwargs):  # f: a path or an open file
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        else:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        ItergenTrainer.save_checkpoint(trainer, 20)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == ["step-000000010.ckpt"]
    assert not list((tmp_path / "run").glob(".*"))
    assert torch.load(trainer.checkpoint_dir / "step-000000010.ckpt", weights_only=False)["step"] == 10
    ItergenTrainer.save_checkpoint(trainer, 30)
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == ["step-000000030.ckpt"]
