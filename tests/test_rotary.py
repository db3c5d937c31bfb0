"""Rotary embeddings as `Transformer` applies them (`apply_rotary` with the signed sin of `rotary_for`): x-transformers'
x * cos + rotate_half(x) * sin exactly, and attention scores that depend on relative positions only."""

import torch
from x_transformers.x_transformers import rotate_half

from coconut_pytorch import Transformer
from coconut_pytorch.transformer import apply_rotary


def rotary_of(model: Transformer, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (b, 1, n, d) at `positions` (b, n), through `rotary_for` (positions count real tokens)."""
    b, n = positions.shape
    x = torch.zeros(b, n, model.dim, dtype = torch.float64)
    return model.rotary_for(positions[:, 0], None, n, x)


def test_apply_rotary_equals_rotate_half_form():
    torch.manual_seed(0)
    model = Transformer(num_tokens = 16, dim = 32, depth = 1, dim_head = 8, heads = 2).double()
    positions = torch.arange(5)[None, :] + torch.tensor([[0], [7]])
    cos, signed_sin = rotary_of(model, positions)
    freqs, _ = model.rotary(positions)
    sin = freqs.sin()[:, None].double()
    assert torch.equal(cos, freqs.cos()[:, None].double())

    x = torch.randn(2, 2, 5, 8, dtype = torch.float64)       # (b, h, n, d)
    expected = x * cos + rotate_half(x) * sin
    torch.testing.assert_close(apply_rotary(x, (cos, signed_sin)), expected, rtol = 0, atol = 1e-15)
    # queries and keys stacked on a leading axis, as `Attention.project` applies it
    stacked = torch.stack((x, 2 * x))
    torch.testing.assert_close(apply_rotary(stacked, (cos, signed_sin))[1], 2 * expected, rtol = 0, atol = 1e-14)


def test_rotary_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    model = Transformer(num_tokens = 16, dim = 32, depth = 1, dim_head = 8, heads = 2).double()
    q, k = torch.randn(2, 1, 1, 1, 8, dtype = torch.float64).unbind(0)

    def score(query_position: int, key_position: int) -> torch.Tensor:
        rq = rotary_of(model, torch.tensor([[query_position]]))
        rk = rotary_of(model, torch.tensor([[key_position]]))
        return (apply_rotary(q, rq) * apply_rotary(k, rk)).sum()

    torch.testing.assert_close(score(9, 4), score(25, 20), rtol = 0, atol = 1e-12)
    assert not torch.allclose(score(9, 4), score(9, 5))
