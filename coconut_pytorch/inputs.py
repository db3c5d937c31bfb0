"""Checking and normalising what users pass in, before any compute.

Token sequences come as a padded LongTensor (b, n) with -1 as the only pad value, or as a list of 1-d tensors of
any lengths. Inside, prompts are left-aligned (padding first) so that every prompt ends at the same column and the
thoughts and answers that follow line up across the batch; masks and positions keep each row exact.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

PAD_ID = -1

INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class CheckedIds(NamedTuple):
    ids: Tensor             # (b, n) long, -1 padded
    has_padding: bool       # whether any -1 is present (known from the checks, so it costs no extra host sync)


def check_finite_number(value, name: str, minimum: float = 0., inclusive: bool = True):
    """Raise ValueError unless `value` is a real number (not a bool), finite, and >= `minimum` (> if not inclusive)."""
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        raise ValueError(f"{name} must be a finite number {'>=' if inclusive else '>'} {minimum:g}, got {value!r}")


def as_padded_ids(
    sequences: Tensor | Sequence[Tensor],
    name: str,
    num_tokens: int,
    device: torch.device | None = None,
    require_tokens: bool = True,
    require_any_token: bool = False
) -> CheckedIds:
    """A (b, n) long tensor with -1 padding, after checking dtype, shape and id range.

    Raises TypeError for non-integer or non-tensor input and ValueError for wrong shapes, out-of-range ids,
    an empty batch, a row with no real token (`require_tokens`), or no real token at all (`require_any_token`).
    """
    if isinstance(sequences, (list, tuple)):
        if len(sequences) == 0:
            raise ValueError(f'{name} is an empty list; expected at least one sequence')

        for index, sequence in enumerate(sequences):
            if not torch.is_tensor(sequence):
                raise TypeError(f'{name}[{index}] must be a 1-d tensor of token ids, got {type(sequence).__name__}')
            if sequence.ndim != 1:
                raise ValueError(f'{name}[{index}] must be 1-d (a list holds one sequence per example), got shape {tuple(sequence.shape)}')
            if sequence.dtype not in INTEGER_DTYPES:
                raise TypeError(f'{name}[{index}] must hold integer token ids, got dtype {sequence.dtype}')

        sequences = pad_sequence([s.long().to(device) for s in sequences], batch_first = True, padding_value = PAD_ID)

    elif torch.is_tensor(sequences):
        if sequences.dtype not in INTEGER_DTYPES:
            raise TypeError(f'{name} must hold integer token ids, got dtype {sequences.dtype}')
        if sequences.ndim != 2:
            raise ValueError(f'{name} must be 2-d (batch, seq) or a list of 1-d tensors, got shape {tuple(sequences.shape)}')
        if sequences.shape[0] == 0:
            raise ValueError(f'{name} has an empty batch')
        sequences = sequences.long().to(device)

    else:
        raise TypeError(f'{name} must be a LongTensor (batch, seq) or a list of 1-d LongTensors, got {type(sequences).__name__}')

    if sequences.shape[-1] == 0:
        if require_tokens or require_any_token:
            raise ValueError(f'{name} is empty; it needs at least one token')
        return CheckedIds(sequences, False)

    # one host sync for all checks
    real_per_row = (sequences != PAD_ID).sum(dim = -1)
    lowest, highest, fewest_real, total_real = torch.stack((
        sequences.amin(),
        sequences.amax(),
        real_per_row.amin(),
        real_per_row.sum()
    )).tolist()

    if lowest < PAD_ID or highest >= num_tokens:
        raise ValueError(f'{name} holds token ids in [{lowest}, {highest}]; expected ids in [0, {num_tokens}) with -1 as the only pad value')

    if require_tokens and fewest_real == 0:
        raise ValueError(f'{name} has an example with no tokens (all padding); every example needs at least one token')

    if require_any_token and total_real == 0:
        raise ValueError(f'{name} has no tokens (all -1 padding); at least one is needed')

    return CheckedIds(sequences, lowest == PAD_ID)


class AlignedPrompt(NamedTuple):
    ids: Tensor         # (b, n) padding replaced by 0, real tokens moved to the right end
    mask: Tensor | None # (b, n) bool, None when no row is padded
    order: Tensor       # (b, n) the column each aligned entry came from, to put per-token outputs back


def left_align(ids: Tensor, has_padding: bool) -> AlignedPrompt:
    """Move padding to the front of each row, keeping the order of real tokens (a stable sort on the mask)."""
    is_real = ids != PAD_ID
    order = is_real.long().argsort(dim = -1, stable = True)

    aligned = ids.gather(-1, order).clamp(min = 0)
    mask = is_real.gather(-1, order) if has_padding else None
    return AlignedPrompt(aligned, mask, order)


def check_reasoning_steps(num_reasoning_steps, batch: int, device) -> tuple[int, Tensor | None]:
    """Validate steps given as an int or a (b,) tensor; return (max steps, per-row steps or None if uniform)."""
    if isinstance(num_reasoning_steps, bool):
        raise TypeError('num_reasoning_steps must be an int or a 1-d integer tensor, got a bool')

    if isinstance(num_reasoning_steps, Integral):
        if num_reasoning_steps < 0:
            raise ValueError(f'num_reasoning_steps must be >= 0, got {num_reasoning_steps}')
        return int(num_reasoning_steps), None

    if torch.is_tensor(num_reasoning_steps):
        steps = num_reasoning_steps
        if steps.dtype not in INTEGER_DTYPES:
            raise TypeError(f'num_reasoning_steps tensor must be integer, got dtype {steps.dtype}')
        if steps.ndim == 0:
            return check_reasoning_steps(int(steps.item()), batch, device)
        if steps.shape != (batch,):
            raise ValueError(f'num_reasoning_steps tensor must have shape ({batch},) to match the batch, got {tuple(steps.shape)}')

        lowest, highest = torch.stack((steps.amin(), steps.amax())).tolist()
        if lowest < 0:
            raise ValueError(f'num_reasoning_steps must be >= 0, got a row with {lowest}')
        if lowest == highest:
            return int(highest), None
        return int(highest), steps.long().to(device)

    raise TypeError(f'num_reasoning_steps must be an int or a 1-d integer tensor, got {type(num_reasoning_steps).__name__}')
