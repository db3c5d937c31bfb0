"""Bad input gets a clear error naming the argument, before any compute."""

import pytest
import torch

from coconut_pytorch import Coconut, Transformer

NUM_TOKENS = 16


@pytest.fixture(scope = 'module')
def model():
    torch.manual_seed(0)
    return Coconut(num_reasoning_steps = 2, transformer = dict(num_tokens = NUM_TOKENS, dim = 16, depth = 1, dim_head = 8, heads = 2))


PROMPT = torch.randint(0, NUM_TOKENS, (2, 5))
ANSWER = torch.randint(0, NUM_TOKENS, (2, 3))

BAD_CALLS = [
    ('float prompt', lambda m: m(PROMPT.float(), ANSWER), TypeError, 'prompt'),
    ('float answer', lambda m: m(PROMPT, ANSWER.float()), TypeError, 'answer'),
    ('id >= num_tokens', lambda m: m(torch.full((2, 5), NUM_TOKENS), ANSWER), ValueError, 'prompt'),
    ('id < -1', lambda m: m(PROMPT, torch.full((2, 3), -2)), ValueError, 'answer'),
    ('empty prompt tensor', lambda m: m(torch.empty((2, 0), dtype = torch.long), ANSWER), ValueError, 'prompt'),
    ('all-pad prompt row', lambda m: m(torch.tensor([[1, 2], [-1, -1]]), ANSWER), ValueError, 'prompt'),
    ('empty prompt in list', lambda m: m([torch.tensor([1, 2]), torch.tensor([], dtype = torch.long)], ANSWER), ValueError, 'prompt'),
    ('empty list', lambda m: m([], ANSWER), ValueError, 'prompt'),
    ('1-d prompt', lambda m: m(PROMPT[0], ANSWER), ValueError, 'prompt'),
    ('3-d prompt', lambda m: m(PROMPT[None], ANSWER), ValueError, 'prompt'),
    ('2-d tensor inside a list', lambda m: m([PROMPT], ANSWER), ValueError, 'prompt[0]'),
    ('list of ints', lambda m: m([[1, 2, 3]], ANSWER), TypeError, 'prompt[0]'),
    ('numpy-ish / string', lambda m: m('hello', ANSWER), TypeError, 'prompt'),
    ('all-pad answer', lambda m: m(PROMPT, torch.full((2, 3), -1)), ValueError, 'answer'),
    ('empty answer', lambda m: m(PROMPT, torch.empty((2, 0), dtype = torch.long)), ValueError, 'answer'),
    ('batch mismatch', lambda m: m(PROMPT, ANSWER[:1]), ValueError, 'batch size'),
    ('negative steps', lambda m: m(PROMPT, ANSWER, num_reasoning_steps = -1), ValueError, 'num_reasoning_steps'),
    ('negative steps per row', lambda m: m(PROMPT, ANSWER, num_reasoning_steps = torch.tensor([1, -1])), ValueError, 'num_reasoning_steps'),
    ('steps per row, wrong length', lambda m: m(PROMPT, ANSWER, num_reasoning_steps = torch.tensor([1, 2, 3])), ValueError, 'num_reasoning_steps'),
    ('float steps', lambda m: m(PROMPT, ANSWER, num_reasoning_steps = 1.5), TypeError, 'num_reasoning_steps'),
    ('max_length 0', lambda m: m.generate(PROMPT, max_length = 0), ValueError, 'max_length'),
    ('max_length float', lambda m: m.generate(PROMPT, max_length = 2.), TypeError, 'max_length'),
    ('negative temperature', lambda m: m.generate(PROMPT, max_length = 2, temperature = -1.), ValueError, 'temperature'),
    ('eos out of range', lambda m: m.generate(PROMPT, max_length = 2, eos_token_id = NUM_TOKENS), ValueError, 'eos_token_id'),
    ('generate with float prompt', lambda m: m.generate(PROMPT.float(), max_length = 2), TypeError, 'prompt'),
    ('nan temperature', lambda m: m.generate(PROMPT, max_length = 2, temperature = float('nan')), ValueError, 'temperature'),
    ('bool temperature', lambda m: m.generate(PROMPT, max_length = 2, temperature = True), ValueError, 'temperature'),
    ('filter_fn by name', lambda m: m.generate(PROMPT, max_length = 2, filter_fn = 'min_p'), TypeError, 'filter_fn'),
    ('filter_fn by name, greedy', lambda m: m.generate(PROMPT, max_length = 2, filter_fn = 'min_p', temperature = 0.), TypeError, 'filter_fn'),
    ('filter_kwargs a list', lambda m: m.generate(PROMPT, max_length = 2, filter_kwargs = [0.1]), TypeError, 'filter_kwargs'),
    ('generator a seed', lambda m: m.generate(PROMPT, max_length = 2, generator = 0), TypeError, 'generator'),
    ('bool eos', lambda m: m.generate(PROMPT, max_length = 2, eos_token_id = True), ValueError, 'eos_token_id'),
    ('generate with id out of range', lambda m: m.generate(PROMPT + NUM_TOKENS, max_length = 2), ValueError, 'prompt'),
]


