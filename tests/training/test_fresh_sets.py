"""A new training set every epoch: seeds apart from the held-out set's, and sets from the worker processes equal to
sets made in line.

FreshSets' worker processes end with the training process however it ends (SIGKILL and SIGTERM included), the
multiprocessing resource tracker with them, and `close` does not leave a worker making an epoch nobody will use.
Those tests start real processes and read /proc, so they run on Linux only. Most of their time is the workers' start
(importing torch)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import coconut_pytorch
from coconut_pytorch.data import WordTokenizer
from coconut_pytorch.data.tasks import get_task
from coconut_pytorch.training.batches import EpochLayout
from coconut_pytorch.training.fresh_sets import FreshSets
from coconut_pytorch.training.schedule import Curriculum

linux_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason = 'finds processes through /proc')


def test_fresh_data_draws_new_sets_apart_from_the_held_out_seed():
    from coconut_pytorch.data.tasks import get_task
    from coconut_pytorch.training.fresh_sets import fresh_data_seed, held_out_seed

    seeds = [fresh_data_seed(seed, epoch) for seed in (0, 1, 7) for epoch in range(1, 50)]
    held_out = {held_out_seed(seed) for seed in (0, 1, 7)}
    assert len(set(seeds)) == len(seeds) and not held_out & set(seeds) and not {0, 1, 7} & set(seeds)

    task = get_task('running_sum', num_digits = 4)
    first, second = (task.generate(64, seed = fresh_data_seed(0, epoch)) for epoch in (1, 2))
    assert [e.question for e in first] != [e.question for e in second]


def test_fresh_sets_from_the_workers_equal_sets_made_in_line():
    from coconut_pytorch.training.batches import EpochLayout
    from coconut_pytorch.training.fresh_sets import FreshSets, fresh_data_seed, generate_epoch
    from coconut_pytorch.data.tasks import get_task

    tokenizer = WordTokenizer(get_task('prosqa').vocabulary())
    curriculum = Curriculum(max_latent_stage = 6, epochs_per_stage = 1, uniform_prob = 0.3)
    # with thought, halting and ordered token targets, so that every field of a batch travels back from the workers
    layout = EpochLayout(tokenizer, curriculum, batch_size = 10, seed = 3, with_thought_targets = True, with_halt_after = True, token_width = 2)
    in_line = {epoch: generate_epoch('prosqa', {}, 24, fresh_data_seed(3, epoch), layout, epoch) for epoch in (1, 2, 3)}

    def same(made, expected):
        (batches, longest), (expected_batches, expected_longest) = made, expected
        assert longest == expected_longest and len(batches) == len(expected_batches) == 3
        for batch, expected_batch in zip(batches, expected_batches):
            assert all(t is not None for t in batch)
            for t, e in zip(batch, expected_batch):
                assert torch.equal(t, e)

    sets = FreshSets('prosqa', {}, 24, 3, total_epochs = 4, layout = layout, workers = 2)
    try:
        assert sets.pool is not None and sorted(sets.pending) == [1, 2]   # two epochs in the making ahead
        # each worker runs torch on one thread, leaving the other cores to the training process's host work
        assert sets.pool.submit(torch.get_num_threads).result(timeout = 60) == 1
        fetched = {epoch: sets.get(epoch) for epoch in (1, 2, 3)}
        assert not sets.pending  # nothing is generated past the last epoch
    finally:
        sets.close()
    for epoch in (1, 2, 3):
        same(fetched[epoch], in_line[epoch])
    # batches come back by value, not as shared-memory tensors that each hold a file descriptor open
    assert not any(t.is_shared() for batch in fetched[1][0] for t in batch)
    # each epoch is laid out at its own stage (most rows; uniform_prob mixes in others)
    assert [int(fetched[epoch][0][0].num_thoughts.mode().values) for epoch in (1, 2, 3)] == [1, 2, 3]

    # workers that cannot run fall back to making the epoch in line
    broken = FreshSets('prosqa', {}, 24, 3, total_epochs = 4, layout = layout, workers = 1)
    broken.close()
    same(broken.get(2), in_line[2])


# the worker processes

ROOT = Path(coconut_pytorch.__file__).resolve().parents[1]   # the checkout under test, for the child processes

SMALL, LARGE = 32, 200_000      # examples in a small epoch, and in a large one (a worker takes ~30 s on it)

# A training process in miniature: its worker makes epoch 1 (small) and so is up; on 'go' it takes epoch 1, and the
# worker starts on epoch 2, large ('busy') or small ('idle': done at once). Waiting for 'go' keeps it from taking the
# CPU while the other one is tested.
CHILD = f'''
import sys, time
from concurrent.futures import wait
from coconut_pytorch.training.batches import EpochLayout
from coconut_pytorch.training.schedule import Curriculum
from coconut_pytorch.training.fresh_sets import FreshSets
from coconut_pytorch.data.tasks import get_task
from coconut_pytorch.data.tokenizer import WordTokenizer

class LongEpochs(FreshSets):
    def arguments(self, epoch):
        task, kwargs, size, *rest = super().arguments(epoch)
        return (task, kwargs, {LARGE} if epoch > 1 and sys.argv[1] == 'busy' else {SMALL}, *rest)

task = get_task('running_sum', num_digits = 3)
layout = EpochLayout(WordTokenizer(task.vocabulary()), Curriculum(max_latent_stage = 2, epochs_per_stage = 1), batch_size = 8, seed = 0)
sets = LongEpochs('running_sum', dict(num_digits = 3), {SMALL}, 0, total_epochs = 6, layout = layout, workers = 1)
wait(list(sets.pending.values()))
print('ready', flush = True)
sys.stdin.readline()
sets.get(1)
print('busy', flush = True)
time.sleep(600)
'''


class LongEpochs(FreshSets):
    """Epoch 1 is small, so that the worker is soon up; the later ones take it half a minute."""

    def arguments(self, epoch: int) -> tuple:
        task, kwargs, size, *rest = super().arguments(epoch)
        return (task, kwargs, SMALL if epoch == 1 else LARGE, *rest)


def process_table() -> dict[int, tuple[str, int, str]]:
    """pid -> (state, parent pid, command line) of every process /proc shows."""
    table = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f'/proc/{entry}/stat').read_text()
            command = Path(f'/proc/{entry}/cmdline').read_bytes().replace(b'\0', b' ').decode(errors = 'replace')
        except OSError:     # it ended meanwhile
            continue
        # the command name in parentheses may hold spaces: the fields after it start past the last ')'
        state, parent = stat[stat.rindex(')') + 2:].split()[:2]
        table[int(entry)] = (state, int(parent), command)
    return table


def children(pid: int) -> dict[int, str]:
    """The multiprocessing children of `pid` (pool workers and the resource tracker): pid -> command line."""
    return {child: command for child, (state, parent, command) in process_table().items()
            if parent == pid and state != 'Z' and 'multiprocessing' in command}


def living(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` still running (a zombie has ended, whoever is to reap it; a pid with another command line
    is a new process)."""
    table = process_table()
    return {pid: command for pid, command in processes.items() if pid in table and table[pid][0] != 'Z' and table[pid][2] == command}


