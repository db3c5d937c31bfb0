"""Hugging Face causal language models as Coconut backbones (`pip install coconut-pytorch[hf]`).

    from coconut_pytorch import Coconut

    model = Coconut.from_hf('path/to/model', num_reasoning_steps = 3)       # or a loaded model; or, by hand:
    model = Coconut(num_reasoning_steps = 3, transformer = HFBackbone(AutoModelForCausalLM.from_pretrained(path)))

A continuous thought is the model's last hidden state (after its final norm), fed back through `inputs_embeds`.
`<bot>`, `<eot>` and the pause embedding are Coconut's own learned vectors, not added tokens: the vocabulary and the
embedding matrix stay as they are, and a thought, `<bot>` and `<eot>` all enter the model the same way. Tokens are
embedded by the model's own input embedding, so that their `inputs_embeds` give what the model computes from token
ids. Gemma-2 scales its token embeddings by sqrt(hidden size), and where depends on the version of transformers:
5.17 and later scale in the input embedding, so a thought enters the first layer as it is; 5.0 and earlier scale
every `inputs_embeds` in the model's forward, a thought (and `<bot>`, `<eot>`) included, so a Coconut trained over
one does not carry over to the other.

The segment cache is immutable, as `coconut_pytorch.backbone` requires (checkpointing replays a thought step, and
a step that appended in place would append twice): it holds each layer's keys and values as tensors that are
never written, and each call hands the model a fresh `transformers` cache built from them. Positions count real
tokens only and a key-padding mask travels with the cache, so a padded row gets what it gets alone (with the
attention masks `HFBackbone` builds where transformers would count a sliding window in columns).

Generation writes into a preallocated `HFStaticCache` instead (the backbone interface's static cache): full-capacity
key and value buffers per layer, written in place through a `transformers` `Cache` whose `update` copies the new
keys and values in at a write position kept on the device. With the positions, the cache positions and every
attention mask handed to the model ready-made from device tensors, a decoding step reads nothing from the host and
has the same shapes at every length, so generation captures it as a CUDA graph (`graph_capturable`) as it does the
native model's. That needs the masks `HFBackbone` builds (eager or SDPA attention, full and sliding-window layers);
with other attention implementations generation grows a segment cache step by step (`GrowingCache`) and runs eagerly.

Importing `coconut_pytorch` never imports `transformers`; this module does.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from einops import rearrange, repeat
from packaging.version import Version
from torch import Tensor, nn

from coconut_pytorch.backbone import BackboneOutput
from coconut_pytorch.kv_cache import StaticKVCache, join_masks, token_positions
from coconut_pytorch.transformer import autocast_dtype
from coconut_pytorch.helpers import default, exists

try:
    import transformers
    from transformers import DynamicCache, PreTrainedModel
    from transformers.cache_utils import Cache
except ImportError as error:     # the optional extra is missing
    raise ImportError('coconut_pytorch.hf needs transformers: pip install "coconut-pytorch[hf]"') from error

# 4.56 at the least: before it, `DynamicCache(ddp_cache_data = ...)` (how each call rebuilds the segment cache) is
# missing (< 4.54) or puts an empty layer first (4.54, 4.55); and only since 4.53 (`masking_utils`) does every model
# take a prepared 4-D mask as it is, and a model with several layer types a dict layer type -> mask
if Version(transformers.__version__).release < (4, 56):
    raise ImportError(f'coconut_pytorch.hf needs transformers >= 4.56, found {transformers.__version__}: pip install -U "coconut-pytorch[hf]"')

# the layer types whose masks `attention_masks` builds, named as transformers names them in `config.layer_types`
FULL, SLIDING = 'full_attention', 'sliding_attention'

# attention implementations whose prepared masks we know the format of: SDPA takes a boolean mask (True = attend),
# eager adds a float one (0 or the dtype's minimum) to its logits
MASKED_ATTENTION = ('eager', 'sdpa')

# rotary embeddings that pick their frequencies from the largest position seen, by comparing it on the host
# (transformers' `dynamic_rope_update`): a step captured as a CUDA graph would keep the frequencies of its capture
HOST_ROPE = ('dynamic', 'longrope')


def attention_layer_types(config) -> tuple[str, ...]:
    """Each layer's attention type, as the model itself decides it: `config.layer_types` where the config has it
    (Gemma-2, Qwen2), else every layer sliding where the config sets a window (Mistral), else every layer full."""
    layer_types = getattr(config, 'layer_types', None)
    if exists(layer_types):
        return tuple(layer_types)
    return (SLIDING if exists(getattr(config, 'sliding_window', None)) else FULL,) * config.num_hidden_layers


@dataclass(frozen = True)
class HFCache:
    """Every layer's keys and values so far, as tensors nobody writes, with the key mask and the next position."""
    layers: tuple[tuple[Tensor, Tensor], ...]   # [layer] (keys, values), each (b, kv heads, length, head dim)
    key_mask: Tensor | None                     # (b, length) bool, False = padding; None: all real
    segment_lengths: tuple[int, ...]            # columns each call added, in order (hypotheses merge by segment)
    next_position: Tensor                       # (b,) position of the next real token
    merged: bool = False                        # holds hypotheses side by side (`merge_batch_segments`)

    @property
    def batch(self) -> int:
        return self.next_position.shape[0]

    @property
    def length(self) -> int:
        return sum(self.segment_lengths)

    def repeat_batch(self, times: int) -> HFCache:
        """Each row repeated `times` times, (b ...) -> (b times ...): hypotheses share one prompt cache."""
        expand = lambda t: repeat(t, 'b ... -> (b r) ...', r = times)
        return HFCache(tuple((expand(keys), expand(values)) for keys, values in self.layers),
                       expand(self.key_mask) if exists(self.key_mask) else None, self.segment_lengths, expand(self.next_position), self.merged)

    def merge_batch_segments(self, times: int, from_segment: int) -> HFCache:
        """Fold `times` consecutive rows into one along the sequence from segment `from_segment` on (the columns
        before it hold identical rows: they were `repeat_batch`ed), so that one row sees every hypothesis' columns
        side by side: (b times) h n d -> b h (times n) d. Keys keep the rotary positions they were computed at."""
        shared = sum(self.segment_lengths[:from_segment])
        take_first = lambda t: rearrange(t, '(b r) ... -> b r ...', r = times)[:, 0]

        def merge(t: Tensor) -> Tensor:                             # (b r) h N d -> b h (shared + r (N - shared)) d
            return torch.cat((take_first(t[..., :shared, :]), rearrange(t[..., shared:, :], '(b r) h n d -> b h (r n) d', r = times)), dim = -2)

        key_mask = self.key_mask
        if exists(key_mask):
            key_mask = torch.cat((take_first(key_mask[:, :shared]), rearrange(key_mask[:, shared:], '(b r) n -> b (r n)', r = times)), dim = -1)
        rest = self.segment_lengths[from_segment:]
        return HFCache(tuple((merge(keys), merge(values)) for keys, values in self.layers), key_mask,
                       (*self.segment_lengths[:from_segment], *((times * sum(rest),) if rest else ())),
                       # every hypothesis advanced by the same number of real tokens, so any row's position serves
                       take_first(self.next_position), merged = True)

    def run(self, backbone: HFBackbone, x: Tensor, mask: Tensor | None) -> BackboneOutput:
        return backbone.forward_segments(x, mask, self)


