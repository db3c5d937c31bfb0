"""Learned halting (`Coconut(halt_loss_weight > 0)`, `generate(halt_threshold = p)`), in float64.

The halting loss against a by-hand binary cross-entropy; the option off against the plain model, exactly; and a
batch whose rows halt at different steps against each row alone with the count it halted at.
"""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from models import NUM_TOKENS, float64_coconut


TOL = dict(atol = 1e-10, rtol = 1e-10)

make_model = partial(float64_coconut, num_latents_per_step = 2)


def ragged_prompts(lengths = (3, 7, 5, 4), seed = 1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, NUM_TOKENS, (length,), generator = generator) for length in lengths]


@pytest.fixture
def model():
    return make_model(halt_loss_weight = 0.5)


# the loss

def by_hand_halt_loss(model, latent_tokens, halt_after, row_steps):
    c, total, counted = model.num_latents_per_step, 0., 0
    for row, (after, steps) in enumerate(zip(halt_after.tolist(), row_steps.tolist())):
        for t in range(1, steps + 1):
            logit = model.to_halt_logit(latent_tokens[row, t * c - 1]).item()
            p = 1. / (1. + math.exp(-logit))
            target = 1. if t >= after else 0.
            total += -(target * math.log(p) + (1. - target) * math.log(1. - p))
            counted += 1
    return total / max(counted, 1)


@pytest.mark.parametrize('steps', [torch.tensor([3, 1, 2, 0]), 3])
def test_halt_loss_is_the_binary_cross_entropy_by_hand(steps):
    model = make_model(halt_loss_weight = 0.7)
    prompts = ragged_prompts()
    answer = torch.randint(0, NUM_TOKENS, (4, 3))
    # with a uniform 3 (as pad_latent_to_max runs), rows with halt_after < 3 get target 1 at the extra steps
    halt_after = torch.tensor([2, 0, 5, 1])

    loss, (breakdown, _, latent_tokens, *_) = model(prompts, answer, num_reasoning_steps = steps, halt_after = halt_after, return_intermediates = True)
    row_steps = steps if torch.is_tensor(steps) else torch.full((4,), steps)

    expected = by_hand_halt_loss(model, latent_tokens, halt_after, row_steps)
    torch.testing.assert_close(breakdown.halt_loss, torch.tensor(expected, dtype = torch.float64), **TOL)
    torch.testing.assert_close(loss, breakdown.answer_loss + 0.7 * breakdown.halt_loss, **TOL)


def test_no_thought_steps_give_no_halt_loss_and_no_target_no_loss():
    model = make_model(halt_loss_weight = 0.7)
    prompts = ragged_prompts()
    answer = torch.randint(0, NUM_TOKENS, (4, 3))

    loss, (breakdown, *_) = model(prompts, answer, num_reasoning_steps = 0, halt_after = torch.tensor([0, 1, 2, 0]), return_intermediates = True)
    assert breakdown.halt_loss.item() == 0. and torch.equal(loss, breakdown.answer_loss)

    loss, (breakdown, *_) = model(prompts, answer, return_intermediates = True)
    assert breakdown.halt_loss is None and torch.equal(loss, breakdown.answer_loss)


def test_the_option_off_is_the_plain_model_exactly():
    plain, zero, halting = make_model(), make_model(halt_loss_weight = 0.), make_model(halt_loss_weight = 0.5)
    assert zero.to_halt_logit is None and plain.state_dict().keys() == zero.state_dict().keys()

    # the head is made last: every other parameter is drawn as without it
    shared = plain.state_dict()
    assert set(halting.state_dict()) - set(shared) == {'to_halt_logit.weight', 'to_halt_logit.bias'}
    assert all(torch.equal(value, halting.state_dict()[name]) for name, value in shared.items())

    prompts = ragged_prompts()
    answer = torch.randint(0, NUM_TOKENS, (4, 3))
    steps = torch.tensor([3, 1, 2, 0])

    losses = []
    for model in (plain, zero, halting):
        model.zero_grad()
        loss = model(prompts, answer, num_reasoning_steps = steps)
        loss.backward()
        losses.append(loss)

    for other in (zero, halting):
        assert torch.equal(losses[0], losses[1 if other is zero else 2])
        for name, param in plain.named_parameters():
            assert torch.equal(param.grad, dict(other.named_parameters())[name].grad), name

    # generation without a threshold is untouched by the head
    generated = plain.generate(prompts, max_length = 5, temperature = 0., num_reasoning_steps = steps)
    assert torch.equal(generated, halting.generate(prompts, max_length = 5, temperature = 0., num_reasoning_steps = steps))


