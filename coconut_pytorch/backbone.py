"""The seam between Coconut and the causal language model it thinks with.

`Coconut` needs little of a model: embed tokens, run a chunk of inputs (token ids or continuous thoughts) against
what came before, and turn hidden states into logits. Everything it uses is declared here as `Backbone`, and
`Coconut` uses nothing else, so any model that offers these methods can think in continuous thoughts: the native
`coconut_pytorch.transformer.Transformer` does, and so can a wrapped pretrained model.

Two caches serve two purposes, and a backbone makes both:

- the **segment cache** (`empty_cache`, grown by `forward_with_cache`): training and teacher-forced evaluation.
  It is immutable: running new inputs returns a new cache and leaves the old one as it was, because activation
  checkpointing replays a thought step in backward, and a step that appended in place would append twice. With
  several hypotheses (`Coconut(num_hypotheses = H)`), it must also offer `repeat_batch(times)` (each row repeated,
  to share one prompt across H streams) and `merge_batch_segments(times, from_segment)` (the streams folded side
  by side into one row), and `length`.
- the **static cache** (`static_cache`, written by `forward_static`): generation. It is preallocated and written
  in place, so that every decoding step has fixed shapes and buffer addresses and can be captured once as a CUDA
  graph and replayed (`coconut_pytorch.decoding`). It offers `length` (columns written, on the host),
  `check_room(n)`, `reset()`, `snapshot()` / `restore(state)` (capture runs a step and puts the cache back), and
  `load(segment_cache)` (to take over what a segment cache holds).

A backbone may also offer `embedding_weight()`, its (V, D) input embedding table, for the latent alignment options
(`Coconut(thought_rms_match, align_mse_weight, ...)`); without it, Coconut embeds every id to get the table.

A backbone whose decoding step cannot be captured as a CUDA graph (one whose static cache grows instead of being
preallocated, as `coconut_pytorch.hf`'s does under flash attention) sets `graph_capturable = False` (an attribute or
a property); generation then runs its steps eagerly. Without the attribute, steps are captured on CUDA.

What both must get right, and what the equivalence tests check for every backbone: a key-padding mask travels with
the cache (False = padding), positions count real tokens only (so a padded row gets exactly what it gets alone), and
a masked input position never changes a real one.

Shapes: b batch, n new positions, D hidden size (`dim`), V vocabulary size (`num_tokens`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


class BackboneOutput(NamedTuple):
    hiddens: Tensor     # (b, n, D) final hidden states of the new positions: what a continuous thought is
    cache: Any          # the cache extended by the new positions


@runtime_checkable
class Backbone(Protocol):
    """Everything the thought recurrence, its losses and generation need from a causal language model."""

    dim: int            # hidden size D: a continuous thought is one (D,) vector
    num_tokens: int     # vocabulary size V

    def embed(self, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        """Token ids (b, n) and/or embeddings (b, n, D), alone or in a list joined along n, as one (b, n, D)."""
        ...

    def forward_with_cache(self, inputs: Tensor | Sequence[Tensor], *, mask: Tensor | None = None, cache: Any = None) -> BackboneOutput:
        """Run new inputs (as `embed` takes them; mask (b, n) bool, False = padding, None = all real) after
        `cache` and return their hidden states with the cache that holds them too. A segment cache (or None, a
        fresh sequence) is left unchanged and a new, longer one returned; a static cache is written in place
        (through `forward_static`) and returned."""
        ...

    def forward_static(self, x: Tensor, mask: Tensor | None, cache: Any) -> Tensor:
        """Run embeddings x (b, n, D) after what a static cache holds, writing their keys and values into it in
        place; return their hidden states. Free of host syncs and of shapes that depend on the cache's
        contents, so that a step can be captured as a CUDA graph."""
        ...

    def to_logits(self, hiddens: Tensor) -> Tensor:
        """Hidden states (..., D) to next-token logits (..., V)."""
        ...

    def empty_cache(self, batch: int) -> Any:
        """A segment cache holding nothing, for `batch` rows."""
        ...

    def static_cache(self, batch: int, capacity: int, device: torch.device | None = None) -> Any:
        """An empty static cache for `batch` rows and `capacity` positions, in the dtype the backbone computes in
        (under autocast, autocast's)."""
        ...

    def kv_bytes(self, batch: int, positions: int) -> int:
        """Bytes the cached keys and values of `positions` positions of `batch` rows take, in the dtype the
        backbone computes in: what a sequence needs at the least, checked against free memory before a call."""
        ...


# every member of `Backbone`: checked with hasattr, not with isinstance on the runtime-checkable protocol, which since
# Python 3.12 looks attributes up statically and misses what an nn.Module keeps in its submodules (`to_logits` of a
# Transformer is an nn.Linear)
BACKBONE_MEMBERS = ('dim', 'num_tokens', 'embed', 'forward_with_cache', 'forward_static', 'to_logits', 'empty_cache',
                    'static_cache', 'kv_bytes')


def is_backbone(model) -> bool:
    """Whether `model` offers every member of `Backbone`."""
    return all(hasattr(model, name) for name in BACKBONE_MEMBERS)
