"""tlcourse.experiments.distributed and fit under DistributedDataParallel, on the CPU with gloo.

The helpers are tested in this process (environment parsing, samplers, a one-process gloo group);
then ``scripts/finetune_ddp.py`` runs under ``torch.distributed.run`` with two processes on
generated data, and the ranks must end with identical, trained weights after seeing disjoint
shards, and a resumed run must end where a straight one does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from tlcourse import models, runtime, train
from tlcourse.experiments import distributed
from tlcourse.experiments.distributed import DistEnv, ShardSampler, env_info

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "finetune_ddp.py"
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------- environment parsing


def test_env_info_parses_torchrun_variables():
    assert env_info({}) is None
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    assert env_info(env) == DistEnv(rank=3, local_rank=1, world_size=4, local_world_size=2)
    assert env_info({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}).local_world_size == 1


@pytest.mark.parametrize("env, message", [
    ({"RANK": "0"}, "not LOCAL_RANK, WORLD_SIZE"),
    ({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "integers"),
    ({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "Inconsistent"),
    ({"RANK": "1", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "Inconsistent"),
])
def test_env_info_rejects_broken_environments(env, message):
    with pytest.raises(ValueError, match=message):
        env_info(env)


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.init_from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.device, ctx.is_main) == (0, 1, None, torch.device("cpu"), True)
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.all_reduce([1, 2.5]) == [1.0, 2.5]
    model = nn.Linear(2, 2)
    assert distributed.wrap(model, runtime.device_settings("cpu")) is model  # nothing to wrap
    loader = distributed.train_loader(TensorDataset(torch.arange(8)), runtime.device_settings("cpu"), batch_size=4)
    assert not isinstance(loader.sampler, DistributedSampler)
    distributed.cleanup()  # harmless


def test_epoch_seed_is_unchanged_on_rank_0_and_distinct_elsewhere():
    assert runtime.epoch_seed(5, 2) == runtime.epoch_seed(5, 2, rank=0)
    assert len({runtime.epoch_seed(5, 2, rank=r) for r in range(4)}) == 4


# ------------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("n, world", [(10, 3), (9, 3), (2, 4)])
def test_shard_sampler_covers_every_sample_exactly_once(n, world):
    ds = TensorDataset(torch.arange(n))
    shards = [list(ShardSampler(ds, num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))  # no padding, no repeats
    assert [len(ShardSampler(ds, num_replicas=world, rank=r)) for r in range(world)] == [len(s) for s in shards]
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(ds, num_replicas=world, rank=world)


def test_distributed_callback_calls_set_epoch_on_the_sampler():
    class Sampler(torch.utils.data.Sampler):
        def __init__(self, n):
            self.n, self.epochs = n, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self):
            return self.n

    ds = TensorDataset(torch.randn(8, 3, 4, 4), torch.arange(8) % 2)
    sampler = Sampler(8)
    train.fit(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), DataLoader(ds, batch_size=4, sampler=sampler),
              DataLoader(ds, batch_size=8), epochs=3, progress=False, device="cpu",
              callbacks=[distributed.Distributed()])
    assert sampler.epochs == [1, 2, 3]


# ------------------------------------------------------------------ a one-process gloo group


@pytest.fixture
def gloo_group(tmp_path):
    """A real process group of one (gloo, file rendezvous): the collectives run for real."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_helpers_in_a_process_group(gloo_group, tmp_path, capsys):
    assert distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.all_reduce([1, 2.5]) == [1.0, 2.5]
    assert distributed.all_reduce([3], op="max") == [3.0]
    with pytest.raises(ValueError, match="op must be"):
        distributed.all_reduce([1], op="mean")
    bn = nn.BatchNorm2d(2)
    bn.running_mean += 1
    distributed.broadcast_buffers(bn)
    assert torch.equal(bn.running_mean, torch.ones(2))
    distributed.barrier()
    with distributed.main_first():
        pass
    distributed.print0("only rank 0 prints")
    assert "only rank 0 prints" in capsys.readouterr().out
    path = distributed.save_on_main({"w": torch.ones(2)}, tmp_path / "ckpt" / "x.pt")
    assert torch.equal(train.load_checkpoint(path)["w"], torch.ones(2))

    settings = runtime.device_settings("cpu")
    ds = TensorDataset(torch.arange(10))
    assert isinstance(distributed.train_loader(ds, settings, batch_size=4, seed=3).sampler, DistributedSampler)
    assert distributed.train_loader(ds, settings, batch_size=4, seed=3).sampler.seed == 3
    assert isinstance(distributed.eval_loader(ds, settings, batch_size=4).sampler, ShardSampler)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    wrapped = distributed.wrap(model, settings)
    assert isinstance(wrapped, nn.parallel.DistributedDataParallel) and distributed.unwrap(wrapped) is model
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last) is settings.channels_last
    assert models.state_dict_fingerprint(wrapped) == models.state_dict_fingerprint(model)


