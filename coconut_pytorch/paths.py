"""Path exploration: k answers per prompt from one shared prefill (`generate(..., num_samples = k)`), and a vote
among them.

`generate` returns the k paths of each prompt as `SampledPaths`, ranked by their sequence log-probability;
`majority_vote` picks, per prompt, the answer most of its paths agree on (self-consistency, Wang et al., 2022).

Shapes: b prompts, k paths per prompt, L generated tokens (`max_length`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from numbers import Integral
from typing import NamedTuple

import torch
from torch import Tensor

from einops import rearrange, repeat

from coconut_pytorch.inputs import PAD_ID
from coconut_pytorch.helpers import exists


class SampledPaths(NamedTuple):
    """What `generate(..., num_samples = k)` returns: each prompt's k paths, most probable first."""
    tokens: Tensor          # (b, k, L) generated ids, -1 after eos
    log_probs: Tensor       # (b, k) each path's sequence log-probability (see `generate`), descending per prompt
    sample_index: Tensor    # (b, k) which of the prompt's k draws (the rows of the (b k) batch, in order) each path is


def rank_paths(tokens: Tensor, log_probs: Tensor, num_samples: int) -> SampledPaths:
    """The (b k) rows of a batch that decoded k paths per prompt (each prompt's adjacent), as `SampledPaths`: per
    prompt, sorted by log-probability, highest first; equal ones keep the order they were drawn in."""
    tokens = rearrange(tokens, '(b k) n -> b k n', k = num_samples)
    log_probs = rearrange(log_probs, '(b k) -> b k', k = num_samples)

    log_probs, sample_index = log_probs.sort(dim = -1, descending = True, stable = True)
    tokens = tokens.gather(1, repeat(sample_index, 'b k -> b k n', n = tokens.shape[-1]))
    return SampledPaths(tokens, log_probs, sample_index)


def vote(answers: Sequence[Hashable], log_probs: Sequence[float]) -> tuple[int, int]:
    """The index of the winning path among one prompt's paths, and its vote count.

    The answer given by the most paths wins; among answers given equally often, the one whose paths' log-probabilities
    sum highest; among those, the one first in `answers`. The index is that answer's first path (with paths ranked,
    its most probable). One rule for every vote: `majority_vote` on token sequences, the evaluation on answer text."""
    if len(answers) == 0 or len(answers) != len(log_probs):
        raise ValueError(f'a vote needs one log-probability per answer and at least one answer, got {len(answers)} answers and {len(log_probs)} log-probabilities')

    tally: dict[Hashable, list] = {}        # answer -> [votes, summed log-probability, first index]
    for index, (answer, log_prob) in enumerate(zip(answers, log_probs)):
        entry = tally.setdefault(answer, [0, 0., index])
        entry[0] += 1
        entry[1] += float(log_prob)

    votes, _, first = max(tally.values(), key = lambda entry: (entry[0], entry[1], -entry[2]))
    return first, votes


def answer_key(row: Sequence[int], eos_token_id: int | None) -> tuple[int, ...]:
    """The answer a path gave, compared across paths: its ids up to the first padding (-1), or the first eos (not
    included), whichever comes first."""
    key = []
    for token in row:
        if token == PAD_ID or (exists(eos_token_id) and token == eos_token_id):
            break
        key.append(token)
    return tuple(key)


def majority_vote(paths: SampledPaths, eos_token_id: int | None = None, return_votes: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Per prompt, the answer most of its k paths gave (`vote`: ties go to the higher summed log-probability).

    Answers are compared as token sequences cut at the first padding or `eos_token_id` (`answer_key`), so paths that
    differ only after their eos agree.

    Returns the chosen paths' tokens (b, L), as generated (each the most probable path with that answer); with
    `return_votes`, also the (b,) number of paths that gave it.
    """
    if not isinstance(paths, SampledPaths):
        raise TypeError(f'paths must be the SampledPaths that generate(..., num_samples = k) returns, got {type(paths).__name__}')
    if paths.tokens.ndim != 3 or paths.log_probs.shape != paths.tokens.shape[:2]:
        raise ValueError(f'paths must hold tokens (b, k, L) and log_probs (b, k), got {tuple(paths.tokens.shape)} and {tuple(paths.log_probs.shape)}')
    if exists(eos_token_id) and (not isinstance(eos_token_id, Integral) or isinstance(eos_token_id, bool)):
        raise TypeError(f'eos_token_id must be an int or None, got {type(eos_token_id).__name__}')

    chosen, counts = [], []
    # one read from the device, then the vote on the host
    for rows, log_probs in zip(paths.tokens.tolist(), paths.log_probs.tolist()):
        index, votes = vote([answer_key(row, eos_token_id) for row in rows], log_probs)
        chosen.append(index)
        counts.append(votes)

    index = torch.tensor(chosen, dtype = torch.long, device = paths.tokens.device)
    answers = paths.tokens[torch.arange(len(chosen), device = index.device), index]
    if not return_votes:
        return answers
    return answers, torch.tensor(counts, dtype = torch.long, device = paths.tokens.device)
