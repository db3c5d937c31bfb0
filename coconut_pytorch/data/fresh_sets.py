"""Training sets drawn anew every epoch (`TrainConfig.fresh_data`), generated and laid out in worker processes ahead
of use.

The generators are unlimited, and a fixed set of thousands of examples gets memorised instead of solved. Each epoch's
set is seeded by (seed, epoch), so a resumed run sees the same sets, and they never use the held-out set's seed.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from coconut_pytorch.curriculum import Batch, EpochLayout
from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tasks import Task, get_task
from coconut_pytorch.data.tokenizer import WordTokenizer, max_target_length


def generate_excluding(task: Task, size: int, seed: int, excluded: frozenset[str] = frozenset()) -> list[Example]:
    """`size` examples generated from `seed`, none asking a question in `excluded` (a run's held-out questions):
    `task.generate(size, seed)` less those, topped up from further seeds derived from `seed`. Without it a held-out
    set from another seed still repeats training questions wherever the task has few of them (4-digit running
    sums: 10,000 questions, so 8,000 draws cover about half)."""
    examples = [e for e in task.generate(size, seed = seed) if e.question not in excluded]
    for round in range(1, 65):
        if len(examples) >= size:
            break
        extra = task.generate(2 * (size - len(examples)) + 16, seed = derived_seed(seed, round))
        examples += [e for e in extra if e.question not in excluded]
    if len(examples) < size:
        raise ValueError(f'the task yields too few examples outside the {len(excluded)} held-out questions to fill a training set of {size}')
    return examples[:size]


def derived_seed(seed: int, round: int) -> int:
    # far above every seed a run uses for its own sets (held_out_seed, fresh_data_seed)
    return 10 ** 12 + seed * 1_000 + round


def generate_set(task_name: str, task_kwargs: dict, size: int, seed: int, excluded: frozenset[str] = frozenset()) -> tuple[list[Example], int]:
    """A task's generated set (without `excluded` questions) and its `max_target_length` (under the task's own
    tokenizer, as training builds it), from picklable arguments so that a worker process can make both off the
    training process."""
    task = get_task(task_name, **task_kwargs)
    examples = generate_excluding(task, size, seed, excluded)
    return examples, max_target_length(examples, WordTokenizer(task.vocabulary()))


def generate_epoch(task_name: str, task_kwargs: dict, size: int, seed: int, layout: EpochLayout, epoch: int, excluded: frozenset[str] = frozenset()) -> tuple[list[Batch], int]:
    """Epoch `epoch`'s batches from a set generated with `seed` (without `excluded` questions), and the set's
    longest target."""
    examples, longest = generate_set(task_name, task_kwargs, size, seed, excluded)
    return layout.batches(examples, epoch), longest


def generate_epoch_as_arrays(*arguments) -> tuple[list[tuple], int]:
    """`generate_epoch` in a worker: batches go back to the training process as numpy arrays, which pickle by value.
    Tensors would travel as shared-memory file descriptors, one per tensor kept open while it lives: a few epochs of
    ProsQA batches in flight hold thousands, past the usual limit of 1024 open files."""
    batches, longest = generate_epoch(*arguments)
    return [tuple(t.numpy() if t is not None else None for t in batch) for batch in batches], longest


def default_workers() -> int:
    """Worker processes for fresh sets: most of the spare cores, at most 4 (a GPU epoch of ProsQA trains faster than
    one process generates it), at least 1."""
    return max(1, min(4, (os.cpu_count() or 2) - 2))


class FreshSets:
    """The batches of `fresh_data` epochs, each generated and laid out in a worker process while earlier epochs train.

    Generating 20,000 ProsQA examples and laying them out takes several seconds of Python: in line, longer than a
    GPU epoch with CUDA graphs. Up to `workers` epochs are prepared ahead.
    The batches are the ones `generate_epoch` makes in line (sets seeded by `fresh_data_seed`), so results and
    resumes do not depend on the workers; if they cannot start or fail, an epoch is made in line."""

    def __init__(self, task: str, task_kwargs: dict, size: int, seed: int, total_epochs: int, layout: EpochLayout,
                 first_epoch: int = 1, workers: int | None = None, excluded: frozenset[str] = frozenset()):
        self.task, self.task_kwargs, self.size, self.seed, self.total_epochs = task, task_kwargs, size, seed, total_epochs
        self.excluded = frozenset(excluded)     # held-out questions no training set may ask
        self.layout = layout
        self.workers = workers if workers is not None else default_workers()
        self.pending: dict[int, Future] = {}
        try:
            # spawn, not fork: the parent may hold CUDA state and threads
            self.pool = ProcessPoolExecutor(max_workers = self.workers, mp_context = multiprocessing.get_context('spawn'))
        except (OSError, NotImplementedError, ValueError):
            self.pool = None
        self.submit_ahead(first_epoch)

    def arguments(self, epoch: int) -> tuple:
        return (self.task, self.task_kwargs, self.size, fresh_data_seed(self.seed, epoch), self.layout, epoch, self.excluded)

    def submit_ahead(self, epoch: int):
        """Have epochs `epoch` to `epoch + workers - 1` in the making."""
        for ahead in range(epoch, min(epoch + self.workers, self.total_epochs)):
            if self.pool is None or ahead in self.pending:
                continue
            try:
                self.pending[ahead] = self.pool.submit(generate_epoch_as_arrays, *self.arguments(ahead))
            except RuntimeError:  # the pool broke or was shut down
                self.pool = None

    def get(self, epoch: int) -> tuple[list[Batch], int]:
        """Epoch `epoch`'s batches and its set's longest target, as `generate_epoch` returns them."""
        self.submit_ahead(epoch)
        future = self.pending.pop(epoch, None)
        try:
            made = future.result() if future is not None else None
        except Exception:  # the worker died or raised: make the epoch here instead
            made = None
        self.submit_ahead(epoch + 1)
        if made is None:
            return generate_epoch(*self.arguments(epoch))
        arrays, longest = made
        return [Batch(*(torch.from_numpy(a) if a is not None else None for a in batch)) for batch in arrays], longest

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait = False, cancel_futures = True)
            self.pool = None


def held_out_seed(seed: int) -> int:
    """Seed of a run's generated held-out set (its first training set uses `seed` itself)."""
    return seed + 10 ** 6


def fresh_data_seed(seed: int, epoch: int) -> int:
    """Seed of epoch `epoch`'s training set under `fresh_data` (epoch 0 uses the run's own seed). For seeds >= 0 it
    is always above `held_out_seed(seed)`, and distinct per epoch."""
    return (seed + 1) * 2_000_003 + epoch