class GrowingCache:
    """Generation's cache for a Hugging Face backbone whose attention masks `HFBackbone` does not build (flash or flex
    attention, other layer types): an `HFCache` replaced in place by each step (the `static` cache of the backbone
    interface, without preallocation), so its steps are not captured as CUDA graphs."""

    def __init__(self, empty: HFCache, capacity: int):
        self.empty, self.current, self.capacity = empty, empty, capacity

    @property
    def length(self) -> int:
        return self.current.length

    def check_room(self, num_new: int):
        if self.length + num_new > self.capacity:
            raise ValueError(f'cache holds {self.capacity} columns; {self.length} are used and {num_new} more were asked for')

    def reset(self):
        self.current = self.empty

    def load(self, cache: HFCache):
        self.current = cache

    def run(self, backbone: HFBackbone, x: Tensor, mask: Tensor | None) -> BackboneOutput:
        return BackboneOutput(backbone.forward_static(x, mask, self), self)


class HFStaticCache(StaticKVCache):
    """Generation's cache for a Hugging Face backbone: `StaticKVCache`'s buffers and semantics (every layer's keys and
    values (b, kv heads, capacity, head dim) in the compute dtype, zeroed on reset; `key_mask`, the device-side
    `write_index` and `next_position`, the host `length`; snapshot / restore, check_room), written by
    `HFBackbone.forward_static` through `model_cache`, the `transformers` cache the model is handed. `load` takes over
    an `HFCache`."""

    def __init__(self, batch: int, depth: int, heads: int, dim_head: int, capacity: int, dtype: torch.dtype, device = None):
        super().__init__(batch, depth, heads, dim_head, capacity, dtype, device)
        self.model_cache = BufferCache(self)
        self.merged = False     # holds hypotheses side by side (loaded from a merged `HFCache`)

    def reset(self):
        super().reset()
        self.merged = False

    def load(self, cache: HFCache):
        self.take(cache.layers, cache.key_mask, cache.length, cache.next_position)
        self.merged = cache.merged


