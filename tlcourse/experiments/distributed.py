"""Training on several processes (GPUs) with ``torchrun`` and ``DistributedDataParallel``.

One process per GPU (or per CPU slot), each with a full copy of the model and its own shard of
the training data; after every backward pass DDP averages the gradients over the processes, so
the copies stay identical. ``fit`` (:mod:`tlcourse.train`) is the same training loop as on one
device; this module holds the pieces around it, and the :class:`Distributed` callback that
plugs them into ``fit``::

    ctx = distributed.init_from_env()              # reads torchrun's RANK, WORLD_SIZE, ...
    settings = runtime.device_settings(ctx.device)
    model = distributed.wrap(model, settings)      # device + channels_last, then DDP
    train_dl = distributed.train_loader(train_ds, settings, batch_size=64, seed=0)
    val_dl = distributed.eval_loader(val_ds, settings, batch_size=256)
    history = train.fit(model, train_dl, val_dl, epochs=3, settings=settings,
                        callbacks=[distributed.Distributed()], checkpoint_dir=...)
    distributed.cleanup()

Run it with ``torchrun --standalone --nproc_per_node=N script.py`` (``scripts/finetune_ddp.py``
is the course's full-size fine-tuning run). Without torchrun the same code runs as a single
process: :func:`init_from_env` then starts no process group, :func:`wrap` does not wrap, and
the loaders shuffle as usual.

Backend: NCCL on CUDA, gloo on the CPU. Every helper here is safe to call when no process
group exists (it then acts as the single process it is).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from tlcourse._io import atomic_save
from tlcourse.runtime import DeviceSettings, make_loader, select_device
from tlcourse.train import Callback, EpochStats, Run

__all__ = [
    "DistContext",
    "Distributed",
    "DistEnv",
    "ShardSampler",
    "all_reduce",
    "barrier",
    "broadcast_buffers",
    "cleanup",
    "env_info",
    "eval_loader",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "main_first",
    "print0",
    "rank",
    "save_on_main",
    "train_loader",
    "unwrap",
    "world_size",
    "wrap",
]

# --------------------------------------------------------------------------------------------
# Where am I: torchrun's environment and the process group
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistEnv:
    """The process's place in a torchrun job, from its environment variables."""

    rank: int  # RANK: 0 .. world_size - 1 over all machines
    local_rank: int  # LOCAL_RANK: 0 .. local_world_size - 1 on this machine (its GPU index)
    world_size: int  # WORLD_SIZE: number of processes in the job
    local_world_size: int  # LOCAL_WORLD_SIZE: number of processes on this machine


def env_info(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """Parse ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (and ``LOCAL_WORLD_SIZE``) as torchrun
    sets them; ``None`` when they are absent (a plain ``python script.py``).

    Raises:
        ValueError: only some of them are set, or they are not consistent integers.
    """
    env = os.environ if environ is None else environ
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    present = [n for n in names if n in env]
    if not present:
        return None
    if len(present) != len(names):
        missing = [n for n in names if n not in env]
        raise ValueError(f"{', '.join(present)} set but not {', '.join(missing)}: launch with torchrun.")
    try:
        rank_, local, world = (int(env[n]) for n in names)
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError as err:
        raise ValueError(f"torchrun's variables must be integers: {err}") from err
    if world < 1 or not 0 <= rank_ < world or not 0 <= local < local_world <= world:
        raise ValueError(
            f"Inconsistent torchrun variables: RANK={rank_} LOCAL_RANK={local} "
            f"WORLD_SIZE={world} LOCAL_WORLD_SIZE={local_world}."
        )
    return DistEnv(rank=rank_, local_rank=local, world_size=world, local_world_size=local_world)


@dataclass(frozen=True)
class DistContext:
    """What :func:`init_from_env` set up: this process's rank, device and backend."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # "nccl", "gloo", or None when no process group was started

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, writes checkpoints and reports."""
        return self.rank == 0


def is_distributed() -> bool:
    """Whether a process group is running (``init_from_env`` under torchrun, or your own)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process)."""
    return rank() == 0


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((n for n in names if n == "lo" or n.startswith("lo")), None)


def _hostname_resolves() -> bool:
    try:
        socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return False
    return True


def _gloo_interface(env: DistEnv) -> None:
    """Point gloo at the loopback interface on a single machine whose hostname does not resolve
    (offline, containers), unless ``GLOO_SOCKET_IFNAME`` is set already.

    Gloo picks its network interface by resolving the hostname; torch 2.14 falls back to
    loopback with a warning when that fails, older versions raised. For a job that runs entirely
    on this machine, loopback is the right choice, so say it explicitly.
    (torchrun itself needs ``--local-addr=127.0.0.1`` in that situation: see
    ``scripts/finetune_ddp.py``.)
    """
    if "GLOO_SOCKET_IFNAME" in os.environ or env.local_world_size != env.world_size:
        return
    if not _hostname_resolves():
        loopback = _loopback_interface()
        if loopback is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = loopback


def init_from_env(
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    timeout: datetime.timedelta = datetime.timedelta(minutes=10),
) -> DistContext:
    """Start the process group from torchrun's environment and pick this process's device.

    - Under torchrun with CUDA: device ``cuda:LOCAL_RANK`` (made current), backend NCCL.
    - Under torchrun without CUDA (or ``device="cpu"``): the CPU, backend gloo.
    - Without torchrun: no process group; the device is ``select_device(device)``.

    ``backend`` overrides the choice. Rendezvous is ``env://`` (``MASTER_ADDR``/``MASTER_PORT``
    from torchrun). On a single machine whose hostname does not resolve, gloo is pointed at the
    loopback interface. Call :func:`cleanup` at the end.

    Raises:
        RuntimeError: more local processes than GPUs.
    """
    env = env_info()
    if env is None:
        return DistContext(rank=0, local_rank=0, world_size=1, device=select_device(device), backend=None)

    wanted = None if device is None else torch.device(device) if str(device) != "auto" else None
    use_cuda = torch.cuda.is_available() and (wanted is None or wanted.type == "cuda")
    if use_cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={env.local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                "start at most that many processes per node (--nproc_per_node)."
            )
        chosen = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")  # gloo: the CPU (MPS has no DDP backend)
    backend = backend or ("nccl" if use_cuda else "gloo")
    if "gloo" in backend:
        _gloo_interface(env)
    if not is_distributed():
        kwargs: dict[str, Any] = {"device_id": chosen} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                                world_size=env.world_size, timeout=timeout, **kwargs)
    return DistContext(rank=env.rank, local_rank=env.local_rank, world_size=env.world_size,
                       device=chosen, backend=backend)


