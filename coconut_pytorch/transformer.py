"""The decoder-only Transformer that Coconut thinks with.

Pre-norm RMSNorm blocks with rotary attention (through `scaled_dot_product_attention`), value residual learning,
gated feedforwards and several residual streams mixed by hyper-connections. What makes it fit for Coconut:

- its input may mix token ids and embedding tensors (continuous thoughts are embeddings);
- it runs against a `KVCache`, so every thought step and every generated token attends to all that came before
  without recomputing it, and returns the new cache instead of mutating the old one (checkpointing replays a step,
  which must not append twice);
- a key-padding mask travels with the cache and positions are counted over real tokens only, so a padded example
  gets exactly what it gets alone.

Shapes: b batch, n new tokens, k all keys (cache + new), h heads, d dim_head, s residual streams, D model dim.

Inside a block (run for every layer of every thought step) reshapes are tensor methods with the shapes in comments,
not einops: at the sizes of a small model a `rearrange` call costs more host time than the kernel it reshapes for
(about 18 us against 7 us an op on a 2-core CPU; 160 calls a forward at the benchmarks' small config A).
"""

from __future__ import annotations

from numbers import Real
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Module, ModuleList

from einops import rearrange, repeat
from hyper_connections import get_init_and_expand_reduce_stream_functions
from x_transformers.x_transformers import RotaryEmbedding

from coconut_pytorch.backbone import BackboneOutput
from coconut_pytorch.inputs import check_finite_number
from coconut_pytorch.kv_cache import KVCache, StaticKVCache, token_positions
from coconut_pytorch.helpers import default, exists


def autocast_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype autocast computes in on this device, or `default` when autocast is off."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if enabled else default
    except (TypeError, AttributeError):
        # torch < 2.4 has only the per-device getters
        if device_type == 'cuda':
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else default
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else default


# attention mask

def attention_mask(key_mask: Tensor | None, num_queries: int, num_keys: int, device) -> Tensor | None:
    """Boolean (b or 1, 1, n, k) mask for the new queries, which sit at the last `num_queries` key columns.

    Returns None when SDPA's own `is_causal` is exact (no cache, no padding) or no mask is needed at all
    (a single query with no padding), so the flash kernel can run.
    A query always sees itself: a padding query would otherwise have no key at all, which gives NaN in some
    SDPA backends; its output is never attended to, so this changes nothing real.
    """
    offset = num_keys - num_queries
    if not exists(key_mask) and (num_queries == 1 or offset == 0):
        return None

    query_columns = torch.arange(offset, num_keys, device = device)
    key_columns = torch.arange(num_keys, device = device)
    causal = key_columns[None, :] <= query_columns[:, None]                      # (n, k)

    if not exists(key_mask):
        return rearrange(causal, 'n k -> 1 1 n k')

    diagonal = key_columns[None, :] == query_columns[:, None]
    mask = (causal & rearrange(key_mask, 'b k -> b 1 k')) | diagonal               # (b, n, k)
    return rearrange(mask, 'b n k -> b 1 n k')


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """x (b, n, D) with every masked position (mask (b, n) False) set to 0.

    A padding slot reads some real token's embedding (padding is id 0 inside) or whatever hidden state a thought
    slot past its row's steps is handed. Its key is masked, but attention still multiplies its value by a
    probability of 0, and 0 x NaN = NaN: a NaN there (a NaN row of the embedding table, say) would reach every real
    position. A zero input keeps every key and value of a padding slot finite whatever it was given; real
    positions never attend to it, so nothing real changes. Same shape, no host sync: fine under graph capture.
    """
    if not exists(mask):
        return x
    return x.masked_fill(~rearrange(mask, 'b n -> b n 1'), 0.)


# attention over cache segments

# a thought step or a generated token queries a few positions against a long cache: reading the long prompt segment
# in place costs (queries x keys) scores instead of a copy of every key and value, and autograd then keeps a reference
# to the prompt's keys and values, not a fresh concatenation of them per step
SEGMENTED_QUERY_LIMIT = 16


def merge_heads(x: Tensor) -> Tensor:
    """(b, h, n, d) -> (b, n, h d)."""
    return x.transpose(1, 2).flatten(2)


