"""The backbone seam: Coconut runs over anything with the methods of `Backbone`, and uses nothing else of it."""

import pytest
import torch
from torch import nn

from coconut_pytorch import Coconut, Transformer
from coconut_pytorch.backbone import is_backbone

NUM_TOKENS = 24


class OnlyTheInterface(nn.Module):
    """A backbone that offers exactly the methods and attributes of `Backbone`, by delegating to a Transformer that
    Coconut cannot see (an attribute it would have to know the name of): any other attribute Coconut reached for
    would raise AttributeError."""

    def __init__(self, inner: Transformer):
        super().__init__()
        self.hidden_away = inner
        self.dim, self.num_tokens = inner.dim, inner.num_tokens

    def embed(self, inputs):
        return self.hidden_away.embed(inputs)

    def forward_with_cache(self, inputs, *, mask = None, cache = None):
        return self.hidden_away.forward_with_cache(inputs, mask = mask, cache = cache)

    def forward_static(self, x, mask, cache):
        return self.hidden_away.forward_static(x, mask, cache)

    def to_logits(self, hiddens):
        return self.hidden_away.to_logits(hiddens)

    def empty_cache(self, batch):
        return self.hidden_away.empty_cache(batch)

    def static_cache(self, batch, capacity, device = None):
        return self.hidden_away.static_cache(batch, capacity, device)

    def kv_bytes(self, batch, positions):
        return self.hidden_away.kv_bytes(batch, positions)


def pair(**kwargs):
    """The same weights as a native Coconut and as one over `OnlyTheInterface`, in float64."""
    torch.manual_seed(0)
    native = Coconut(transformer = dict(num_tokens = NUM_TOKENS, dim = 16, depth = 2, heads = 2, dim_head = 8), **kwargs).double()
    wrapped = Coconut(transformer = OnlyTheInterface(Transformer(num_tokens = NUM_TOKENS, dim = 16, depth = 2, heads = 2, dim_head = 8)), **kwargs).double()
    wrapped.load_state_dict({key.replace('model.', 'model.hidden_away.', 1): value for key, value in native.state_dict().items()})
    return native, wrapped


def test_the_native_transformer_is_a_backbone():
    assert is_backbone(Transformer(num_tokens = 8, dim = 8, depth = 1, heads = 1, dim_head = 8))
    assert is_backbone(OnlyTheInterface(Transformer(num_tokens = 8, dim = 8, depth = 1, heads = 1, dim_head = 8)))
    assert not is_backbone(nn.Linear(4, 4))


def test_a_model_without_the_interface_is_refused():
    with pytest.raises(TypeError, match = 'Backbone'):
        Coconut(num_reasoning_steps = 1, transformer = nn.Linear(4, 4))


@pytest.mark.parametrize('kwargs', [
    dict(num_reasoning_steps = 3, num_latents_per_step = 2, learn_begin_of_thought = True),
    dict(num_reasoning_steps = 2, num_hypotheses = 2, mix_hypotheses = True, hypothesis_similarity_loss_weight = 0.5),
    dict(num_reasoning_steps = 2, thought_mode = 'pause'),
    dict(num_reasoning_steps = 2, checkpoint = True),
], ids = ['continuous', 'hypotheses', 'pause', 'checkpointed'])
def test_coconut_over_only_the_interface_equals_the_native_model(kwargs):
    native, wrapped = pair(**kwargs)
    prompts = [torch.randint(0, NUM_TOKENS, (n,)) for n in (5, 9, 3)]
    answers = torch.randint(0, NUM_TOKENS, (3, 4))
    steps = torch.tensor([kwargs['num_reasoning_steps'], 0, 1])

    losses, grads = [], []
    for model in (native, wrapped):
        model.train()
        loss = model(prompts, answers, num_reasoning_steps = steps)
        loss.backward()
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1], atol = 0, rtol = 0)
    torch.testing.assert_close(grads[0], grads[1], atol = 0, rtol = 0)

    generated = [model.eval().generate(prompts, max_length = 6, temperature = 0., num_reasoning_steps = steps) for model in (native, wrapped)]
    assert torch.equal(generated[0], generated[1])


def test_thought_targets_and_size_checks_go_through_the_interface():
    native, wrapped = pair(num_reasoning_steps = 2)
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 4)), torch.randint(0, NUM_TOKENS, (2, 3))
    targets = torch.zeros(2, 2, NUM_TOKENS, dtype = torch.bool)
    targets[:, 0, 3] = True
    torch.testing.assert_close(native(prompt, answer, thought_targets = targets), wrapped(prompt, answer, thought_targets = targets), atol = 0, rtol = 0)
    with pytest.raises(ValueError, match = 'max_length'):
        wrapped.generate(prompt, max_length = 10 ** 12)
