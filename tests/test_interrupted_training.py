"""Training killed with SIGKILL mid-epoch or mid-save, in a real subprocess, resumes from its last
whole checkpoint and ends identical to an uninterrupted run. fit's in-process resume equivalence:
tests/test_train.py::test_resumed_run_equals_uninterrupted_run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tlcourse.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent('''
    """Train a tiny model for 4 epochs with checkpoints; optionally stall so it can be killed."""
    import json, sys, time
    from pathlib import Path

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    from tlcourse.train import fit

    ckpt_dir, out, stall = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    out.mkdir(parents=True, exist_ok=True)

    def stall_here(name):
        (out / name).touch()  # tells the parent: kill me now
        time.sleep(300)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = torch.arange(64) % 3
    x[torch.arange(64), y] += 1.0

    class Loader:
        """A DataLoader that stalls in the third batch of epoch 3 when stall == "epoch3"."""
        def __init__(self):
            self.loader = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=8, shuffle=True)
            self.generator = None
            self.epochs = 0
        def __len__(self):
            return len(self.loader)
        def __iter__(self):
            self.epochs += 1
            for i, batch in enumerate(self.loader):
                if stall == "epoch3" and self.epochs == 3 and i == 2:
                    stall_here("mid-epoch")
                yield batch

    if stall == "save2":  # stall halfway through writing epoch 2's last.pt
        real_save = torch.save
        class HalfWriter:
            def __init__(self, f):
                self.f, self.writes = f, 0
            def write(self, b):
                self.f.write(b)
                self.writes += 1
                if self.writes == 10:
                    self.f.flush()
                    stall_here("mid-save")
                return len(b)
            def flush(self):
                self.f.flush()
        def stalling_save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "optimizer" in obj and obj["epoch"] == 2:
                return real_save(obj, HalfWriter(f), *args, **kwargs)
            return real_save(obj, f, *args, **kwargs)
        torch.save = stalling_save

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 3))
    trained = []
    history = fit(model, Loader(), DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16),
                  epochs=4, lr=0.05, device="cpu", seed=3, checkpoint_dir=ckpt_dir, progress=False,
                  on_epoch_end=lambda epoch, stats, m: trained.append(epoch))
    torch.save(model.state_dict(), out / "final.pt")
    (out / "result.json").write_text(json.dumps({
        "trained": trained,
        "history": [{k: v for k, v in e.items() if k != "seconds"} for e in history.epochs],
    }))
''')


def run_child(script: Path, ckpt_dir: Path, out: Path, stall: str = "none") -> dict | None:
    """Run the training script; with ``stall``, SIGKILL it once it signals that it stalled."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt_dir), str(out), stall],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stall == "none":
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr.decode()
        import json
        return json.loads((out / "result.json").read_text())
    signal_file = out / ("mid-epoch" if stall == "epoch3" else "mid-save")
    deadline = time.monotonic() + 180
    while not signal_file.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "the child never reached the point to kill it"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return None


@pytest.fixture(scope="module")
def child_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("child") / "train_child.py"
    path.write_text(CHILD)
    return path


@pytest.fixture(scope="module")
def uninterrupted(child_script, tmp_path_factory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("straight")
    result = run_child(child_script, folder / "ckpt", folder / "out")
    assert result["trained"] == [1, 2, 3, 4]
    return result, torch.load(folder / "out" / "final.pt", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_mid_epoch_resumes_from_the_last_checkpoint(child_script, uninterrupted, tmp_path):
    ckpt = tmp_path / "ckpt"
    run_child(child_script, ckpt, tmp_path / "killed", stall="epoch3")
    assert load_checkpoint(ckpt / "last.pt")["epoch"] == 2  # epochs 1-2 survived the kill

    result = run_child(child_script, ckpt, tmp_path / "resumed")
    assert result["trained"] == [3, 4]  # only the interrupted epoch is trained again
    straight, straight_weights = uninterrupted
    assert result["history"] == straight["history"]
    assert_same_state(torch.load(tmp_path / "resumed" / "final.pt", weights_only=True), straight_weights)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_during_a_save_keeps_the_previous_checkpoint(child_script, uninterrupted, tmp_path):
    ckpt = tmp_path / "ckpt"
    run_child(child_script, ckpt, tmp_path / "killed", stall="save2")
    partial = list(ckpt.glob(".last.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the kill landed mid-write...
    assert load_checkpoint(ckpt / "last.pt")["epoch"] == 1  # ...and last.pt is epoch 1, whole

    result = run_child(child_script, ckpt, tmp_path / "resumed")
    assert result["trained"] == [2, 3, 4]
    assert not list(ckpt.glob(".*.tmp"))  # the resumed run cleared the half-written file
    straight, straight_weights = uninterrupted
    assert result["history"] == straight["history"]
    assert_same_state(torch.load(tmp_path / "resumed" / "final.pt", weights_only=True), straight_weights)