class BufferCache(Cache):
    """What a `transformers` model sees of an `HFStaticCache`: `update` writes a layer's new keys and values into the
    buffers in place, at the write position on the device, and returns the whole buffers, so the model attends over
    every column (the masks it is handed hide the unwritten ones and padding). The write position moves only after
    the whole step (`StaticKVCache.advance`), as every layer writes the same columns.

    A subclass of `transformers.cache_utils.Cache` so that a model that checks `isinstance(cache, Cache)` takes it as
    a cache (not as legacy tuples), but `Cache.__init__` is not called and everything a model or `masking_utils` may
    call is defined here, as `Cache`'s own constructor and internals differ between versions. Nothing here reads the
    host: lengths are device tensors (as transformers' own `StaticLayer` returns them), so that a version that did
    ask for one (5.24 does not, with positions and masks handed over ready-made) computes the right thing in a
    replayed graph or fails its capture, and never bakes in a stale length."""

    is_compileable = True       # its shapes and addresses never change: what transformers means by it
    is_croppable = False

    def __init__(self, cache: HFStaticCache):
        self.cache = cache
        self.layer_class_to_replicate = None
        self.offloading = False

    @property
    def layers(self) -> list[BufferLayer]:
        return [BufferLayer(keys, values) for keys, values in zip(self.cache.keys, self.cache.values)]

    def __len__(self) -> int:
        return len(self.cache.keys)

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        # the columns are the cache's write position, not `cache_kwargs['cache_position']` (which 4.x models pass and
        # 5.24's do not): the same device tensor where it is passed
        self.cache.write(layer_idx, key_states, value_states)
        return self.cache.keys[layer_idx], self.cache.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> Tensor:
        return self.cache.write_index[0]

    def get_query_offset(self, layer_idx: int = 0) -> Tensor:
        return self.cache.write_index[0]

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        # (keys attended to, offset of the first): every column of the buffer, from the first
        return self.cache.capacity, 0

    def get_max_length(self, *args, **kwargs) -> int:
        return self.cache.capacity

    def get_max_cache_shape(self, *args, **kwargs) -> int:    # `get_max_length` under its 4.x name
        return self.cache.capacity

    @property
    def is_initialized(self) -> bool:
        return True

    # every layer keeps every column, sliding-window layers too: the window lives in the masks
    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self)

    @property
    def is_linear(self) -> list[bool]:
        return [False] * len(self)

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self)

    @property
    def batch_size(self) -> int:
        return self.cache.batch

    def __repr__(self) -> str:
        return f'{type(self).__name__}(batch = {self.cache.batch}, capacity = {self.cache.capacity}, layers = {len(self)})'


@dataclass
class BufferLayer:
    """One layer of a `BufferCache`, for code that reads `cache.layers[i].keys`."""
    keys: Tensor        # (b, kv heads, capacity, head dim)
    values: Tensor
    is_initialized: bool = True
    is_sliding: bool = False
    is_compileable: bool = True