def wait_until_gone(processes: dict[int, str], timeout: float) -> dict[int, str]:
    """Wait up to `timeout` seconds for `processes` to end; those still running then."""
    deadline = time.monotonic() + timeout
    while living(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return living(processes)


def kill_all(processes: dict[int, str]):
    """SIGKILL those of `processes` (started by a test) still running, so that a failure leaves nothing behind."""
    for pid in living(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


KILLS = [('SIGKILL', 'busy'), ('SIGTERM', 'idle')]     # (signal to the training process, its worker then)


@pytest.fixture(scope = 'module')
def training_processes():
    """The miniature training processes of KILLS, started together (their start is mostly importing torch)."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
    started = {kill: subprocess.Popen([sys.executable, '-c', CHILD, kill[1]], cwd = ROOT, env = env, stdin = subprocess.PIPE,
                                      stdout = subprocess.PIPE, text = True)
               for kill in KILLS}
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
        process.wait()


def wait_for(process: subprocess.Popen, word: str, timeout: float = 120.):
    """Wait for `process` to print `word` on a line of its own."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ''
    assert line.strip() == word, f'the training process did not say {word!r} (exit code {process.poll()}, said {line!r})'


@linux_only
@pytest.mark.parametrize('signal_name, worker', KILLS)
def test_workers_and_resource_tracker_end_with_a_killed_training_process(training_processes, signal_name, worker):
    process = training_processes[signal_name, worker]
    wait_for(process, 'ready')
    process.stdin.write('go\n')
    process.stdin.flush()
    wait_for(process, 'busy')
    processes = children(process.pid)
    workers = {pid: command for pid, command in processes.items() if 'multiprocessing.spawn' in command}
    trackers = {pid: command for pid, command in processes.items() if 'resource_tracker' in command}
    assert len(workers) == 1 and len(trackers) == 1, processes

    try:
        process.send_signal(getattr(signal, signal_name))
        process.wait(timeout = 10)
        # at once (a worker still importing torch would go once it has)
        left = wait_until_gone(workers, timeout = 20)
        assert not left, f'{worker} worker still running after the training process got {signal_name}: {left}'
        # the tracker reads a pipe that the training process and every worker hold open: it ends with the last
        left = wait_until_gone(trackers, timeout = 5)
        assert not left, f'resource tracker still running after the training process and its workers ended: {left}'
    finally:
        kill_all({**workers, **trackers})


def long_epochs(workers: int) -> LongEpochs:
    task = get_task('running_sum', num_digits = 3)
    layout = EpochLayout(WordTokenizer(task.vocabulary()), Curriculum(max_latent_stage = 2, epochs_per_stage = 1), batch_size = 8, seed = 0)
    return LongEpochs('running_sum', dict(num_digits = 3), SMALL, 0, total_epochs = 4, layout = layout, workers = workers)


@linux_only
def test_close_ends_a_worker_busy_on_an_epoch_nobody_will_use():
    before = children(os.getpid())
    sets = long_epochs(workers = 1)
    workers = {}
    try:
        sets.get(1)     # the worker is up; epoch 2 (large) is now in the making
        workers = {pid: command for pid, command in children(os.getpid()).items() if pid not in before and 'multiprocessing.spawn' in command}
        assert len(workers) == 1, workers
        sets.close()
        left = wait_until_gone(workers, timeout = 5)
        assert not left, f'close() left a worker making an epoch nobody will use: {left}'
        assert not sets.pending
    finally:
        sets.close()
        kill_all(workers)


@linux_only
def test_ctrl_c_is_left_to_the_training_process():
    # Ctrl-C signals the whole process group: the training process handles it (and closes the pool), while a
    # worker would raise KeyboardInterrupt into the epoch it makes, or die of it when idle
    before = children(os.getpid())
    sets = long_epochs(workers = 1)
    workers = {}
    try:
        sets.get(1)
        workers = {pid: command for pid, command in children(os.getpid()).items() if pid not in before and 'multiprocessing.spawn' in command}
        assert len(workers) == 1, workers
        os.kill(next(iter(workers)), signal.SIGINT)
        time.sleep(0.5)
        assert living(workers), 'SIGINT ended the worker'
        assert not sets.pending[2].done(), 'SIGINT broke off the epoch the worker was making'
    finally:
        sets.close()
        kill_all(workers)
