"""coconut-pytorch: Chain of Continuous Thought (Coconut) in PyTorch, with a Transformer of its own."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from coconut_pytorch.coconut import Coconut, Intermediates, LossBreakdown
from coconut_pytorch.kv_cache import KVCache
from coconut_pytorch.paths import SampledPaths, majority_vote
from coconut_pytorch.sampling import min_p_filter, top_k_filter
from coconut_pytorch.transformer import Transformer

if TYPE_CHECKING:
    from coconut_pytorch.training.checkpoints import LoadedRun

__all__ = ['load', 'Coconut', 'Transformer', 'KVCache', 'Intermediates', 'LossBreakdown', 'min_p_filter', 'top_k_filter', 'SampledPaths', 'majority_vote']


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> LoadedRun:
    """A checkpoint written by training (`coconut-train`, `train_toy.py`) as a `LoadedRun`: model, tokenizer, config,
    curriculum and the saved state, on `device` (default: 'cuda' where there is a GPU, else 'cpu'). Its `answer`
    turns questions into answers with the checkpoint's own number of thoughts:

        run = coconut_pytorch.load('runs/running_sum-coconut-TIME/checkpoint.pt')
        run.answer(['3 1 4 1'])

    Raises a one-line ValueError naming the file for a missing or damaged checkpoint."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'path must be a str or a path, got {type(path).__name__}')
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f'device must be a str, a torch.device or None, got {type(device).__name__}')

    # imported here: `import coconut_pytorch` stays light, without the training package
    from coconut_pytorch.training.checkpoints import load_run
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return load_run(path, device = device)