class HFBackbone(nn.Module):
    """A `transformers` causal language model behind the backbone interface (`coconut_pytorch.backbone.Backbone`).

    Tested exact (float64, padded batches included) for the GPT-2, Llama, Qwen2, Gemma-2 and Mistral families. With
    eager or SDPA attention it builds the model's attention masks itself and hands them over ready-made, one per layer
    type, where transformers would build them from a 2-D padding mask: key k is visible to query q iff k is real and
    not after q and, in a sliding-window layer, position(q) - position(k) < window, positions counting real tokens
    only (transformers counts the window in columns, padding included, which narrows a padded row's window). A
    padding query also sees itself, so that no softmax row is empty: eager attention (which Gemma-2's attention logit
    softcapping needs) takes its softmax in float32, where a float64 mask's minimum is -inf, and an empty row's NaN
    would reach real rows through the next layer's keys and values. Other attention implementations (flash, flex) and
    layer types other than full and sliding attention get the 2-D mask and transformers' own masks, which count a
    sliding window in columns.

    Generation's static cache is an `HFStaticCache` (preallocated, written in place; see the module docstring) where
    it builds the masks, else a `GrowingCache`; `graph_capturable` says whether generation captures its steps."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        if not isinstance(model, PreTrainedModel) or not hasattr(model, 'get_output_embeddings') or model.get_output_embeddings() is None:
            raise TypeError(f'model must be a transformers causal language model (with an output head), got {type(model).__name__}')
        config = model.config
        if not hasattr(config, 'hidden_size') or not hasattr(config, 'num_hidden_layers'):
            # a composite model (vision-language, encoder-decoder) keeps its language model's settings in a sub-config
            raise TypeError(f'model must be a text-only causal language model; {type(model).__name__} has no hidden_size '
                            'in its config (load its language model, e.g. with AutoModelForCausalLM)')
        self.lm = model
        self.dim = config.hidden_size
        self.num_tokens = model.get_input_embeddings().num_embeddings
        self.num_layers = config.num_hidden_layers
        # transformers renamed the cache argument (`past_key_values` -> `cache`) in version 5.2x
        parameters = inspect.signature(model.base_model.forward).parameters
        self.cache_argument = 'cache' if 'cache' in parameters else 'past_key_values'
        self.softcap = getattr(config, 'final_logit_softcapping', None)
        self.layer_types = attention_layer_types(config)
        self.sliding_window = getattr(config, 'sliding_window', None)
        # 4.x models take the columns being written as `cache_position` and, when it is not given, compute them from
        # the cache's length (on the host); 5.24's models no longer have the argument
        self.takes_cache_position = 'cache_position' in parameters
        # the rotary types of the model's rotary embeddings (one per layer type where they differ)
        rope_types = set()
        for module in model.modules():
            rope_type = getattr(module, 'rope_type', None)
            rope_types.update(rope_type.values() if isinstance(rope_type, dict) else [rope_type] if isinstance(rope_type, str) else [])
        self.rope_types = frozenset(rope_types)

    @property
    def builds_masks(self) -> bool:
        """Whether this backbone hands the model its attention masks ready-made (eager or SDPA attention over full
        and sliding-window layers), rather than leaving them to transformers."""
        implementation = getattr(self.lm.config, '_attn_implementation', None) or 'eager'
        return implementation in MASKED_ATTENTION and set(self.layer_types) <= {FULL, SLIDING}

    @property
    def graph_capturable(self) -> bool:
        """Whether generation captures this backbone's decoding steps as CUDA graphs. Only where it builds the masks:
        then a step over an `HFStaticCache` takes every length, position and mask from device tensors. Flash and
        flex attention would get a 2-D mask from which transformers builds its own (flash unpads by the mask's
        contents, a shape that varies by step), and a dynamic rotary embedding compares positions on the host."""
        return self.builds_masks and not any(host in rope_type for rope_type in self.rope_types for host in HOST_ROPE)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def embed(self, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        if torch.is_tensor(inputs):
            inputs = [inputs]
        table = self.lm.get_input_embeddings()
        return torch.cat([table(t) if t.dtype in (torch.long, torch.int) else t for t in inputs], dim = -2)

    def embedding_weight(self) -> Tensor:
        """(V, D) the model's input embedding table (the optional backbone member `Coconut.embedding_table` reads)."""
        return self.lm.get_input_embeddings().weight

    def to_logits(self, hiddens: Tensor) -> Tensor:
        logits = self.lm.get_output_embeddings()(hiddens)
        if exists(self.softcap):
            # Gemma-2 caps its logits inside its forward, after the head
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def empty_cache(self, batch: int) -> HFCache:
        return HFCache((), None, (), torch.zeros(batch, dtype = torch.long, device = self.device))

    def static_cache(self, batch: int, capacity: int, device: torch.device | None = None) -> HFStaticCache | GrowingCache:
        if not self.builds_masks:
            return GrowingCache(self.empty_cache(batch), capacity)
        heads, head_dim = self.kv_shape()
        return HFStaticCache(batch, self.num_layers, heads, head_dim, capacity, self.compute_dtype(), default(device, self.device))

    def kv_shape(self) -> tuple[int, int]:
        """Key/value heads and head dim of every layer, as the config gives them."""
        config = self.lm.config
        heads = getattr(config, 'num_key_value_heads', None) or config.num_attention_heads
        head_dim = getattr(config, 'head_dim', None) or config.hidden_size // config.num_attention_heads
        return heads, head_dim

    def compute_dtype(self) -> torch.dtype:
        """The dtype keys and values are computed in: autocast's when it is on, else the embedding's."""
        return autocast_dtype(self.device.type, default = self.lm.get_input_embeddings().weight.dtype)

    def kv_bytes(self, batch: int, positions: int) -> int:
        heads, head_dim = self.kv_shape()
        return 2 * self.num_layers * batch * heads * head_dim * positions * self.compute_dtype().itemsize

    def forward_with_cache(self, inputs: Tensor | Sequence[Tensor], *, mask: Tensor | None = None, cache = None) -> BackboneOutput:
        x = self.embed(inputs)
        cache = cache if exists(cache) else self.empty_cache(x.shape[0])
        return cache.run(self, x, mask)

    def check_merged(self, merged: bool):
        if merged and SLIDING in self.layer_types:
            # hypotheses side by side put several columns at one position: a window counted in positions over them
            # has no meaning this code could choose for the user
            raise NotImplementedError('several hypotheses (num_hypotheses > 1) over a sliding-window model are not supported')

    def forward_static(self, x: Tensor, mask: Tensor | None, cache: HFStaticCache | GrowingCache) -> Tensor:
        """Embeddings x (b, n, D) after what `cache` holds, written into it in place; their hidden states (b, n, D).

        Into an `HFStaticCache`, a step after the first reads the cache's device tensors only (its host `length` just
        for `check_room` and to tell the prefill from a step), so a step captured at one length replays right at any
        other: the model gets full-capacity keys and values, positions and cache positions computed on the device,
        and masks as wide as the buffer built from its key mask."""
        batch, length = x.shape[:2]
        cache.check_room(length)
        if isinstance(cache, GrowingCache):
            hiddens, cache.current = self.forward_segments(x, mask, cache.current)
            return hiddens
        self.check_merged(cache.merged)

        new_mask = mask if exists(mask) else torch.ones((batch, length), dtype = torch.bool, device = x.device)

        if cache.length == 0:
            # the prefill (never captured: graphs start after it) runs as over an empty segment cache, attending to
            # its own columns only rather than the whole buffer, and with transformers' own masks (SDPA's fused causal
            # kernels) where nothing is padded; its keys and values then go into the buffers
            hiddens, prefilled = self.forward_segments(x, mask, HFCache((), None, (), cache.next_position))
            for index, (keys, values) in enumerate(prefilled.layers):
                cache.write(index, keys, values)
        else:
            x, positions = real_inputs(x, new_mask, cache.next_position)                                      # (b, n)
            columns = cache.write_index + torch.arange(length, device = x.device)                               # (n,)
            written = cache.key_mask.index_copy(1, columns, new_mask)                                           # (b, C) after this step
            attention_mask = self.visible_masks(written, columns, x.dtype)
            arguments = {self.cache_argument: cache.model_cache}
            if self.takes_cache_position:
                arguments['cache_position'] = columns
            hiddens = self.lm.base_model(inputs_embeds = x, attention_mask = attention_mask, position_ids = positions, use_cache = True,
                                         **arguments).last_hidden_state

        cache.advance(new_mask, length)
        cache.length += length
        return hiddens

    def attention_masks(self, key_mask: Tensor | None, length: int, dtype: torch.dtype) -> Tensor | dict[str, Tensor] | None:
        """What the last `length` columns (the new queries) may attend to among all columns of `key_mask` (b, k),
        cached then new, as the model's attention takes it ready-made (`visible_masks`). None where the model should
        build its own from the 2-D mask (see the class docstring)."""
        # without padding, columns are positions and transformers' masks are these ones; it then hands SDPA no mask at
        # all (`is_causal`), which lets it take its fused kernels
        if not exists(key_mask) or not self.builds_masks:
            return None
        columns = torch.arange(key_mask.shape[-1], device = key_mask.device)
        return self.visible_masks(key_mask, columns[-length:], dtype)

    def visible_masks(self, key_mask: Tensor, queries: Tensor, dtype: torch.dtype) -> Tensor | dict[str, Tensor]:
        """What the query columns `queries` (q,) may attend to among all columns of `key_mask` (b, k) (False: padding,
        or not written yet), as the model's attention takes it ready-made: one (b, 1, q, k) mask, or a dict layer type
        -> mask for a model with several layer types. Built from device tensors only, so a static cache's step can
        hand over masks as wide as its buffer without reading its length."""
        columns = torch.arange(key_mask.shape[-1], device = key_mask.device)                   # (k,)
        queries = queries[:, None]                                                              # (q, 1)
        seen = key_mask[:, None, :] & (columns <= queries)                                      # (b, q, k) real, not after q
        # a padding query sees itself: a row with no key at all would be NaN after eager's float32 softmax
        itself = columns == queries                                                             # (q, k)
        # real tokens up to each column: a real column's position + 1, as positions count real tokens only
        count = key_mask.long().cumsum(dim = -1)                                                # (b, k)

        implementation = getattr(self.lm.config, '_attn_implementation', None) or 'eager'
        masks = {}
        for layer_type in sorted(set(self.layer_types)):
            visible = seen
            if layer_type == SLIDING:
                # the window counts positions, not columns: position(q) - position(k) < window
                query_count = count.index_select(1, queries[:, 0])                              # (b, q)
                visible = visible & (query_count[:, :, None] - count[:, None, :] < self.sliding_window)
            visible = (visible | itself)[:, None]                                               # (b, 1, q, k)
            if implementation == 'eager':
                # eager adds its mask to the logits: 0 where visible, else the dtype's minimum (as transformers does)
                visible = torch.where(visible, torch.zeros((), dtype = dtype, device = visible.device), torch.finfo(dtype).min)
            masks[layer_type] = visible
        # a single mask goes through any model; several only through a model that maps layer types to masks
        return masks.popitem()[1] if len(masks) == 1 else masks

    def forward_segments(self, x: Tensor, mask: Tensor | None, cache: HFCache) -> BackboneOutput:
        """Embeddings x (b, n, D) after `cache`; their last hidden states and a new cache that holds them too."""
        batch, length = x.shape[:2]
        x, positions = real_inputs(x, mask, cache.next_position)

        self.check_merged(cache.merged)
        key_mask = join_masks([(cache.key_mask, cache.length), (mask, length)], batch, x.device)
        attention_mask = self.attention_masks(key_mask, length, x.dtype)
        if not exists(attention_mask):
            attention_mask = key_mask.long() if exists(key_mask) else torch.ones((batch, cache.length + length), dtype = torch.long, device = x.device)

        past = DynamicCache(ddp_cache_data = list(cache.layers)) if cache.length > 0 else DynamicCache()
        out = self.lm.base_model(inputs_embeds = x, attention_mask = attention_mask, position_ids = positions, use_cache = True,
                                 **{self.cache_argument: past})
        grown = getattr(out, self.cache_argument, None) or past
        layers = tuple((layer.keys, layer.values) for layer in grown.layers)     # every transformers >= 4.56 has `layers`

        added = mask.long().sum(dim = -1) if exists(mask) else length
        return BackboneOutput(out.last_hidden_state, HFCache(layers, key_mask, (*cache.segment_lengths, length), cache.next_position + added, cache.merged))


