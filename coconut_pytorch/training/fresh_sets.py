"""Training sets drawn anew every epoch (`TrainConfig.fresh_data`), generated and laid out in worker processes ahead
of use.

The generators are unlimited, and a fixed set of thousands of examples gets memorised instead of solved. Each epoch's
set is seeded by (seed, epoch), so a resumed run sees the same sets, and they never use the held-out set's seed.

The workers end with the training process however it ends, SIGKILL included (each holds a few hundred MB, and the
multiprocessing resource tracker lives as long as any of them does): on Linux the kernel kills them when it dies
(PR_SET_PDEATHSIG), and everywhere a thread in each worker ends it once its parent is gone.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing.connection import Connection

import torch

from coconut_pytorch.training.batches import Batch, EpochLayout
from coconut_pytorch.data.example import Example
from coconut_pytorch.data.tasks import Task, get_task
from coconut_pytorch.data.tokenizer import Tokenizer, WordTokenizer, max_target_length


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


def generate_set(task_name: str, task_kwargs: dict, size: int, seed: int, excluded: frozenset[str] = frozenset(),
                 tokenizer: Tokenizer | None = None) -> tuple[list[Example], int]:
    """A task's generated set (without `excluded` questions) and its `max_target_length` under `tokenizer` (default:
    the task's own word tokenizer, as a from-scratch run builds it), from picklable arguments so that a worker
    process can make both off the training process."""
    task = get_task(task_name, **task_kwargs)
    examples = generate_excluding(task, size, seed, excluded)
    return examples, max_target_length(examples, tokenizer if tokenizer is not None else WordTokenizer(task.vocabulary()))


def generate_epoch(task_name: str, task_kwargs: dict, size: int, seed: int, layout: EpochLayout, epoch: int, excluded: frozenset[str] = frozenset()) -> tuple[list[Batch], int]:
    """Epoch `epoch`'s batches from a set generated with `seed` (without `excluded` questions), and the set's
    longest target."""
    examples, longest = generate_set(task_name, task_kwargs, size, seed, excluded, layout.tokenizer)
    return layout.batches(examples, epoch), longest


def generate_epoch_as_arrays(*arguments) -> tuple[list[tuple], int]:
    """`generate_epoch` in a worker: batches go back to the training process as numpy arrays, which pickle by value.
    Tensors would travel as shared-memory file descriptors, one per tensor kept open while it lives: a few epochs of
    ProsQA batches in flight hold thousands, past the usual limit of 1024 open files."""
    batches, longest = generate_epoch(*arguments)
    return [tuple(t.numpy() if t is not None else None for t in batch) for batch in batches], longest


# seconds between a worker's checks that the training process is still its parent
PARENT_CHECK_INTERVAL = 0.5

PR_SET_PDEATHSIG = 1    # from <linux/prctl.h>


class WorkerOrigin:
    """What a worker needs to know about its start: the training process's pid, and whether the thread that spawned
    it is the training process's main thread.

    Both are taken when the worker's arguments are pickled, which multiprocessing does in the thread that starts the
    worker: for `ProcessPoolExecutor` (spawn, no `max_tasks_per_child`, Python 3.9 to 3.14) the thread calling
    `submit`, not the one it was made in."""

    def __init__(self, pid: int | None = None, main_thread: bool = False):
        self.pid = pid if pid is not None else os.getpid()
        self.main_thread = main_thread

    def __reduce__(self):
        return (WorkerOrigin, (os.getpid(), threading.current_thread() is threading.main_thread()))


# a worker's own state (module globals of the worker process; unused in the training process)
worker_stop = None                      # read end of the pipe that `FreshSets.close` (or the parent's death) closes
worker_generating = False               # an epoch is being made (not: idle, or sending one back)
worker_generating_lock = threading.Lock()


def parent_gone(parent_pid: int) -> bool:
    """Whether the training process that spawned this worker has ended."""
    if os.name == 'posix':
        return os.getppid() != parent_pid   # an orphan is re-parented (to init or a subreaper)
    parent = multiprocessing.parent_process()   # Windows does not re-parent: ask the parent's process handle
    return parent is not None and not parent.is_alive()


def die_with_spawning_thread():
    """On Linux, have the kernel SIGKILL this process when the thread that spawned it ends (the only way a worker
    also goes when its parent is SIGKILLed while it computes). Elsewhere, or if prctl fails, nothing: the watch
    thread still ends the worker, within `PARENT_CHECK_INTERVAL`."""
    if not sys.platform.startswith('linux'):
        return
    try:
        ctypes.CDLL(None, use_errno = True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def stopped(stop: Connection, timeout: float = 0.) -> bool:
    """Whether `FreshSets.close` closed the other end of `stop` (or the process holding it ended), waiting up to
    `timeout` seconds for it."""
    return stop.poll(timeout)   # nothing is ever sent: readable means the end of the pipe


def watch_parent(parent_pid: int, stop: Connection) -> None:
    """A worker's daemon thread: ends the worker when the training process is gone, or when `FreshSets.close` asked
    it to stop while the worker makes an epoch nobody will use. An idle worker is left to the pool's own shutdown,
    and one sending an epoch back is never cut short: the training process would wait forever for the rest of it."""
    while True:
        closing = stopped(stop, PARENT_CHECK_INTERVAL)
        if parent_gone(parent_pid):
            os._exit(1)   # not sys.exit: that would end this thread only
        if closing:
            with worker_generating_lock:
                if worker_generating:
                    os._exit(0)
            time.sleep(PARENT_CHECK_INTERVAL)


def start_worker(origin: WorkerOrigin, stop: Connection) -> None:
    """Initializer of each worker process: tie its life to the training process (see the module docstring)."""
    global worker_stop
    worker_stop = stop
    # one intra-op thread: a worker's work is Python, and torch's default of a thread per core in each of several
    # workers leaves the training process's host thread waiting for cores in every small parallel region it runs
    # (`loop.host_threads`)
    torch.set_num_threads(1)
    # Ctrl-C signals the whole process group: the training process handles it and closes the pool, while a worker
    # would print a traceback and break the pool under it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the death signal fires when the spawning *thread* ends: only the main thread is sure to live as long as the
    # process (another could end while the pool is still in use, and kill healthy workers)
    if origin.main_thread:
        die_with_spawning_thread()
    # the parent may have died before the death signal was set (it is then never sent)
    if parent_gone(origin.pid):
        os._exit(1)
    threading.Thread(target = watch_parent, args = (origin.pid, stop), name = 'watch-parent', daemon = True).start()


def generate_in_worker(*arguments) -> tuple[list[tuple], int]:
    """`generate_epoch_as_arrays` as a worker runs it: marked as generating (so that `close` may end the worker), and
    not started at all after `close`."""
    global worker_generating
    with worker_generating_lock:
        if worker_stop is not None and stopped(worker_stop):
            os._exit(0)
        worker_generating = True
    try:
        return generate_epoch_as_arrays(*arguments)
    finally:
        with worker_generating_lock:
            worker_generating = False


def default_workers() -> int:
    """Worker processes for fresh sets: most of the spare cores, at most 4 (a GPU epoch of ProsQA trains faster than
    one process generates it), at least 1."""
    return max(1, min(4, (os.cpu_count() or 2) - 2))


class FreshSets:
    """The batches of `fresh_data` epochs, each generated and laid out in a worker process while earlier epochs train.

    Generating 20,000 ProsQA examples and laying them out takes several seconds of Python: in line, longer than a
    GPU epoch with CUDA graphs. Up to `workers` epochs are prepared ahead.
    The batches are the ones `generate_epoch` makes in line (sets seeded by `fresh_data_seed`), so results and
    resumes do not depend on the workers; if they cannot start or fail, an epoch is made in line.
    The workers end with the training process, whatever kills it; `close` ends those still making an epoch."""

    def __init__(self, task: str, task_kwargs: dict, size: int, seed: int, total_epochs: int, layout: EpochLayout,
                 first_epoch: int = 1, workers: int | None = None, excluded: frozenset[str] = frozenset()):
        self.task, self.task_kwargs, self.size, self.seed, self.total_epochs = task, task_kwargs, size, seed, total_epochs
        self.excluded = frozenset(excluded)     # held-out questions no training set may ask
        self.layout = layout
        self.workers = workers if workers is not None else default_workers()
        self.pending: dict[int, Future] = {}
        try:
            # spawn, not fork: the parent may hold CUDA state and threads. The workers' parent must be this process
            # (not a fork server) for them to see it die
            context = multiprocessing.get_context('spawn')
            # a pipe, not an Event: each worker gets its end when it is spawned, while an Event's named semaphore is
            # gone once this object is, and a worker still starting up then fails to unpickle it
            stop, self.stop = context.Pipe(duplex = False)
            self.pool = ProcessPoolExecutor(max_workers = self.workers, mp_context = context, initializer = start_worker,
                                            initargs = (WorkerOrigin(), stop))
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
                self.pending[ahead] = self.pool.submit(generate_in_worker, *self.arguments(ahead))
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
        """Stop the workers without waiting: idle ones leave at once, and one still making an epoch (nobody will use
        it) ends within `PARENT_CHECK_INTERVAL` instead of finishing it (and holding the interpreter's exit until
        then). Later `get`s make their epochs in line."""
        if self.pool is not None:
            # not Process.terminate through the pool's private process list: a worker killed while sending an epoch
            # back would leave the pool's thread waiting forever for the rest, and the interpreter's exit with it
            self.stop.close()
            self.pool.shutdown(wait = False, cancel_futures = True)
            self.pool = None
        self.pending.clear()


def held_out_seed(seed: int) -> int:
    """Seed of a run's generated held-out set (its first training set uses `seed` itself)."""
    return seed + 10 ** 6


def fresh_data_seed(seed: int, epoch: int) -> int:
    """Seed of epoch `epoch`'s training set under `fresh_data` (epoch 0 uses the run's own seed). For seeds >= 0 it
    is always above `held_out_seed(seed)`, and distinct per epoch."""
    return (seed + 1) * 2_000_003 + epoch
