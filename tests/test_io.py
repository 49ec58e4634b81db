"""Tests of itergen_ns.io: atomic writes, and clean-up after killed writers that spares live ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

from itergen_ns import io

HOLD = """
import sys, time
from pathlib import Path
from itergen_ns import io
with io.atomic_path(Path(sys.argv[1]), directory=sys.argv[2] == "dir") as tmp:
    if sys.argv[2] == "dir":
        (tmp / "half").write_text("half")
    else:
        tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(120)
"""


def hold_writer(path: Path, kind: str) -> tuple[subprocess.Popen, Path]:
    """A writer in another process stopped mid-write; returns it and its temporary."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), kind], stdout=subprocess.PIPE, text=True, env=env)
    return proc, Path(proc.stdout.readline().strip())


def test_writes_replace_whole_files_and_leave_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    io.atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}'
    io.atomic_write_text(target, "second")
    assert target.read_text() == "second"
    io.atomic_savez(tmp_path / "frames.npz", renders=np.arange(6).reshape(2, 3))
    assert np.array_equal(np.load(tmp_path / "frames.npz")["renders"], np.arange(6).reshape(2, 3))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["frames.npz", "result.json", "sub"]


def test_an_error_mid_write_keeps_the_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with io.atomic_path(target, directory=True) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target, directory=True) as tmp:
            (tmp / "weights").write_text("v2, half")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with io.atomic_path(target, directory=True) as tmp:
        (tmp / "other").write_text("v3")
    assert sorted(p.name for p in target.iterdir()) == ["other"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_clean_up_after_dead_writers(tmp_path: Path) -> None:
    (tmp_path / ".tmp-a.json-999999").write_text("half")  # a killed file writer
    (tmp_path / ".tmp-b-999998").mkdir()  # a killed directory writer
    (tmp_path / ".old-c-999997").mkdir()  # killed between its two renames: c is missing, so c goes back
    (tmp_path / ".old-c-999997" / "weights").write_text("complete")
    (tmp_path / "d").mkdir()
    (tmp_path / ".old-d-999996").mkdir()  # killed after the second rename: the old one is just deleted
    (tmp_path / ".del-e-999995").mkdir()  # killed mid-delete
    (tmp_path / ".tmp-orbit.mp4-999994.mp4").write_bytes(b"")  # a temporary that keeps its suffix
    (tmp_path / ".hidden-file").write_text("not ours")
    assert io.remove_dead_temporaries(tmp_path, names=["a.json"]) == 1
    assert (tmp_path / ".tmp-b-999998").exists()
    assert io.remove_dead_temporaries(tmp_path) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-file", "c", "d"]
    assert (tmp_path / "c" / "weights").read_text() == "complete"


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_live_writer_is_spared_and_a_killed_one_cleaned(tmp_path: Path, kind: str) -> None:
    target = tmp_path / ("out.txt" if kind == "file" else "out")
    if kind == "file":
        io.atomic_write_text(target, "complete")
    else:
        with io.atomic_path(target, directory=True) as tmp:
            (tmp / "part").write_text("complete")
    proc, live = hold_writer(target, kind)
    try:
        assert live.exists() and live.name.startswith(f".tmp-{target.name}-")
        assert io.remove_dead_temporaries(tmp_path) == 0  # its lock is held: not touched
        assert live.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert live.exists()  # a SIGKILL runs no clean-up ...
    assert io.remove_dead_temporaries(tmp_path) == 1  # ... but the kernel dropped the lock with the process
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    content = target.read_text() if kind == "file" else (target / "part").read_text()
    assert content == "complete"


def test_remove_tree_hides_the_directory_first(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "step_1").mkdir()
    (tmp_path / "step_1" / "w").write_text("x")
    monkeypatch.setattr(io, "_remove", lambda p: None)  # a kill right after the rename
    io.remove_tree(tmp_path / "step_1")
    assert [p.name.split("-")[:2] for p in tmp_path.iterdir()] == [[".del", "step_1"]]
    monkeypatch.undo()
    assert io.remove_dead_temporaries(tmp_path) == 1 and not list(tmp_path.iterdir())
