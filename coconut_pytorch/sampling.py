"""Logit filters and sampling for generation.

A filter takes logits (..., vocab) and returns logits with the excluded tokens set to -inf.
"""

from __future__ import annotations

import torch
from torch import Tensor


def min_p_filter(logits: Tensor, min_p: float = 0.1) -> Tensor:
    """Keep tokens whose probability is at least `min_p` times the top token's (Nguyen et al., 2024)."""
    if not 0. <= min_p <= 1.:
        raise ValueError(f'min_p must be in [0, 1], got {min_p}')

    probs = logits.softmax(dim = -1)
    limit = probs.amax(dim = -1, keepdim = True) * min_p
    return logits.masked_fill(probs < limit, float('-inf'))


def top_k_filter(logits: Tensor, k: int | None = None, frac_num_tokens: float = 0.1) -> Tensor:
    """Keep the `k` most likely tokens (default: `frac_num_tokens` of the vocabulary, at least one)."""
    num_tokens = logits.shape[-1]
    k = k if k is not None else max(1, int(frac_num_tokens * num_tokens))

    if not isinstance(k, int) or k < 1:
        raise ValueError(f'k must be a positive integer, got {k!r}')

    k = min(k, num_tokens)
    values, _ = logits.topk(k, dim = -1)
    return logits.masked_fill(logits < values[..., -1:], float('-inf'))


class NoTokenToSampleError(ValueError):
    """Generation reached logits with nothing to choose from: a row all -inf, or holding a NaN."""


def unusable_rows(logits: Tensor) -> Tensor:
    """(...) bool: rows of logits (..., vocab) that leave no token to choose: every entry -inf, or any NaN. Argmax
    and Gumbel sampling would not fail on them, they would return token 0 or the NaN's position."""
    return ~(logits > float('-inf')).any(dim = -1) | logits.isnan().any(dim = -1)


def gumbel_sample(logits: Tensor, temperature: float = 1., generator: torch.Generator | None = None) -> Tensor:
    """Sample ids (...) from logits (..., vocab); `temperature = 0.` is greedy."""
    if temperature <= 0.:
        return logits.argmax(dim = -1)

    # u in [1e-20, 1): -log(u) lies in (0, 46], so the outer log is finite. (Negating after a clamp, as in
    # `-log(u).clamp(...)`, would clamp log(u) itself and turn every draw into NaN.)
    uniform = torch.rand(logits.shape, device = logits.device, generator = generator).clamp(min = 1e-20)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits / temperature + gumbel).argmax(dim = -1)
