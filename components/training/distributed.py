"""Data-parallel plumbing: who am I in a `torchrun` job, and the few collectives the trainer needs.

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
`init_distributed()` reads them and joins the process group (gloo on CPU, NCCL on CUDA). A
plain `python` run has none of them and stays a single process with no process group.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, saves and registers."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_context(environ: dict[str, str] | None = None) -> DistContext:
    """The context `torchrun` describes in the environment (single process when it describes none)."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    return DistContext(rank=int(env.get("RANK", "0")), world_size=world, local_rank=int(env.get("LOCAL_RANK", "0")),
                       local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))))


def init_distributed(timeout_seconds: int = 1800) -> DistContext:
    """Join the process group `torchrun` set up; a no-op returning a single-process context otherwise."""
    import torch
    import torch.distributed as dist

    ctx = env_context()
    if ctx.world_size <= 1:
        return ctx
    if dist.is_initialized():
        return current_context()
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES", None) != "" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    log.info("joined process group: rank %d of %d (%s)", ctx.rank, ctx.world_size, backend)
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size, backend)


def current_context() -> DistContext:
    """The context of an initialised process group, else a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    env = env_context()
    return DistContext(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world_size,
                       dist.get_backend())


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_sum(ctx: DistContext, values: list[float], device: str = "cpu") -> list[float]:
    """Element-wise sum of `values` over all processes (float64, so counts stay exact)."""
    if not ctx.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every process."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