def cleanup() -> None:
    """Destroy the process group, if any (call at the end of every rank's script)."""
    if is_distributed():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; else itself."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def wrap(model: nn.Module, settings: DeviceSettings, *, sync_batchnorm: bool = False, **ddp_kwargs: Any) -> nn.Module:
    """Prepare ``model`` for ``settings`` (device, channels_last) and wrap it in DDP.

    Without a process group the prepared model comes back unwrapped. DDP broadcasts rank 0's
    weights to the other ranks when it wraps, so they start identical even if each rank built
    the model from a different seed. ``sync_batchnorm`` converts BatchNorm to ``SyncBatchNorm``
    (statistics over the global batch; worth it with small per-GPU batches; CUDA only).
    ``ddp_kwargs`` go to ``DistributedDataParallel`` (e.g. ``find_unused_parameters=True`` when
    some trainable layers are skipped in forward).
    """
    if sync_batchnorm and settings.device.type == "cuda" and is_distributed():
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    settings.prepare(model)
    if not is_distributed():
        return model
    device_ids = [settings.device.index] if settings.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order: disjoint shards that cover the dataset
    exactly once, **without** the padding of ``DistributedSampler`` (which repeats samples so that
    every rank has as many). For evaluation, where a repeated sample would bias the metrics and
    ranks may run a different number of batches (no gradients to synchronise)."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.num_replicas = world_size() if num_replicas is None else num_replicas
        self.rank = (dist.get_rank() if is_distributed() else 0) if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        self.size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))


