"""torch.distributed set-up: the same code path runs one process or many (started by torchrun)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from weakshot_cli.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: object) -> object:
        """Rank 0's value on every process."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def shard(self, items: list) -> list:
        """This process's share of ``items`` (every world-th, from its rank): with items cut the same way on every
        process, each item is handled exactly as one process would handle it."""
        return items[self.rank::self.world]

    def gather(self, value: object) -> list:
        """Every process's ``value``, in rank order, on every process."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def on_main(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on rank 0 alone (claiming a folder, say) while the others wait; its result, or its UserError
        (raised on every process, so none waits forever), on all."""
        outcome: tuple[str, object] = ("ok", None)
        if self.main:
            try:
                outcome = ("ok", fn())
            except UserError as e:
                outcome = ("error", str(e))
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise UserError(value)
        return value


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if name == "cuda":
            return torch.device("cuda", local_rank)
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if name != "cpu":
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device("cpu")


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Read torchrun's environment; NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    torch.set_num_threads(threads)
    return Dist(rank, world, local_rank), device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