def real_inputs(x: Tensor, mask: Tensor | None, next_position: Tensor) -> tuple[Tensor, Tensor]:
    """Embeddings x (b, n, D) with every masked position's input zeroed (whatever it was handed cannot reach a real
    one), and the new positions (b, n), counting real tokens only."""
    if exists(mask):
        x = x.masked_fill(~mask[..., None], 0.)
    return x, token_positions(next_position, mask, x.shape[1])


def causal_lm_from_config(config: dict) -> PreTrainedModel:
    """A causal LM of the architecture `config` describes (a transformers config as `to_dict` writes it), with fresh
    weights: what a checkpoint's weights load into, without the folder the run started from."""
    from transformers import AutoConfig, AutoModelForCausalLM
    if not isinstance(config, dict) or not isinstance(config.get('model_type'), str):
        raise ValueError('a backbone config must be a dict with a model_type (a transformers config as to_dict writes it)')
    values = dict(config)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop('model_type'), **values))


def load_causal_lm(model_or_path, download: bool = False) -> PreTrainedModel:
    """A loaded causal LM as it is, or one read from a local folder; a hub name is fetched only with `download`."""
    if isinstance(model_or_path, PreTrainedModel):
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(f'model_or_path must be a transformers model or a path, got {type(model_or_path).__name__}')
    from transformers import AutoModelForCausalLM
    try:
        return AutoModelForCausalLM.from_pretrained(os.fspath(model_or_path), local_files_only = not download)
    except OSError as error:
        hint = '' if download else ' (a hub name not in the local Hugging Face cache is downloaded only with download = True)'
        raise ValueError(f'model_or_path {os.fspath(model_or_path)!r} could not be loaded{hint}: {str(error).splitlines()[0]}') from None
