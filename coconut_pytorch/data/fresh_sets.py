"""Training sets drawn anew every epoch (`TrainConfig.fresh_data`), generated in a worker process ahead of use.

The generators are unlimited, and a fixed set of thousands of examples gets memorised instead of solved. Each epoch's
set is seeded by (seed, epoch), so a resumed run sees the same sets, and they never use the held-out set's seed.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor

from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tasks import get_task
from coconut_pytorch.data.tokenizer import WordTokenizer, max_target_length


def generate_set(task_name: str, task_kwargs: dict, size: int, seed: int) -> tuple[list[Example], int]:
    """A task's generated set and its `max_target_length` (under the task's own tokenizer, as training builds it),
    from picklable arguments so that a worker process can make both off the training process."""
    task = get_task(task_name, **task_kwargs)
    examples = task.generate(size, seed = seed)
    return examples, max_target_length(examples, WordTokenizer(task.vocabulary()))


class FreshSets:
    """The training sets of `fresh_data`, each generated in a worker process while the epoch before it trains.

    Generating 20,000 ProsQA examples and measuring their targets takes several seconds of Python; in line, that is
    a fifth of a GPU epoch.
    The sets are the ones `generate_set` makes in line (seeded by `fresh_data_seed`), so results and resumes do
    not depend on the worker; if it cannot start or fails, the set is generated in line."""

    def __init__(self, task: str, task_kwargs: dict, size: int, seed: int, total_epochs: int, first_epoch: int = 1):
        self.task, self.task_kwargs, self.size, self.seed, self.total_epochs = task, task_kwargs, size, seed, total_epochs
        self.pending: dict[int, Future] = {}
        try:
            # spawn, not fork: the parent may hold CUDA state and threads
            self.pool = ProcessPoolExecutor(max_workers = 1, mp_context = multiprocessing.get_context('spawn'))
        except (OSError, NotImplementedError, ValueError):
            self.pool = None
        self.submit(first_epoch)

    def arguments(self, epoch: int) -> tuple:
        return (self.task, self.task_kwargs, self.size, fresh_data_seed(self.seed, epoch))

    def submit(self, epoch: int):
        if self.pool is None or epoch >= self.total_epochs or epoch in self.pending:
            return
        try:
            self.pending[epoch] = self.pool.submit(generate_set, *self.arguments(epoch))
        except RuntimeError:  # the pool broke or was shut down
            self.pool = None

    def get(self, epoch: int) -> tuple[list[Example], int]:
        """Epoch `epoch`'s set and its longest target, as `generate_set` returns them; starts generating the next."""
        self.submit(epoch)
        future = self.pending.pop(epoch, None)
        try:
            made = future.result() if future is not None else None
        except Exception:  # the worker died or raised: make the set here instead
            made = None
        self.submit(epoch + 1)
        return made if made is not None else generate_set(*self.arguments(epoch))

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