def apply_rotary(x: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
    """Rotary position embedding of x (..., n, d) with pairs interleaved (x-transformers' `rotate_half` layout):
    x * cos + rotate_half(x) * sin, written as x * cos + swap_pairs(x) * signed_sin with signed_sin = sin * (-1, +1)
    per pair (`Transformer.rotary_for`): the same numbers (a sign flip is exact) in three kernels instead of six,
    and queries and keys go through it together."""
    cos, signed_sin = rotary
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)         # (..., d/2 pairs, 2) swapped within each pair
    return torch.addcmul(x * cos, swapped, signed_sin)


def segmented_attention(q: Tensor, keys: Sequence[Tensor], values: Sequence[Tensor], mask: Tensor | None) -> Tensor:
    """Softmax attention of q (b, h, n, d) over keys and values given as segments along the sequence.

    mask: (b or 1, 1, n, k) bool over the joined keys, True = attend; None = attend to all.
    """
    scale = q.shape[-1] ** -0.5
    scores = torch.cat([q @ k.transpose(-1, -2) for k in keys], dim = -1) * scale   # (b, h, n, k)

    if exists(mask):
        scores = scores.masked_fill(~mask, float('-inf'))

    probs = scores.softmax(dim = -1).to(values[0].dtype)

    # slices and a running sum: the same sum written as `probs.split(...)` and `sum(...)` compiled to a wrong
    # backward under inductor (torch 2.13, CPU); test_compiled_training_gradients_equal_eager guards this form
    out, start = None, 0
    for v in values:
        term = probs[..., start:start + v.shape[-2]] @ v
        out = out + term if exists(out) else term
        start += v.shape[-2]
    return out


# blocks

# hyper-connection streams: the library's modules hold the parameters; the math runs here, in one pass per block

NORMALIZE_EPS = 1e-12       # F.normalize's default floor on a vector's length


