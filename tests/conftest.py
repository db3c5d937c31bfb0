"""Fixtures shared by the test modules."""

import os

import pytest
import torch

# with pytest-xdist's workers (pytest.ini), each worker's torch threads take its share of the cores, not all of them
WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: runs on a CUDA GPU (skipped where there is none); select with -m cuda')


@pytest.fixture
def no_compute(model, monkeypatch):
    """The test module's `model`, failing the test if its backbone runs at all: errors must come before compute."""
    def refuse(*args, **kwargs):
        raise AssertionError('the transformer ran before the input was rejected')
    monkeypatch.setattr(model.model, 'forward_with_cache', refuse)
    return model


@pytest.fixture
def in_process(capsys):
    """Run a command's `main(argv)` in this process (no seconds spent importing torch again), as a finished process:
    its exit status, what it printed, and a `sys.exit('error: ...')` message on stderr where the interpreter puts it."""
    import subprocess

    def run(main, *argv) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code, message = 0, ''
        try:
            main([str(arg) for arg in argv])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            message = exit.code + '\n' if isinstance(exit.code, str) else ''
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(argv), code, out.out, out.err + message)

    return run