def test_prepare_model_refuses_a_ddp_model_on_another_device(gloo_group):
    wrapped = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="before wrapping"):
        runtime.DeviceSettings(device=torch.device("meta")).prepare(wrapped)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(4, 3))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(36) % 3
    images = torch.randn(36, 3, 6, 6, generator=g)
    images[torch.arange(36), labels] += 1.0
    return TensorDataset(images, labels)


def _history(h: train.History) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in h.epochs]


def test_fit_with_ddp_and_every_distributed_branch_equals_plain_fit(gloo_group, tmp_path, monkeypatch):
    """In a group of one, DDP changes nothing: with fit told there are 2 ranks (so every
    collective, the buffer broadcast and the barrier run), it must give plain fit's numbers."""
    settings = runtime.device_settings("cpu")
    plain = _net()
    loader = DataLoader(_data(), batch_size=8, shuffle=True)
    h_plain = train.fit(plain, loader, DataLoader(_data(), batch_size=12), epochs=2, settings=settings, progress=False)

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    model = _net()
    ddp = distributed.wrap(model, settings)
    h_ddp = train.fit(ddp, loader, DataLoader(_data(), batch_size=12), epochs=2, settings=settings,
                      progress=False, checkpoint_dir=tmp_path, callbacks=[distributed.Distributed()])
    assert _history(h_ddp) == _history(h_plain)
    assert models.state_dict_fingerprint(ddp) == models.state_dict_fingerprint(plain)
    # Checkpoints hold the unwrapped model: they load into a plain one.
    last = train.load_checkpoint(tmp_path / "last.pt", _net())
    assert not any(k.startswith("module.") for k in last["model"]) and last["trainable"][0] == "0.weight"


