"""Checking and normalising what users pass in, before any compute.

Token sequences come as a padded LongTensor (b, n) with -1 as the only pad value, or as a list of 1-d tensors of
any lengths. Inside, prompts are left-aligned (padding first) so that every prompt ends at the same column and the
thoughts and answers that follow line up across the batch; masks and positions keep each row exact.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real
from typing import Callable, NamedTuple, Sequence

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


def check_positive_int(value, name: str):
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f'{name} must be an int, got {type(value).__name__}')
    if value < 1:
        raise ValueError(f'{name} must be >= 1, got {value}')


def as_padded_ids(
    sequences: Tensor | Sequence[Tensor],
    name: str,
    num_tokens: int,
    device: torch.device | None = None,
    require_tokens: bool = True,
    require_any_token: bool = False,
    padding_at_end: bool = False
) -> CheckedIds:
    """A (b, n) long tensor with -1 padding, after checking dtype, shape and id range.

    Raises TypeError for non-integer or non-tensor input and ValueError for wrong shapes, out-of-range ids,
    an empty batch, a row with no real token (`require_tokens`), no real token at all (`require_any_token`), or,
    with `padding_at_end` (answers), a -1 followed later in its row by a real id: the token after such a gap would
    be predicted from a padding slot. Prompts may hold padding anywhere (they are left-aligned).
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
    is_real = sequences != PAD_ID
    real_per_row = is_real.sum(dim = -1)
    checks = [sequences.amin(), sequences.amax(), real_per_row.amin(), real_per_row.sum()]

    if padding_at_end:
        checks.append(first_interior_pad(is_real))

    lowest, highest, fewest_real, total_real, *interior = torch.stack(checks).tolist()

    if lowest < PAD_ID or highest >= num_tokens:
        raise ValueError(f'{name} holds token ids in [{lowest}, {highest}]; expected ids in [0, {num_tokens}) with -1 as the only pad value')

    if require_tokens and fewest_real == 0:
        raise ValueError(f'{name} has an example with no tokens (all padding); every example needs at least one token')

    if require_any_token and total_real == 0:
        raise ValueError(f'{name} has no tokens (all -1 padding); at least one is needed')

    if padding_at_end and interior[0] >= 0:
        row, position = divmod(interior[0], sequences.shape[-1])
        raise ValueError(f'{name} row {row} has -1 padding at position {position} followed by a real token; '
                         f'padding may only trail the {name} (the token after a gap would be predicted from a padding slot)')

    return CheckedIds(sequences, lowest == PAD_ID)


def first_interior_pad(is_real: Tensor) -> Tensor:
    """() long: the flat index (row * n + position) of the first padding slot that a real token follows later in
    its row, or -1 when padding only trails. Computed on the device, to join the checks' one host sync."""
    batch, length = is_real.shape
    positions = torch.arange(length, device = is_real.device)
    last_real = torch.where(is_real, positions, -1).amax(dim = -1, keepdim = True)      # (b, 1), -1 if none
    interior = ~is_real & (positions < last_real)                                       # (b, n)
    flat = torch.arange(batch * length, device = is_real.device).view(batch, length)
    first = torch.where(interior, flat, batch * length).amin()
    return torch.where(first < batch * length, first, -1)


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


# sizes

# the longest sequence (prompt, thoughts, answer) a call may ask for, whatever the memory: attention over more could
# not run in any useful time, and it keeps absurd sizes (10**12 steps) from being tried where memory cannot be read
MAX_SEQUENCE_LENGTH = 2 ** 24

# keys and values smaller than this are let through without asking the device how much memory is free
QUERY_MEMORY_ABOVE = 64 * 2 ** 20


def available_memory(device: torch.device | str) -> int | None:
    """Bytes this process could still allocate on `device`, or None where that cannot be read.

    CUDA: the device's free memory plus what PyTorch's caching allocator holds unused. CPU: MemAvailable plus
    SwapFree of /proc/meminfo (Linux; swap is slow, but a run that fits there can finish), else the free physical
    pages (sysconf), else all physical memory.
    """
    device = torch.device(device)

    if device.type == 'cuda':
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        except (RuntimeError, AssertionError):
            return None

    if device.type != 'cpu':
        return None

    try:
        with open('/proc/meminfo') as meminfo:
            fields = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in meminfo if line.split(':')[0] in ('MemAvailable', 'SwapFree')}
        if 'MemAvailable' in fields:
            return fields['MemAvailable'] + fields.get('SwapFree', 0)
    except (OSError, ValueError, IndexError):
        pass

    for pages in ('SC_AVPHYS_PAGES', 'SC_PHYS_PAGES'):
        try:
            return os.sysconf(pages) * os.sysconf('SC_PAGE_SIZE')
        except (ValueError, OSError, AttributeError):
            continue
    return None


def format_bytes(size: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'):
        if size < 1024 or unit == 'PiB':
            return f'{size:,.1f} {unit}' if unit != 'B' else f'{int(size)} B'
        size /= 1024


def check_sequence_fits(
    parts: dict[str, tuple[int | None, int]],
    batch: int,
    kv_bytes: Callable[[int, int], int],
    device: torch.device | str
):
    """Raise ValueError, naming the argument that asks for the most columns, when a sequence cannot be held.

    `parts`: for each piece of the sequence, by the name of the argument that sets it, (the value given, or None
    where the piece is a tensor rather than a number, and the columns it adds). The sequence is refused when it is longer
    than `MAX_SEQUENCE_LENGTH`, or when the keys and values of all of it for `batch` rows, `kv_bytes(batch, columns)`
    (the backbone's `kv_bytes`), exceed the memory `available_memory` reports for `device`. That is a lower bound on what the run needs (no
    activations, no weights), so a run it refuses could never have finished; one it lets through still may not.
    """
    total = sum(columns for _, columns in parts.values())
    culprit = max(parts, key = lambda name: parts[name][1])
    value = parts[culprit][0]

    breakdown = ' + '.join(f'{name} {columns:,}' for name, (_, columns) in parts.items())
    named = f'{culprit} = {value:,}' if value is not None else f'the {culprit} ({parts[culprit][1]:,} columns)'

    if total > MAX_SEQUENCE_LENGTH:
        raise ValueError(f'{named} is too large: the sequence would be {total:,} columns ({breakdown}), '
                         f'more than the {MAX_SEQUENCE_LENGTH:,} supported')

    needed = kv_bytes(batch, total)
    if needed <= QUERY_MEMORY_ABOVE:
        return      # a training step's usual size: not worth a driver call or a file read per step
    available = available_memory(device)

    if available is not None and needed > available:
        raise ValueError(f'{named} is too large: the keys and values of the sequence ({breakdown} = {total:,} columns, '
                         f'batch {batch}) need {format_bytes(needed)}, '
                         f'more than the {format_bytes(available)} available on {torch.device(device)}')