def mix_streams(hyper_conn: Module, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The width connection of `hyper_conn` (the hyper-connections library's `HyperConnections`: its parameters,
    its math, with one input view, tanh and no fractions) on streams kept as (b, n, s, d): returns the branch
    input (b, n, d), the mixed residual streams (b, n, s, d) and the depth weights beta (b, n, s).

    The library's forward makes two small matmuls for the dynamic weights, an einsum for the mix and the einops
    reshapes of its (b s) layout around each, per block and per thought step; here both dynamic weights come from one
    matmul and the mix is one batched matmul, on a layout that needs no reshape. It equals the library's forward in
    float64, gradients included (tests/test_streams.py)."""
    num_streams = streams.shape[-2]
    norm = hyper_conn.norm
    # the library normalizes the streams, x / |x| * scale * (gamma + 1), then projects them; the norm's gain folds
    # into the projection and the division moves after it, onto (b, n, s, s + 2) instead of (b, n, s, d)
    gain = ((norm.gamma + 1) * norm.scale).unsqueeze(-1)                                            # (d, 1)
    dynamic_weights = torch.cat((hyper_conn.dynamic_alpha_fn, hyper_conn.dynamic_beta_fn.unsqueeze(-1)), dim = -1) * gain   # (d, 1 + s + 1)
    lengths = torch.linalg.vector_norm(streams, dim = -1, keepdim = True).clamp_min(NORMALIZE_EPS)  # (b, n, s, 1), F.normalize's
    dynamic = torch.tanh((streams @ dynamic_weights) / lengths)                                     # (b, n, s, 1 + s + 1)
    alpha = dynamic[..., :num_streams + 1] * hyper_conn.dynamic_alpha_scale + hyper_conn.static_alpha   # (b, n, s, 1 + s)
    beta = dynamic[..., num_streams + 1] * hyper_conn.dynamic_beta_scale + hyper_conn.static_beta      # (b, n, s)
    # one bmm over every (b, n) position: a 4-D matmul adds expands and copies around the same kernel
    mixed = torch.bmm(alpha.flatten(0, 1).transpose(1, 2), streams.flatten(0, 1))                   # ((b n), 1 + s, d)
    mixed = mixed.unflatten(0, streams.shape[:2])                                                   # (b, n, 1 + s, d)
    return mixed[..., 0, :], mixed[..., 1:, :], beta


def add_to_streams(branch_output: Tensor, streams: Tensor, beta: Tensor) -> Tensor:
    """The depth connection: the branch output (b, n, d) weighted by beta (b, n, s) into every stream (b, n, s, d)."""
    return torch.addcmul(streams, branch_output.unsqueeze(-2), beta.unsqueeze(-1))        # (b, n, 1, d) x (b, n, s, 1)


def check_hyper_connections(hyper_conn: Module):
    """`mix_streams` computes what these settings of the library's `HyperConnections` compute, and no others."""
    settings = dict(num_fracs = 1, num_input_views = 1, channel_first = False, add_branch_out_to_residual = True)
    if any(getattr(hyper_conn, name, None) != value for name, value in settings.items()) or not isinstance(hyper_conn.act, nn.Tanh) \
            or hyper_conn.dropout.p != 0:
        raise ValueError(f'hyper-connections with other settings than {settings}, tanh and no dropout are not supported here')


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` whose weight follows the input's dtype: under bf16 autocast the input is bf16, and a float32
    weight would push it off the fused kernel onto a slower fallback."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class Attention(Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, dropout: float = 0., learned_value_residual_mix: bool = False):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        dim_inner = dim_head * heads

        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, dim_inner * 3, bias = False)
        self.to_out = nn.Linear(dim_inner, dim, bias = False)

        # value residual learning: later layers mix in the first layer's values, per token and head
        self.to_value_residual_mix = nn.Linear(dim, heads) if learned_value_residual_mix else None

    def project(self, x: Tensor, rotary: tuple[Tensor, Tensor], first_values: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Queries, keys and values (b, h, n, d) of new tokens with rotary applied, and the values before the mix."""
        normed = self.norm(x)
        qkv = self.to_qkv(normed).unflatten(-1, (3, self.heads, self.dim_head)).permute(2, 0, 3, 1, 4)   # (3, b, h, n, d)
        v = raw_values = qkv[2]

        if exists(self.to_value_residual_mix) and exists(first_values):
            mix = self.to_value_residual_mix(normed).sigmoid().transpose(1, 2).unsqueeze(-1)            # (b, h, n, 1)
            v = torch.lerp(v, first_values, mix)        # v (1 - mix) + first_values mix, in one kernel

        q, k = apply_rotary(qkv[:2], rotary).unbind(0)       # queries and keys together
        return q, k, v, raw_values

    def forward(
        self,
        x: Tensor,                          # (b, n, D)
        *,
        rotary: tuple[Tensor, Tensor],      # cos, signed sin (b, 1, n, d) of the new tokens' positions (`apply_rotary`)
        past_keys: tuple[Tensor, ...],      # cached segments, each (b, h, n_i, d), rotary applied
        past_values: tuple[Tensor, ...],
        mask: Tensor | None,                # (b or 1, 1, n, k) bool
        is_causal: bool,
        first_values: Tensor | None = None  # (b, h, n, d), the first layer's values of these tokens
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        q, k, v, raw_values = self.project(x, rotary, first_values)

        # contiguous once here, so attention over the cache later reads these segments without copying them
        k, v = k.contiguous(), v.contiguous()
        new_keys, new_values = k, v

        if len(past_keys) > 0 and q.shape[-2] <= SEGMENTED_QUERY_LIMIT and not (self.training and self.dropout > 0.):
            # the first segment (the prompt) is read in place; the short segments after it are joined, which is cheap
            keys = (past_keys[0], torch.cat((*past_keys[1:], k), dim = -2))
            values = (past_values[0], torch.cat((*past_values[1:], v), dim = -2))
            out = merge_heads(segmented_attention(q, keys, values, mask))
        else:
            if len(past_keys) > 0:
                k = torch.cat((*past_keys, k), dim = -2)
                v = torch.cat((*past_values, v), dim = -2)

            out = self.attend(q, k, v, mask, is_causal)

        return self.to_out(out), new_keys, new_values, raw_values

    def forward_static(
        self,
        x: Tensor,                          # (b, n, D)
        *,
        rotary: tuple[Tensor, Tensor],
        cache: StaticKVCache,
        layer_index: int,
        mask: Tensor | None,                # (b, 1, n, capacity) over the cache after this write; for a first
        is_causal: bool,                    # write into an empty cache, (b or 1, 1, n, n) over the new tokens
        first_values: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attention that writes its keys and values into a static cache and reads the whole buffer."""
        q, k, v, raw_values = self.project(x, rotary, first_values)
        cache.write(layer_index, k, v)

        if cache.length == 0:
            # the prefill attends to its own keys only, so it keeps the flash kernel
            out = self.attend(q, k, v, mask, is_causal)
        else:
            out = self.attend(q, cache.keys[layer_index], cache.values[layer_index], mask, False)

        return self.to_out(out), raw_values

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype),
            attn_mask = mask,
            is_causal = is_causal,
            dropout_p = self.dropout if self.training else 0.
        )
        return merge_heads(out)


def glu_width(dim: int, mult: float = 4) -> int:
    """The gated feedforward's default inner width: a gated feedforward has three matrices where a plain one has
    two, so at 2/3 of `dim * mult` it has the plain one's parameters (the GLU paper's rule, and coconut-pytorch
    0.0.32's width at the same arguments)."""
    return int(dim * mult * 2 / 3)


class FeedForward(Module):
    """Gated feedforward: SwiGLU or GEGLU."""

    def __init__(self, dim: int, mult: float = 4, glu: str = 'swiglu', dropout: float = 0., dim_inner: int | None = None):
        super().__init__()
        if glu not in ('swiglu', 'geglu'):
            raise ValueError(f'ff_glu must be "swiglu" or "geglu", got {glu!r}')

        dim_inner = default(dim_inner, glu_width(dim, mult))
        self.activation = F.silu if glu == 'swiglu' else F.gelu

        self.norm = RMSNorm(dim)
        self.proj_in = nn.Linear(dim, dim_inner * 2, bias = False)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(dim_inner, dim, bias = False)

    def forward(self, x: Tensor) -> Tensor:
        hidden, gate = self.proj_in(self.norm(x)).chunk(2, dim = -1)
        return self.proj_out(self.dropout(hidden * self.activation(gate)))


# the transformer

SUPPORTED_ATTEND_KWARGS = {'dropout', 'flash'}


class Transformer(Module):
    """Decoder-only Transformer with rotary attention, value residual learning and hyper-connections: the native
    backbone (`coconut_pytorch.backbone.Backbone`) that `Coconut` builds from a dict of these arguments.

    Args:
        num_tokens: vocabulary size.
        dim: model width.
        depth: number of attention + feedforward blocks.
        dim_head, heads: attention head size and count.
        ff_mult: feedforward size as a multiple of `dim`: the gated feedforward's inner width is
            `int(dim * ff_mult * 2 / 3)`, so that its three matrices hold what a plain feedforward of width
            `dim * ff_mult` would (as in coconut-pytorch 0.0.32: the same arguments make the same model size).
        ff_dim_inner: the gated feedforward's inner width, exactly (overrides the `ff_mult` rule; checkpoints made
            before that rule, at `dim * ff_mult`, load with it).
        attend_kwargs: `dropout` (attention dropout) and `flash` (accepted for compatibility; SDPA picks its kernel).
        num_residual_streams: residual streams mixed by hyper-connections; 1 gives a plain residual.
        ff_glu: 'swiglu' or 'geglu'.
        value_residual: mix the first layer's values into later layers through a learned gate.
        rotary_base: base of the rotary frequencies.
        accept_value_residual: coconut-pytorch 0.0.32's name for `value_residual` (wins when given).
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: float = 4,
        attend_kwargs: dict | None = None,
        num_residual_streams: int = 4,
        ff_glu: str = 'swiglu',
        ff_dropout: float = 0.,
        value_residual: bool = True,
        rotary_base: float = 10000.,
        accept_value_residual: bool | None = None,
        ff_dim_inner: int | None = None
    ):
        super().__init__()
        for name, value in dict(num_tokens = num_tokens, dim = dim, depth = depth, dim_head = dim_head, heads = heads, num_residual_streams = num_residual_streams).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')

        check_finite_number(ff_mult, 'ff_mult', inclusive = False)
        if exists(ff_dim_inner) and (not isinstance(ff_dim_inner, int) or isinstance(ff_dim_inner, bool) or ff_dim_inner < 1):
            raise ValueError(f'ff_dim_inner must be a positive integer or None, got {ff_dim_inner!r}')
        if not exists(ff_dim_inner) and glu_width(dim, ff_mult) < 1:
            raise ValueError(f'ff_mult gives a feedforward width of 0 at dim {dim}: int(dim * ff_mult * 2 / 3) must be >= 1, got ff_mult={ff_mult!r}')
        check_finite_number(rotary_base, 'rotary_base', inclusive = False)

        value_residual = default(accept_value_residual, value_residual)

        if dim_head % 2 != 0:
            raise ValueError(f'dim_head must be even for rotary embeddings, got {dim_head}')

        attend_kwargs = dict(default(attend_kwargs, {}))
        unknown = set(attend_kwargs) - SUPPORTED_ATTEND_KWARGS
        if unknown:
            raise ValueError(f'attend_kwargs has unsupported keys {sorted(unknown)}; supported: {sorted(SUPPORTED_ATTEND_KWARGS)}')

        for name, value in (('attend_kwargs["dropout"]', attend_kwargs.get('dropout', 0.)), ('ff_dropout', ff_dropout)):
            if not isinstance(value, Real) or isinstance(value, bool) or not 0. <= value < 1.:
                raise ValueError(f'{name} must be a probability in [0, 1), got {value!r}')

        self.num_tokens = num_tokens
        self.dim = dim
        self.depth = depth
        self.heads = heads
        self.dim_head = dim_head
        self.num_residual_streams = num_residual_streams

        self.token_emb = nn.Embedding(num_tokens, dim)
        self.rotary = RotaryEmbedding(dim_head, base = rotary_base)

        # with one stream, the library's plain residual; with several, its HyperConnections hold the parameters and
        # `mix_streams` / `add_to_streams` do the math on (b, n, s, d) streams
        init_hyper_conn, *_ = get_init_and_expand_reduce_stream_functions(num_residual_streams, disable = num_residual_streams == 1)

        self.layers = ModuleList([])
        for index in range(depth):
            attn = Attention(dim, dim_head, heads, dropout = attend_kwargs.get('dropout', 0.), learned_value_residual_mix = value_residual and index > 0)
            ff = FeedForward(dim, ff_mult, glu = ff_glu, dropout = ff_dropout, dim_inner = ff_dim_inner)

            # explicit layer indices: the library picks a random stream otherwise, and seeds must reproduce models
            self.layers.append(ModuleList([
                init_hyper_conn(dim = dim, layer_index = 2 * index),
                attn,
                init_hyper_conn(dim = dim, layer_index = 2 * index + 1),
                ff
            ]))

        if num_residual_streams > 1:
            for layer in self.layers:
                check_hyper_connections(layer[0])
                check_hyper_connections(layer[2])
        self.stream_mixing = (mix_streams, add_to_streams)     # compiled by `compile_blocks`

        self.value_residual = value_residual
        self.final_norm = RMSNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens, bias = False)

    @property
    def device(self) -> torch.device:
        return self.token_emb.weight.device

    def compile_blocks(self, **compile_kwargs):
        """Regional compilation: `torch.compile` each attention and feedforward block in place, and the stream
        mixing between them, dynamic in the sequence length.

        Blocks, not the whole forward: the cache's structure grows with every thought step, which would make a
        whole-forward graph recompile each step; a block sees only tensors. Every layer's block has the same code
        with its own parameters as inputs, so one compiled graph serves every layer, and (dynamic in length) the
        prompt, each thought step and the answer alike: the cold start is that of one block, not of the model.
        """
        compile_kwargs = {'dynamic': True, **compile_kwargs}
        for _, attn, _, ff in self.layers:
            attn.compile(**compile_kwargs)
            ff.compile(**compile_kwargs)
        if self.num_residual_streams > 1:
            self.stream_mixing = (torch.compile(mix_streams, **compile_kwargs), torch.compile(add_to_streams, **compile_kwargs))
        return self

    def embed(self, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        """Token ids (b, n) and/or embeddings (b, n, D), given alone or as a list, to one (b, n, D) tensor."""
        if torch.is_tensor(inputs):
            inputs = [inputs]

        embeds = [self.token_emb(t) if t.dtype in (torch.long, torch.int) else t for t in inputs]
        return torch.cat(embeds, dim = -2)

    def embedding_weight(self) -> Tensor:
        """(V, D) the token embedding table (the optional backbone member `Coconut.embedding_table` reads)."""
        return self.token_emb.weight

    # the backbone interface (coconut_pytorch.backbone.Backbone): caches and their sizes

    def empty_cache(self, batch: int) -> KVCache:
        return KVCache.empty(batch, self.depth, device = self.device)

    def compute_dtype(self) -> torch.dtype:
        """The dtype keys and values are computed in: autocast's when it is on, else the weights'."""
        return autocast_dtype(self.device.type, default = self.token_emb.weight.dtype)

    def static_cache(self, batch: int, capacity: int, device: torch.device | None = None) -> StaticKVCache:
        return StaticKVCache(batch, self.depth, self.heads, self.dim_head, capacity, self.compute_dtype(), default(device, self.device))

    def kv_bytes(self, batch: int, positions: int) -> int:
        """Keys and values of every layer and head: 2 x depth x batch x heads x dim_head x positions elements."""
        return 2 * self.depth * batch * self.heads * self.dim_head * positions * self.compute_dtype().itemsize

    def forward_with_cache(
        self,
        inputs: Tensor | Sequence[Tensor],
        *,
        mask: Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None
    ) -> BackboneOutput:
        """Run new tokens against a cache.

        Args:
            inputs: ids (b, n) and/or embeddings (b, n, D), alone or in a list concatenated along n.
            mask: (b, n) bool, False marks padding among the new tokens, whose inputs are replaced by zeros
                (`zero_padding`); None means all real.
            cache: what came before; None for a fresh sequence. A `KVCache` is extended into a new one
                (`forward_segments`); a `StaticKVCache` (inference) is written in place (`forward_static`) and
                returned. Each cache says which of the two writes it (`cache.run`).

        Returns the final-normed hidden states of the new tokens and the extended cache.
        """
        x = self.embed(inputs)
        cache = cache if exists(cache) else self.empty_cache(x.shape[0])
        return cache.run(self, x, mask)

    def forward_segments(self, x: Tensor, mask: Tensor | None, cache: KVCache) -> BackboneOutput:
        """Embeddings x (b, n, D) after a segment cache; returns their hiddens and a new cache, one segment longer."""
        seq_len = x.shape[1]
        rotary = self.rotary_for(cache.next_position, mask, seq_len, x)

        key_mask = cache.key_mask_with(mask, seq_len)
        attn_mask = attention_mask(key_mask, seq_len, cache.length + seq_len, x.device)
        is_causal = not exists(attn_mask) and cache.length == 0 and seq_len > 1

        new_keys, new_values = [], []

        def attend(layer_index: int, attn: Attention, branch_input: Tensor, first_values: Tensor | None):
            out, keys, values, raw_values = attn(
                branch_input,
                rotary = rotary,
                past_keys = cache.keys[layer_index],
                past_values = cache.values[layer_index],
                mask = attn_mask,
                is_causal = is_causal,
                first_values = first_values
            )
            new_keys.append(keys)
            new_values.append(values)
            return out, raw_values

        hiddens = self.run_layers(x, mask, attend)
        return BackboneOutput(hiddens, cache.append(new_keys, new_values, mask, seq_len))

    def forward_static(self, x: Tensor, mask: Tensor | None, cache: StaticKVCache) -> Tensor:
        """Embeddings (b, n, D) through the layers against a static cache, written in place; returns the hiddens.

        Free of host syncs and of shapes that depend on the cache's contents, so a step can be graph-captured.
        """
        seq_len = x.shape[1]
        cache.check_room(seq_len)
        new_mask = mask if exists(mask) else torch.ones(x.shape[:2], dtype = torch.bool, device = x.device)

        rotary = self.rotary_for(cache.next_position, mask, seq_len, x)

        if cache.length == 0:
            attn_mask = attention_mask(mask, seq_len, seq_len, x.device)
            is_causal = not exists(attn_mask) and seq_len > 1
        else:
            # the new queries see every real column written before them and themselves, causally among the new
            columns = torch.arange(cache.capacity, device = x.device)
            query_columns = cache.write_index + torch.arange(seq_len, device = x.device)         # (n,)
            causal = columns[None, :] <= query_columns[:, None]                                 # (n, C)
            written = cache.key_mask.index_copy(1, query_columns, new_mask)                      # (b, C)
            diagonal = columns[None, :] == query_columns[:, None]
            attn_mask = rearrange((causal & rearrange(written, 'b c -> b 1 c')) | diagonal, 'b n c -> b 1 n c')
            is_causal = False

        def attend(layer_index: int, attn: Attention, branch_input: Tensor, first_values: Tensor | None):
            return attn.forward_static(
                branch_input,
                rotary = rotary,
                cache = cache,
                layer_index = layer_index,
                mask = attn_mask,
                is_causal = is_causal,
                first_values = first_values
            )

        hiddens = self.run_layers(x, mask, attend)
        cache.advance(new_mask, seq_len)
        cache.length += seq_len
        return hiddens

    def rotary_for(self, next_position: Tensor, mask: Tensor | None, seq_len: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """cos and signed sin (b, 1, n, d) of the new tokens (`apply_rotary`), once per call and shared by every
        layer, in the compute dtype (no float32 round trip per layer). Positions count real tokens only, so padding
        anywhere shifts nothing."""
        freqs, _ = self.rotary(token_positions(next_position, mask, seq_len))
        compute_dtype = autocast_dtype(x.device.type, default = x.dtype)
        freqs = rearrange(freqs, 'b n d -> b 1 n d')
        # rotate_half's signs folded into sin: (-sin, +sin) per pair, the pairs' frequencies being interleaved
        # (f0, f0, f1, f1, ...). Made from the frequencies, not kept as a buffer: a non-persistent buffer is left
        # uninitialised by meta-device construction followed by `to_empty` and `load_state_dict`
        sin = freqs[..., 0::2].sin()
        signed_sin = torch.stack((-sin, sin), dim = -1).flatten(-2)
        return freqs.cos().to(compute_dtype), signed_sin.to(compute_dtype)

    def run_layers(self, x: Tensor, mask: Tensor | None, attend: Callable) -> Tensor:
        """The residual streams through every block; `attend(layer_index, attn, branch_input, first_values)`
        runs one attention against whichever cache the caller holds and returns (output, raw values).

        Every path runs through here (the segment cache, the static cache and its CUDA graphs), so this is where a
        masked input is zeroed (`zero_padding`)."""
        x = zero_padding(x, mask)
        streams = self.num_residual_streams
        if streams > 1:
            x = repeat(x, 'b n d -> b n s d', s = streams)      # every stream starts as the input
        first_values = None

        for layer_index, (attn_hyper_conn, attn, ff_hyper_conn, ff) in enumerate(self.layers):
            branch_input, add_attn_residual = self.connect(attn_hyper_conn, x)
            attn_out, raw_values = attend(layer_index, attn, branch_input, first_values)
            x = add_attn_residual(attn_out)

            if layer_index == 0 and self.value_residual:
                first_values = raw_values

            branch_input, add_ff_residual = self.connect(ff_hyper_conn, x)
            x = add_ff_residual(ff(branch_input))

        if streams > 1:
            x = x.sum(dim = -2)
        return self.final_norm(x)

    def connect(self, hyper_conn: Module, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(the block's input, a function adding the block's output to the residual) for residual `x`: (b, n, d)
        with one stream (the library's plain residual), (b, n, s, d) streams with several (`mix_streams`)."""
        if self.num_residual_streams == 1:
            return hyper_conn(x)
        mix, add = self.stream_mixing
        branch_input, streams, beta = mix(hyper_conn, x)
        return branch_input, lambda branch_output: add(branch_output, streams, beta)

    def forward(
        self,
        inputs: Tensor | Sequence[Tensor],
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_cache: bool = False
    ) -> Tensor | tuple[Tensor, KVCache]:
        """Logits (b, n, num_tokens) of the new tokens; with `return_cache`, also the extended cache."""
        hiddens, cache = self.forward_with_cache(inputs, mask = mask, cache = cache)
        logits = self.to_logits(hiddens)
        return (logits, cache) if return_cache else logits
