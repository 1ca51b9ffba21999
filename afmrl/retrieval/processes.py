"""Splitting a split's encoding or attribute extraction across the processes of one launch.

``torchrun --nproc-per-node N -m afmrl index ...`` (or ``accelerate launch ... -m afmrl index``)
starts N copies of the command. :func:`launched_processes` joins the process group the launcher set
up (through ``accelerate``'s ``PartialState``: rank, world size, barriers; gloo, since these commands
compute on the CPU) and hands out a :class:`Processes`: this copy's rank among N. Each process takes
its part of the rows with ``datasets.distributed.split_dataset_by_node`` (a contiguous chunk, rank 0
first, so the parts concatenated in rank order are the split in its order) and keeps its finished
shards in its own folder, ``<work>/part-RRRRR-of-NNNNN``; the main process (rank 0) waits for every
part, then writes the output alone. Outside such a launch (or with N = 1) there is one process, no
part folder and no waiting: exactly the single-process behaviour.

A process that dies stops the launch (the launcher ends the others); rerunning the same command
with the same N resumes every part from its finished shards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

#: How long a process waits at a barrier for the others. Generous on purpose: after a resume one
#: part may be finished while another still has most of its rows to encode, and the main process
#: builds the index while the others wait; a process that dies ends the launch anyway.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Processes:
    """This process's ``rank`` among the ``count`` processes of a launch (``Processes()``: alone)."""

    rank: int = 0
    count: int = 1

    @property
    def main(self) -> bool:
        """True for the process that writes the final output (rank 0)."""
        return self.rank == 0

    def part(self, split: Dataset, rank: int | None = None) -> Dataset:
        """The rows of process ``rank`` (default: this one), in order; the whole split when alone."""
        if self.count == 1:
            return split
        from datasets.distributed import split_dataset_by_node

        rank = self.rank if rank is None else rank
        return split_dataset_by_node(split, rank=rank, world_size=self.count)

    def part_folder(self, folder: str | os.PathLike, rank: int | None = None) -> Path:
        """Where process ``rank`` keeps its shards: ``folder`` itself when alone,
        ``folder/part-RRRRR-of-NNNNN`` otherwise."""
        if self.count == 1:
            return Path(folder)
        rank = self.rank if rank is None else rank
        return Path(folder) / f"part-{rank:05d}-of-{self.count:05d}"

    def label(self) -> str:
        """``""`` when alone, else ``"process R of N: "`` (a log-line prefix)."""
        return "" if self.count == 1 else f"process {self.rank} of {self.count}: "

    def wait(self) -> None:
        """Barrier: return once every process got here (no-op when alone)."""
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def gather(self, item: Any) -> list[Any]:
        """Every process's picklable ``item``, in rank order (``[item]`` when alone)."""
        if self.count == 1:
            return [item]
        import torch.distributed as dist

        items: list[Any] = [None] * self.count
        dist.all_gather_object(items, item)
        return items


@contextlib.contextmanager
def launched_processes(timeout: timedelta = BARRIER_TIMEOUT) -> Iterator[Processes]:
    """The processes of this launch, for the duration of a command.

    Under ``torchrun`` / ``accelerate launch`` with more than one process (``WORLD_SIZE`` > 1) this
    joins the launcher's process group (gloo; created here unless the caller already has one, and
    then destroyed at the end, so that the interpreter exits cleanly); otherwise it yields
    ``Processes()`` and touches nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Processes()
        return
    import torch.distributed as dist
    from accelerate import PartialState

    owned = not dist.is_initialized()
    state = PartialState(cpu=True, timeout=timeout)
    try:
        yield Processes(state.process_index, state.num_processes)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["BARRIER_TIMEOUT", "Processes", "launched_processes"]