def test_a_state_dict_without_the_head_loads_into_a_model_without_it():
    plain, halting = make_model(), make_model(halt_loss_weight = 0.5)
    make_model(seed = 3).load_state_dict(plain.state_dict())
    make_model(seed = 3, halt_loss_weight = 0.5).load_state_dict(halting.state_dict())
    with pytest.raises(RuntimeError, match = 'to_halt_logit'):
        make_model(seed = 3, halt_loss_weight = 0.5).load_state_dict(plain.state_dict())


# generation

def generate_with_logits(model, *args, **kwargs):
    """`model.generate(*args, **kwargs)` and the logits of every token it chose, (b, max_length, V): compared as
    well as the tokens, since a greedy argmax can hide a difference."""
    calls = []
    hook = model.model.to_logits.register_forward_hook(lambda module, inputs, output: calls.append(output))
    try:
        generated = model.generate(*args, **kwargs)
    finally:
        hook.remove()
    return generated, torch.cat([logits[:, -1:] for logits in calls], dim = 1)


def scheduled_halting(model, monkeypatch, halt_at):
    """Make row i's halting probability 0.9 from its step halt_at[i] on, 0.1 before; returns the steps asked."""
    asked = []

    def probability(thoughts):
        asked.append(len(asked) + 1)
        return torch.where(torch.tensor(halt_at) <= len(asked), 0.9, 0.1).to(thoughts.dtype)

    monkeypatch.setattr(model, 'halt_probability', probability)
    return asked


@pytest.mark.parametrize('num_latents_per_step', [1, 2])
def test_a_halted_batch_gives_each_row_what_it_gets_alone_with_its_count(num_latents_per_step, monkeypatch):
    model = make_model(num_latents_per_step = num_latents_per_step, halt_loss_weight = 0.5)
    prompts = ragged_prompts()
    # row 3 never crosses: it takes all 4 steps
    asked = scheduled_halting(model, monkeypatch, [1, 3, 2, 9])

    (tokens, num_thoughts), logits = generate_with_logits(model, prompts, max_length = 6, temperature = 0., halt_threshold = 0.5,
                                                          max_reasoning_steps = 4, return_num_thoughts = True)
    assert num_thoughts.tolist() == [1, 3, 2, 4]
    # nothing is decided after the last step
    assert asked == [1, 2, 3]

    monkeypatch.undo()
    for index, prompt in enumerate(prompts):
        alone, alone_logits = generate_with_logits(model, prompt[None], max_length = 6, temperature = 0., num_reasoning_steps = int(num_thoughts[index]))
        assert torch.equal(tokens[index], alone[0]), index
        torch.testing.assert_close(logits[index], alone_logits[0], **TOL)


def test_once_every_row_has_halted_thinking_stops(monkeypatch):
    model = make_model(halt_loss_weight = 0.5)
    prompts = ragged_prompts()
    asked = scheduled_halting(model, monkeypatch, [1, 2, 1, 2])

    tokens, num_thoughts = model.generate(prompts, max_length = 6, temperature = 0., halt_threshold = 0.5, max_reasoning_steps = 6, return_num_thoughts = True)
    assert num_thoughts.tolist() == [1, 2, 1, 2] and asked == [1, 2]

    monkeypatch.undo()
    expected = model.generate(prompts, max_length = 6, temperature = 0., num_reasoning_steps = num_thoughts)
    assert torch.equal(tokens, expected)


def test_the_learned_head_halts_rows_where_their_own_probabilities_cross():
    model = make_model(halt_loss_weight = 0.5, num_reasoning_steps = 4)
    prompts = ragged_prompts()
    max_steps = 4

    # each row's halting probability at every step, from its thoughts alone (a step's thoughts do not depend on later ones)
    probabilities = []
    for prompt in prompts:
        latent_tokens = model(prompt[None], return_loss = False, num_reasoning_steps = max_steps).latent_tokens[0]
        logits = model.to_halt_logit(latent_tokens[model.num_latents_per_step - 1::model.num_latents_per_step])[:, 0]
        probabilities.append(logits.sigmoid()[:max_steps - 1])
    probabilities = torch.stack(probabilities)          # (b, steps decided after)

    def counts(threshold):
        crossed = probabilities > threshold
        return [int(row.nonzero()[0]) + 1 if row.any() else max_steps for row in crossed]

    # a threshold half way between two probabilities, giving the most different counts
    values = probabilities.flatten().sort().values.tolist()
    candidates = [(a + b) / 2 for a, b in zip(values, values[1:]) if b - a > 1e-6]
    threshold = max(candidates, key = lambda p: len(set(counts(p))))
    expected = counts(threshold)
    assert len(set(expected)) >= 3, expected

    (tokens, num_thoughts), logits = generate_with_logits(model, prompts, max_length = 5, temperature = 0., halt_threshold = threshold, return_num_thoughts = True)
    assert num_thoughts.tolist() == expected
    for index, prompt in enumerate(prompts):
        alone, alone_logits = generate_with_logits(model, prompt[None], max_length = 5, temperature = 0., num_reasoning_steps = expected[index])
        assert torch.equal(tokens[index], alone[0]), index
        torch.testing.assert_close(logits[index], alone_logits[0], **TOL)


