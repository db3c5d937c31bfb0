"""A minimal pre-norm decoder-only Transformer, the "plain decoder of the same size" ceiling of benchmark.py.

Same widths as coconut_pytorch's Transformer (token embedding, `depth` blocks of attention + SwiGLU feedforward
with inner width dim * ff_mult, a final RMSNorm and an output projection), but none of its extras: one residual
stream, no value residual, no KV cache, no masks. Attention is causal SDPA with `is_causal = True`, positions
are rotary with cos/sin tables computed once.

Shapes: b batch, n tokens, h heads, d dim_head, D model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim = -1)
    return torch.cat((-x2, x1), dim = -1)


class Rotary(nn.Module):
    """cos/sin tables for positions 0..n-1, in the half-split layout of `rotate_half`."""

    def __init__(self, dim_head: int, base: float = 10000.):
        super().__init__()
        inv_freq = 1. / (base ** (torch.arange(0, dim_head, 2).float() / dim_head))
        self.register_buffer('inv_freq', inv_freq, persistent = False)

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        t = torch.arange(seq_len, device = self.inv_freq.device, dtype = torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        freqs = torch.cat((freqs, freqs), dim = -1)         # (n, d)
        return freqs.cos(), freqs.sin()


class Block(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: float):
        super().__init__()
        self.heads = heads
        dim_attn = dim_head * heads
        dim_ff = int(dim * ff_mult)

        self.attn_norm = nn.RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, dim_attn * 3, bias = False)
        self.to_out = nn.Linear(dim_attn, dim, bias = False)

        self.ff_norm = nn.RMSNorm(dim)
        self.ff_in = nn.Linear(dim, dim_ff * 2, bias = False)
        self.ff_out = nn.Linear(dim_ff, dim, bias = False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, n, _ = x.shape

        q, k, v = self.to_qkv(self.attn_norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)     # bf16 under autocast, like q and k
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        attended = F.scaled_dot_product_attention(q, k, v, is_causal = True)
        x = x + self.to_out(attended.transpose(1, 2).reshape(b, n, -1))

        hidden, gate = self.ff_in(self.ff_norm(x)).chunk(2, dim = -1)
        return x + self.ff_out(hidden * F.silu(gate))


class PlainDecoder(nn.Module):
    def __init__(self, num_tokens: int, dim: int, depth: int, dim_head: int = 64, heads: int = 8, ff_mult: float = 4):
        super().__init__()
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.rotary = Rotary(dim_head)
        self.layers = nn.ModuleList([Block(dim, dim_head, heads, ff_mult) for _ in range(depth)])
        self.final_norm = nn.RMSNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens, bias = False)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits (b, n, num_tokens) of ids (b, n)."""
        x = self.token_emb(ids)
        cos, sin = self.rotary(ids.shape[-1])

        for layer in self.layers:
            x = layer(x, cos, sin)

        return self.to_logits(self.final_norm(x))
