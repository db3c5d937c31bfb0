"""The key/value caches: a segment cache for the thought recurrence (training and evaluation), a static one for generation.

A `KVCache` is immutable: `append` returns a new cache. Keys and values are kept as a list of segments, one per
forward call (the prompt, each thought step, the answer, each generated token), and joined only when attention
reads them. Two reasons:

- checkpointing replays a thought step in backward; a step that mutated the cache would append twice;
- a checkpointed step then keeps only its own segment alive, so memory grows by one step's keys and values
  per thought, not by a copy of the whole cache.

Shapes: b batch, h heads, n tokens of a segment, d dim_head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from einops import rearrange, repeat

from coconut_pytorch.backbone import BackboneOutput
from coconut_pytorch.helpers import exists


def token_positions(next_position: Tensor, mask: Tensor | None, length: int) -> Tensor:
    """(b, n) positions of `length` new columns after rows whose next real token is at `next_position` (b,):
    positions count real tokens only (mask (b, n), False = padding), so padding anywhere shifts nothing; a padding
    column takes its row's last real position (clamped at 0 before the first)."""
    if exists(mask):
        return (next_position[:, None] + mask.long().cumsum(dim = -1) - 1).clamp(min = 0)
    return next_position[:, None] + torch.arange(length, device = next_position.device)


def join_masks(parts: list[tuple[Tensor | None, int]], batch: int, device = None) -> Tensor | None:
    """Concatenate per-segment masks ((b, n) bool, or None for all real) into one (b, sum n); None if all are None."""
    if not any(exists(mask) for mask, _ in parts):
        return None
    full = [mask if exists(mask) else torch.ones((batch, length), dtype = torch.bool, device = device) for mask, length in parts]
    return torch.cat(full, dim = -1)


@dataclass(frozen = True)
class KVCache:
    keys: tuple[tuple[Tensor, ...], ...]    # [layer][segment] (b, h, n, d), rotary already applied
    values: tuple[tuple[Tensor, ...], ...]  # [layer][segment] (b, h, n, d), after the value residual mix
    masks: tuple[Tensor | None, ...]        # [segment] (b, n) bool, False is padding; None: all real
    lengths: tuple[int, ...]                # [segment] n
    next_position: Tensor                   # (b,) rotary position of the next real token

    @classmethod
    def empty(cls, batch: int, depth: int, device = None) -> KVCache:
        return cls(
            keys = ((),) * depth,
            values = ((),) * depth,
            masks = (),
            lengths = (),
            next_position = torch.zeros(batch, dtype = torch.long, device = device)
        )

    @property
    def batch(self) -> int:
        return self.next_position.shape[0]

    @property
    def length(self) -> int:
        """Number of key columns, padding included."""
        return sum(self.lengths)

    def run(self, transformer, x: Tensor, mask: Tensor | None):
        """Run embeddings x (b, n, D) through `transformer` after this cache: a new, longer cache comes back."""
        return transformer.forward_segments(x, mask, self)

    def layer(self, index: int) -> tuple[Tensor | None, Tensor | None]:
        """All keys and values of one layer, (b, h, length, d) each, or (None, None) when empty."""
        keys, values = self.keys[index], self.values[index]
        if len(keys) == 0:
            return None, None
        if len(keys) == 1:
            return keys[0], values[0]
        return torch.cat(keys, dim = -2), torch.cat(values, dim = -2)

    def key_mask(self) -> Tensor | None:
        """(b, length) bool over every cached column, or None when nothing is padded."""
        return self.key_mask_with(None, 0)

    def key_mask_with(self, new_mask: Tensor | None, new_length: int) -> Tensor | None:
        """Key mask over the cached columns followed by `new_length` new ones; None when nothing is padded."""
        parts = [*zip(self.masks, self.lengths), (new_mask, new_length)]
        return join_masks(parts, self.batch, self.next_position.device)

    def append(self, new_keys: list[Tensor], new_values: list[Tensor], mask: Tensor | None, length: int) -> KVCache:
        """A new cache with one more segment of `length` tokens (mask (b, n) or None)."""
        added = mask.long().sum(dim = -1) if exists(mask) else length

        return KVCache(
            keys = tuple((*layer, k) for layer, k in zip(self.keys, new_keys)),
            values = tuple((*layer, v) for layer, v in zip(self.values, new_values)),
            masks = (*self.masks, mask),
            lengths = (*self.lengths, length),
            next_position = self.next_position + added
        )

    def repeat_batch(self, times: int) -> KVCache:
        """Each row repeated `times` times in place, (b ...) -> (b times ...): hypotheses share one prompt cache."""
        expand = lambda t: repeat(t, 'b ... -> (b r) ...', r = times)

        return KVCache(
            keys = tuple(tuple(expand(k) for k in layer) for layer in self.keys),
            values = tuple(tuple(expand(v) for v in layer) for layer in self.values),
            masks = tuple(expand(mask) if exists(mask) else None for mask in self.masks),
            lengths = self.lengths,
            next_position = expand(self.next_position)
        )

    def merge_batch_segments(self, times: int, from_segment: int) -> KVCache:
        """Fold `times` consecutive rows into one along the sequence, for segments from `from_segment` on.

        Segments before it must hold identical rows (they were `repeat_batch`ed); the rest are joined so that one
        row sees every hypothesis' tokens side by side, (b times) h n d -> b h (times n) d.
        """
        take_first = lambda t: rearrange(t, '(b r) ... -> b r ...', r = times)[:, 0]
        fold = lambda t: rearrange(t, '(b r) h n d -> b h (r n) d', r = times)

        def merge_layer(segments):
            shared = tuple(take_first(t) for t in segments[:from_segment])
            rest = segments[from_segment:]
            if len(rest) == 0:
                return shared
            return (*shared, fold(torch.cat(rest, dim = -2)))

        rest_lengths = self.lengths[from_segment:]
        rest_mask = join_masks(list(zip(self.masks[from_segment:], rest_lengths)), self.batch, self.next_position.device)
        if exists(rest_mask):
            rest_mask = rearrange(rest_mask, '(b r) n -> b (r n)', r = times)

        shared_masks = tuple(take_first(mask) if exists(mask) else None for mask in self.masks[:from_segment])
        merged_length = (times * sum(rest_lengths),) if len(rest_lengths) > 0 else ()

        return KVCache(
            keys = tuple(merge_layer(layer) for layer in self.keys),
            values = tuple(merge_layer(layer) for layer in self.values),
            masks = (*shared_masks, *((rest_mask,) if len(rest_lengths) > 0 else ())),
            lengths = (*self.lengths[:from_segment], *merged_length),
            # every hypothesis advanced by the same number of real tokens, so any row's position serves
            next_position = take_first(self.next_position)
        )


