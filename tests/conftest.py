"""Fixtures shared by the test modules."""

import pytest


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: runs on a CUDA GPU (skipped where there is none); select with -m cuda')


@pytest.fixture
def no_compute(model, monkeypatch):
    """The test module's `model`, failing the test if its backbone runs at all: errors must come before compute."""
    def refuse(*args, **kwargs):
        raise AssertionError('the transformer ran before the input was rejected')
    monkeypatch.setattr(model.model, 'forward_with_cache', refuse)
    return model