@pytest.mark.parametrize('description, call, error, names', BAD_CALLS, ids = [c[0] for c in BAD_CALLS])
def test_bad_input_is_rejected_before_compute(no_compute, description, call, error, names):
    with pytest.raises(error, match = names.replace('[', r'\[').replace(']', r'\]')):
        call(no_compute)


@pytest.mark.parametrize('kwargs, error, name', [
    (dict(num_reasoning_steps = -1), ValueError, 'num_reasoning_steps'),
    (dict(num_reasoning_steps = 2., ), TypeError, 'num_reasoning_steps'),
    (dict(num_reasoning_steps = 2, num_latents_per_step = 0), ValueError, 'num_latents_per_step'),
    (dict(num_reasoning_steps = 2, num_hypotheses = 0), ValueError, 'num_hypotheses'),
    (dict(num_reasoning_steps = 2, thought_mode = 'dream'), ValueError, 'thought_mode'),
    (dict(num_reasoning_steps = 2, transformer = None), TypeError, 'transformer'),
    (dict(num_reasoning_steps = 2, begin_thought_loss_weight = 'a'), ValueError, 'begin_thought_loss_weight'),
    (dict(num_reasoning_steps = 2, begin_thought_loss_weight = float('nan')), ValueError, 'begin_thought_loss_weight'),
    (dict(num_reasoning_steps = 2, thought_loss_weight = -1.), ValueError, 'thought_loss_weight'),
    (dict(num_reasoning_steps = 2, hypothesis_similarity_loss_weight = float('inf')), ValueError, 'hypothesis_similarity_loss_weight'),
])
def test_bad_constructor_arguments(kwargs, error, name):
    kwargs = {'transformer': dict(num_tokens = NUM_TOKENS, dim = 16, depth = 1), **kwargs}
    with pytest.raises(error, match = name):
        Coconut(**kwargs)


@pytest.mark.parametrize('kwargs, name', [
    (dict(num_tokens = 0), 'num_tokens'),
    (dict(dim = -4), 'dim'),
    (dict(dim_head = 7), 'dim_head'),
    (dict(num_residual_streams = 0), 'num_residual_streams'),
    (dict(attend_kwargs = dict(causal = False)), 'attend_kwargs'),
    (dict(ff_glu = 'relu'), 'ff_glu'),
    (dict(ff_mult = 0), 'ff_mult'),
    (dict(ff_mult = -1), 'ff_mult'),
    (dict(rotary_base = 0.), 'rotary_base'),
    (dict(attend_kwargs = dict(dropout = 2.)), 'dropout'),
    (dict(ff_dropout = -0.1), 'ff_dropout'),
])
def test_bad_transformer_arguments(kwargs, name):
    with pytest.raises(ValueError, match = name):
        Transformer(**{'num_tokens': NUM_TOKENS, 'dim': 16, 'depth': 1, **kwargs})


def test_good_inputs_in_every_accepted_form(model):
    """int32 ids, -1 padding on either side, lists of different lengths, steps as int, 0-d or per-row tensor."""
    model.eval()
    prompts = [torch.tensor([1, 2, 3], dtype = torch.int32), torch.tensor([4, 5])]
    left_padded = torch.tensor([[1, 2, 3], [-1, 4, 5]])
    right_padded = torch.tensor([[1, 2, 3], [4, 5, -1]])
    answer = torch.tensor([[1, 2], [3, -1]])

    losses = [model(p, answer) for p in (prompts, left_padded, right_padded)]
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(losses[0], losses[2])

    torch.testing.assert_close(model(left_padded, answer, num_reasoning_steps = torch.tensor(2)), losses[0])
    torch.testing.assert_close(model(left_padded, answer, num_reasoning_steps = torch.tensor([2, 2])), losses[0])
    assert model.generate(prompts, max_length = 3).shape == (2, 3)