class StaticKVCache:
    """A preallocated, mutable cache for inference: every call writes its keys and values in place.

    Generation appends one token at a time; with fixed buffers every step has the same shapes and addresses, so a
    step can be captured once as a CUDA graph and replayed (`coconut_pytorch.decoding`; the graphs are kept beside
    the cache by `coconut_pytorch.generation`, not in it). The write position lives
    on the device (`write_index`), so a replayed graph advances it without the host; `length` mirrors it on the host.

    Columns not yet written, and padding, are False in `key_mask` and never attended to. They still hold zeros, not
    whatever an earlier call left there: attention multiplies a masked value by a probability of 0, and 0 x NaN is
    NaN, so a stale NaN in an unwritten column would reach every real position.
    Not for training: in-place writes would break autograd through earlier steps.
    """

    def __init__(self, batch: int, depth: int, heads: int, dim_head: int, capacity: int, dtype: torch.dtype, device = None):
        shape = (batch, heads, capacity, dim_head)
        self.keys = [torch.zeros(shape, dtype = dtype, device = device) for _ in range(depth)]
        self.values = [torch.zeros(shape, dtype = dtype, device = device) for _ in range(depth)]
        self.key_mask = torch.zeros((batch, capacity), dtype = torch.bool, device = device)
        self.write_index = torch.zeros((1,), dtype = torch.long, device = device)
        self.next_position = torch.zeros((batch,), dtype = torch.long, device = device)
        self.length = 0

    @property
    def batch(self) -> int:
        return self.key_mask.shape[0]

    @property
    def capacity(self) -> int:
        return self.key_mask.shape[1]

    def run(self, transformer, x: Tensor, mask: Tensor | None):
        """Run embeddings x (b, n, D) through `transformer`, writing them into this cache in place."""
        return BackboneOutput(transformer.forward_static(x, mask, self), self)

    def reset(self):
        """Empty again, keeping the buffers (and so any graph captured against them). Keys and values are zeroed
        too: a cache reused after a call whose weights held NaN (since restored in place) must not keep them."""
        for keys, values in zip(self.keys, self.values):
            keys.zero_()
            values.zero_()
        self.key_mask.zero_()
        self.write_index.zero_()
        self.next_position.zero_()
        self.length = 0

    def check_room(self, num_new: int):
        if self.length + num_new > self.capacity:
            raise ValueError(f'static cache holds {self.capacity} columns; {self.length} are used and {num_new} more were asked for')

    def write(self, layer: int, keys: Tensor, values: Tensor):
        """Write one layer's new keys and values (b, h, n, d) at the current write position."""
        columns = self.write_index + torch.arange(keys.shape[-2], device = keys.device)
        self.keys[layer].index_copy_(2, columns, keys.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(2, columns, values.to(self.values[layer].dtype))

    def advance(self, mask: Tensor, num_new: int):
        """Mark `num_new` columns written (mask (b, n) bool, False = padding) and move the write position past them."""
        columns = self.write_index + torch.arange(num_new, device = mask.device)
        self.key_mask.index_copy_(1, columns, mask)
        self.next_position.add_(mask.long().sum(dim = -1))
        self.write_index.add_(num_new)

    def snapshot(self) -> tuple[Tensor, Tensor, Tensor, int]:
        return self.key_mask.clone(), self.write_index.clone(), self.next_position.clone(), self.length

    def restore(self, state: tuple[Tensor, Tensor, Tensor, int]):
        key_mask, write_index, next_position, self.length = state
        self.key_mask.copy_(key_mask)
        self.write_index.copy_(write_index)
        self.next_position.copy_(next_position)

    def load(self, cache: KVCache):
        """Take over everything in a segment cache (the prefill of a path the static cache does not run)."""
        layers = (cache.layer(index) for index in range(len(self.keys))) if cache.length > 0 else ()
        self.take(layers, cache.key_mask(), cache.length, cache.next_position)

    def take(self, layers, key_mask: Tensor | None, length: int, next_position: Tensor):
        """Hold exactly `length` columns: each layer's (keys, values) (b, h, length, d), key_mask (b, length) or None
        for all real, and next_position (b,). What `load` does for any kind of segment cache."""
        self.reset()
        self.check_room(length)

        for index, (keys, values) in enumerate(layers):
            self.keys[index][:, :, :length].copy_(keys)
            self.values[index][:, :, :length].copy_(values)

        self.key_mask[:, :length] = key_mask if exists(key_mask) else True
        self.write_index.fill_(length)
        self.next_position.copy_(next_position)
        self.length = length