def test_a_threshold_never_crossed_thinks_the_most_steps():
    model = make_model(halt_loss_weight = 0.5, num_reasoning_steps = 2)
    prompts = ragged_prompts()

    for kwargs, most in ((dict(max_reasoning_steps = 3), 3), (dict(num_reasoning_steps = 4), 4), ({}, 2)):
        tokens, num_thoughts = model.generate(prompts, max_length = 5, temperature = 0., halt_threshold = 1. - 1e-12, return_num_thoughts = True, **kwargs)
        assert num_thoughts.tolist() == [most] * len(prompts)
        assert torch.equal(tokens, model.generate(prompts, max_length = 5, temperature = 0., num_reasoning_steps = most))


def test_counts_come_back_without_halting_too():
    model = make_model(num_reasoning_steps = 2)
    prompts = ragged_prompts()
    steps = torch.tensor([0, 3, 1, 2])
    _, num_thoughts = model.generate(prompts, max_length = 3, temperature = 0., num_reasoning_steps = steps, return_num_thoughts = True)
    assert num_thoughts.tolist() == steps.tolist()
    _, num_thoughts = model.generate(prompts, max_length = 3, temperature = 0., return_num_thoughts = True)
    assert num_thoughts.tolist() == [2] * 4


# what is not supported is refused before any compute

@pytest.mark.parametrize('kwargs, error, message', [
    (dict(halt_threshold = 0.), ValueError, 'halt_threshold'),
    (dict(halt_threshold = 1.), ValueError, 'halt_threshold'),
    (dict(halt_threshold = float('nan')), ValueError, 'halt_threshold'),
    (dict(halt_threshold = 0.5, num_samples = 2), ValueError, 'num_samples'),
    (dict(halt_threshold = 0.5, num_reasoning_steps = torch.tensor([1, 2])), ValueError, 'num_reasoning_steps'),
    (dict(halt_threshold = 0.5, max_reasoning_steps = 0), ValueError, 'max_reasoning_steps'),
    (dict(halt_threshold = 0.5, num_reasoning_steps = 0), ValueError, 'max_reasoning_steps'),
    (dict(max_reasoning_steps = 3), ValueError, 'max_reasoning_steps'),
    (dict(return_num_thoughts = 1), TypeError, 'return_num_thoughts'),
])
def test_bad_generate_arguments_are_named_before_compute(no_compute, kwargs, error, message):
    with pytest.raises(error, match = message):
        no_compute.generate(torch.randint(0, NUM_TOKENS, (2, 4)), max_length = 3, **kwargs)


@pytest.mark.parametrize('halt_after, error, message', [
    (torch.tensor([1., 2.]), TypeError, 'halt_after'),
    (torch.tensor([1, 2, 3]), ValueError, 'halt_after'),
    (torch.tensor([1, -1]), ValueError, 'halt_after'),
    ([1, 2], TypeError, 'halt_after'),
])
def test_bad_halt_after_is_named_before_compute(no_compute, halt_after, error, message):
    with pytest.raises(error, match = message):
        no_compute(torch.randint(0, NUM_TOKENS, (2, 4)), torch.randint(0, NUM_TOKENS, (2, 3)), halt_after = halt_after)


def test_halting_without_a_head_is_refused_before_compute(monkeypatch):
    model = make_model()
    monkeypatch.setattr(model.model, 'forward_with_cache', lambda *args, **kwargs: pytest.fail('the transformer ran'))
    with pytest.raises(ValueError, match = 'halt_threshold needs a halting head'):
        model.generate(torch.randint(0, NUM_TOKENS, (2, 4)), halt_threshold = 0.5)
    with pytest.raises(ValueError, match = 'halt_after'):
        model(torch.randint(0, NUM_TOKENS, (2, 4)), torch.randint(0, NUM_TOKENS, (2, 3)), halt_after = torch.tensor([1, 2]))


@pytest.mark.parametrize('kwargs', [
    dict(halt_loss_weight = -1.),
    dict(halt_loss_weight = float('inf')),
    dict(halt_loss_weight = 1., thought_mode = 'pause'),
    dict(halt_loss_weight = 1., num_hypotheses = 2),
])
def test_bad_halting_options_are_named(kwargs):
    with pytest.raises(ValueError, match = 'halt_loss_weight'):
        make_model(**kwargs)