def train_loader(
    dataset: Dataset,
    settings: DeviceSettings,
    *,
    batch_size: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A shuffling training loader; in a process group, over this rank's shard.

    With a process group: a ``DistributedSampler(shuffle=True, seed=seed)``; ``fit`` calls its
    ``set_epoch`` every epoch, so each epoch is a new permutation, the same on every rank, cut
    into disjoint shards (padded with repeats so that all ranks run the same number of steps,
    which DDP needs). ``batch_size`` is per process: the global batch is ``world_size`` times it.
    Without: ordinary shuffling with the loader's own generator (re-seeded by ``fit``).
    Pinned memory follows ``settings`` (:func:`tlcourse.runtime.make_loader`).
    """
    if is_distributed():
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
            seed=seed, drop_last=drop_last)
        return make_loader(dataset, settings, batch_size=batch_size, sampler=sampler,
                           num_workers=num_workers, drop_last=drop_last, **kwargs)
    return make_loader(dataset, settings, batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed), num_workers=num_workers,
                       drop_last=drop_last, **kwargs)


def eval_loader(
    dataset: Dataset,
    settings: DeviceSettings,
    *,
    batch_size: int | None = None,
    num_workers: int = 0,
    **kwargs: Any,
) -> DataLoader:
    """An evaluation loader; in a process group, over this rank's :class:`ShardSampler` shard
    (every sample exactly once over all ranks; ``fit`` sums the ranks' counts)."""
    sampler: ShardSampler | None = ShardSampler(dataset) if is_distributed() else None
    return make_loader(dataset, settings, batch_size=batch_size, sampler=sampler,
                       num_workers=num_workers, **kwargs)


# --------------------------------------------------------------------------------------------
# Collectives (each a no-op without a process group)
# --------------------------------------------------------------------------------------------

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def _collective_device(device: torch.device | None) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")  # gloo reduces CPU tensors


def all_reduce(
    values: Sequence[float], *, op: Literal["sum", "max", "min"] = "sum", device: torch.device | None = None
) -> list[float]:
    """``values`` combined over all ranks (sum, max or min), in float64; as floats without a
    process group. ``device``: where the tensor lives for the collective (CUDA for NCCL; gloo
    reduces on the CPU)."""
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)}, not {op!r}")
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, _OPS[op]))
    return [float(v) for v in tensor.cpu()]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, ...) to every rank, in place.

    DDP broadcasts them at the start of each training forward, so after the last training step
    each rank holds the statistics of its own last batch; this makes them equal again."""
    if not is_distributed():
        return
    with torch.no_grad():
        for buffer in module.buffers():
            target = buffer if buffer.is_contiguous() else buffer.contiguous()
            if dist.get_backend() == "nccl" and target.device.type != "cuda":
                target = target.cuda()
            dist.broadcast(target, src=src)
            if target is not buffer:
                buffer.copy_(target)


def barrier() -> None:
    """Wait until every rank gets here."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the others: e.g. a dataset that rank 0 downloads or
    extracts once and the others then find in place::

        with distributed.main_first():
            dataset = data.cifar10("train", transform=tf)
    """
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only (flushed, so lines from a torchrun job arrive in order)."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def save_on_main(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Rank 0 writes ``obj`` atomically (:func:`tlcourse._io.atomic_save`); every rank
    then waits at a barrier, so the file is complete when any rank returns. Call it on all ranks."""
    path = Path(path)
    try:
        if is_main_process():
            atomic_save(obj, path)
    finally:
        barrier()
    return path


# --------------------------------------------------------------------------------------------
# The fit callback
# --------------------------------------------------------------------------------------------


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler (a ``DistributedSampler`` reshuffles with it)."""
    samplers = {id(s): s for s in (getattr(loader, "sampler", None),
                                   getattr(getattr(loader, "batch_sampler", None), "sampler", None))
                if s is not None and callable(getattr(s, "set_epoch", None))}
    for sampler in samplers.values():
        sampler.set_epoch(epoch)


class Distributed(Callback):
    """Plugs ``fit`` into a ``torchrun`` process group; harmless in a single process.

    Each rank gets its own per-epoch seed and only rank 0 shows progress and writes checkpoints;
    ``DistributedSampler``s get ``set_epoch``; after training, rank 0's BatchNorm statistics go
    to every rank (so all ranks validate and keep the weights rank 0 saves); the epoch's loss,
    accuracy and counts are summed over the ranks; a barrier at the end makes rank 0's files
    complete before ``fit`` returns anywhere. Unfreezing layers during a DDP run is not
    supported: DDP fixes the trainable parameters when it wraps the model.
    """

    order = -10  # before Checkpoints, which must know the rank

    def on_fit_start(self, run: Run) -> None:
        run.rank = rank()
        run.reduce = lambda values, op: all_reduce(values, op=op, device=run.settings.device)

    def on_epoch_start(self, run: Run) -> None:
        _set_sampler_epoch(run.train_loader, run.epoch)
        _set_sampler_epoch(run.val_loader, run.epoch)

    def after_train(self, run: Run, stats: EpochStats) -> EpochStats:
        broadcast_buffers(run.core)
        return self._summed(run, stats)

    def after_eval(self, run: Run, stats: EpochStats) -> EpochStats:
        stats = self._summed(run, stats)
        if run.epoch == run.start_epoch:
            _warn_if_val_not_covered(run.val_loader, stats.n, world_size())
        return stats

    def on_fit_end(self, run: Run) -> None:
        barrier()

    @staticmethod
    def _summed(run: Run, stats: EpochStats) -> EpochStats:
        """``stats`` summed over the ranks (the slowest rank's time)."""
        if world_size() == 1:
            return stats
        loss_sum, correct, n = run.reduce([stats.loss * stats.n, round(stats.accuracy * stats.n), stats.n], "sum")
        seconds = run.reduce([stats.seconds], "max")[0]
        total = int(round(n))
        return EpochStats(loss=loss_sum / total, accuracy=round(correct) / total, n=total, seconds=seconds)


def _warn_if_val_not_covered(val_loader: Any, n: int, world: int) -> None:
    try:
        size = len(val_loader.dataset)
    except (AttributeError, TypeError):
        return
    if n not in (size, world * size):
        warnings.warn(
            f"The ranks validated {n} samples in all, but the validation set has {size}: a "
            "DistributedSampler pads (or drops) samples so that every rank gets the same number, "
            "which biases the metrics. Use tlcourse.experiments.distributed.eval_loader (disjoint shards, "
            "no padding) or give every rank the full validation set.",
            UserWarning,
            stacklevel=4,
        )
