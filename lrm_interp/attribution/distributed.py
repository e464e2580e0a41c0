"""Data-parallel attribution on torch.distributed: traces sharded over ranks.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment; gloo on CPU, NCCL on GPU) or inside
an initialised process group, :func:`lrm_interp.attribute` runs each stage on this rank's
traces (``dataset[rank::world_size]``) and exchanges the per-trace statistics:

1. DoM sums of every trace are gathered on every rank (in dataset order) before the steering
   vectors are formed, so every rank uses the very same vectors;
2. AtP dot products are gathered the same way; every rank builds the same result, rank 0
   writes it. Resume works per rank: each rank keeps the partials of its own traces in the
   shared ``out_dir`` (file names are per trace, so ranks never write the same file).

The statistics travel with ``all_gather_object`` (CPU tensors, torch's own transport); nothing
is stored that way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


#: what each variable of ``torchrun``'s environment read here holds: (least value, meaning)
_ENV_INTS = {
    "WORLD_SIZE": (1, "the number of processes torchrun starts"),
    "RANK": (0, "this process's rank, 0..WORLD_SIZE-1"),
    "LOCAL_RANK": (0, "this process's rank on its machine: the GPU it uses"),
}


def _env_int(name: str, default: int) -> int:
    """The integer environment variable ``name`` (:data:`_ENV_INTS`; unset or blank: ``default``),
    else ``ValueError`` naming it, its value and what it should be (``int('abc')`` said "invalid
    literal for int() with base 10: 'abc'", naming no variable, H9-E1)."""
    raw = os.environ.get(name, "")
    least, meaning = _ENV_INTS[name]
    if not raw.strip():
        return default
    try:
        v = int(raw.strip())
    except ValueError:
        v = None
    if v is None or v < least:
        raise ValueError(
            f"${name}={raw!r} in the environment: must be an integer >= {least} ({meaning}); "
            "fix it or unset it (torchrun sets it for each process it starts)"
        )
    return v


def env_rank_world() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as ``torchrun`` sets them in the environment, ``(0, 1)`` when unset,
    checked: each must be a whole number (``WORLD_SIZE`` >= 1, ``RANK`` >= 0) and ``RANK`` below
    ``WORLD_SIZE``; else ``ValueError`` naming the variable and the value expected. The command
    line uses it to tell rank 0 (which holds the result folder's lock) from the others."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if rank >= world:
        raise ValueError(
            f"$RANK={rank} in the environment is not below $WORLD_SIZE={world}: a rank is 0..{world - 1}; "
            "fix them or unset them (torchrun sets both for each process it starts)"
        )
    return rank, world


def context() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the default process group from ``torchrun``'s environment
    (gloo without CUDA, NCCL with it) when ``WORLD_SIZE`` > 1 and none exists yet; ``(0, 1)`` otherwise.
    Outside an initialised group the environment is checked first (:func:`env_rank_world`; and
    ``LOCAL_RANK`` for NCCL): a variable that is not a valid number is refused naming it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        _, world = env_rank_world()
        if world <= 1 or not dist.is_available():
            return 0, 1
        local = _env_int("LOCAL_RANK", 0)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size()


def shard(n: int, rank: int, world: int) -> list[int]:
    """Indices of the items rank ``rank`` of ``world`` handles: ``rank, rank + world, ...``."""
    return list(range(rank, n, world))


def gather_ordered(local: Sequence[T], indices: Sequence[int], n: int, world: int) -> list[T]:
    """Every rank's ``local`` items (``local[k]`` belongs at position ``indices[k]``) on every rank,
    as one list of length ``n`` in position order."""
    if world == 1:
        return list(local)
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, [(i, _cpu(x)) for i, x in zip(indices, local)])
    out: list[Any] = [None] * n
    for part in parts:
        for i, x in part:
            out[i] = x
    missing = [i for i, x in enumerate(out) if x is None]
    if missing:
        raise RuntimeError(f"distributed gather lost items {missing[:5]} (of {n})")
    return out


def sum_counts(counts: dict[str, dict[str, int]], world: int) -> dict[str, dict[str, int]]:
    """Resume counters summed over ranks."""
    if world == 1:
        return counts
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, counts)
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for stage, c in part.items():
            acc = out.setdefault(stage, {})
            for k, v in c.items():
                acc[k] = acc.get(k, 0) + v
    return out


def barrier(world: int) -> None:
    """Wait for every rank (no-op in one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _cpu(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return x


__all__ = ["context", "env_rank_world", "shard", "gather_ordered", "sum_counts", "barrier"]
