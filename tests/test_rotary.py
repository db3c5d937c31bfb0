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


def test_attention_projection_equals_the_explicit_formula():
    # Attention.project: the qkv split (q, k, v in that order, heads outermost in each), value residual learning
    # v (1 - mix) + first_values mix, and rotary on queries and keys; written out here with einops and rotate_half
    from einops import rearrange
    torch.manual_seed(0)
    model = Transformer(num_tokens = 16, dim = 32, depth = 2, dim_head = 8, heads = 2).double()
    attn = model.layers[1][1]
    x = torch.randn(2, 5, 32, dtype = torch.float64)
    first_values = torch.randn(2, 2, 5, 8, dtype = torch.float64)
    rotary = rotary_of(model, torch.arange(5)[None, :].expand(2, 5))
    q, k, v, raw = attn.project(x, rotary, first_values)

    normed = attn.norm(x)
    eq, ek, ev = rearrange(attn.to_qkv(normed), 'b n (qkv h d) -> qkv b h n d', qkv = 3, h = 2)
    mix = rearrange(attn.to_value_residual_mix(normed).sigmoid(), 'b n h -> b h n 1')
    freqs, _ = model.rotary(torch.arange(5)[None, :])
    cos, sin = freqs.cos()[:, None].double(), freqs.sin()[:, None].double()
    for ours, expected in ((q, eq * cos + rotate_half(eq) * sin), (k, ek * cos + rotate_half(ek) * sin),
                           (v, ev * (1 - mix) + first_values * mix), (raw, ev)):
        torch.testing.assert_close(ours, expected, rtol = 0, atol = 1e-14)


def test_a_model_built_on_the_meta_device_and_loaded_computes_what_the_original_does():
    # nothing the forward reads may live outside the state dict: meta-device construction, `to_empty` and
    # `load_state_dict` (how large models are set up, FSDP2 among them) leave anything else uninitialised
    torch.manual_seed(0)
    kwargs = dict(num_tokens = 16, dim = 32, depth = 2, dim_head = 8, heads = 2)
    model = Transformer(**kwargs).double()
    with torch.device('meta'):
        twin = Transformer(**kwargs).double()
    twin = twin.to_empty(device = 'cpu')
    twin.load_state_dict(model.state_dict())
    ids = torch.randint(0, 16, (2, 7))
    torch.testing.assert_close(twin(ids), model(ids), rtol = 0, atol = 0)