def test_fit_on_another_rank_prints_and_writes_nothing(gloo_group, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    train.fit(_net(), DataLoader(_data(), batch_size=8), DataLoader(_data(), batch_size=12), epochs=1,
              device="cpu", progress=True, checkpoint_dir=tmp_path / "ckpt", callbacks=[distributed.Distributed()])
    captured = capsys.readouterr()
    assert captured.out == "" and "epoch" not in captured.err
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_fit_warns_when_padding_biases_validation(gloo_group, monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    val = DataLoader(_data(), batch_size=12)
    # As if a second rank had seen the same samples: sums double, min/max stay.
    monkeypatch.setattr(distributed, "all_reduce", lambda values, op="sum", device=None: [
        float(v) * (2.0 if op == "sum" else 1.0) for v in values])
    # 72 of 36 validation samples is fine: that is every rank validating the full set.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.fit(_net(), DataLoader(_data(), batch_size=8), val, epochs=1, device="cpu", progress=False,
                  callbacks=[distributed.Distributed()])
    sampler = DistributedSampler(TensorDataset(torch.arange(35)), num_replicas=2, rank=0, shuffle=False)
    padded = DataLoader(TensorDataset(torch.randn(35, 3, 6, 6), torch.arange(35) % 3), batch_size=8, sampler=sampler)
    with pytest.warns(UserWarning, match="pads"):
        train.fit(_net(), DataLoader(_data(), batch_size=8), padded, epochs=1, device="cpu", progress=False,
                  callbacks=[distributed.Distributed()])


# ---------------------------------------------------------------------- two processes, torchrun


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def torchrun(out_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the DDP script under ``python -m torch.distributed.run`` with 2 CPU processes.

    ``--standalone`` rendezvous on a free local port; ``--local-addr=127.0.0.1`` so that the
    workers never need the machine's hostname to resolve (offline CI, containers).
    """
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1",
           "--nproc_per_node=2", str(SCRIPT), "--synthetic", "--model", "tiny", "--image-size", "16",
           "--synthetic-size", "128", "--batch-size", "16", "--no-progress", "--out-dir", str(out_dir), *args]
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun timed out after {timeout}s: {' '.join(cmd)}\n"
                    f"stdout:\n{_text(err.stdout)}\nstderr:\n{_text(err.stderr)}")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def reports(out_dir: Path) -> list[dict]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun(out / "out", "--epochs", "2", "--checkpoint-dir", str(out / "ckpt"))
    return out, proc


def test_two_processes_end_with_identical_trained_weights(straight_run):
    out, proc = straight_run
    r0, r1 = reports(out / "out")
    assert (r0["rank"], r1["rank"], r0["world_size"], r0["backend"]) == (0, 1, 2, "gloo")
    assert r0["final_sha256"] == r1["final_sha256"]
    assert r0["initial_sha256"] == r1["initial_sha256"] != r0["final_sha256"]  # trained
    s0 = torch.load(out / "out" / "rank0.pt", weights_only=True)
    s1 = torch.load(out / "out" / "rank1.pt", weights_only=True)
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert "identical weights on all ranks: True" in proc.stdout
    assert proc.stdout.count("[ddp] done") == 1  # only rank 0 prints
    # Metrics are all-reduced: every rank has the same history, over the whole sets.
    assert r0["history"] == r1["history"] and len(r0["history"]) == 2
    # rank 0 wrote checkpoints of the unwrapped model, equal to the final weights
    last = train.load_checkpoint(out / "ckpt" / "last.pt")
    assert last["epoch"] == 2 and not any(k.startswith("module.") for k in last["model"])
    assert models.state_dict_fingerprint(last["model"]) == r0["final_sha256"]


def test_distributed_sampler_gives_disjoint_shards_each_epoch(straight_run):
    out, _ = straight_run
    r0, r1 = reports(out / "out")
    n = r0["train_size"]
    for epoch in range(2):
        a, b = r0["train_indices"][epoch], r1["train_indices"][epoch]
        assert len(a) == len(b) == n // 2
        assert not set(a) & set(b) and set(a) | set(b) == set(range(n))
    assert r0["train_indices"][0] != r0["train_indices"][1]  # set_epoch: a new shuffle each epoch


def test_resumed_distributed_run_ends_where_the_straight_one_does(straight_run, tmp_path):
    out, _ = straight_run
    torchrun(tmp_path / "first", "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ckpt"))
    proc = torchrun(tmp_path / "resumed", "--epochs", "2", "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert proc.stdout.count("[fit] resumed") == 1  # said once, by rank 0
    straight, resumed = reports(out / "out"), reports(tmp_path / "resumed")
    assert resumed[0]["final_sha256"] == resumed[1]["final_sha256"] == straight[0]["final_sha256"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed[0]["history"]) == strip(straight[0]["history"])
    assert resumed[0]["train_indices"] == [straight[0]["train_indices"][1]]  # epoch 2's shard again


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    try:
        return subprocess.run(["unshare", "-u", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -u` (root) to fake an unresolvable hostname")
def test_torchrun_works_when_the_hostname_does_not_resolve(tmp_path):
    """Offline machines often have a hostname that no resolver knows: the launch must not need it."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1")
    launch = (f"hostname tlcourse-no-such-host-7q && {sys.executable} -m torch.distributed.run --standalone "
              f"--local-addr=127.0.0.1 --nproc_per_node=2 {SCRIPT} --synthetic --model tiny --image-size 8 "
              f"--synthetic-size 32 --batch-size 8 --epochs 1 --no-progress --out-dir {tmp_path}")
    try:
        proc = subprocess.run(["unshare", "-u", "sh", "-c", launch], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"hung with an unresolvable hostname\nstdout:\n{_text(err.stdout)}\nstderr:\n{_text(err.stderr)}")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    r0, r1 = reports(tmp_path)
    assert r0["final_sha256"] == r1["final_sha256"]
