"""Runs never lose or corrupt work: padding never carries a NaN into real positions, interior padding in an answer
and sizes that could never be held are errors before any compute, and a filter that leaves nothing to sample, or
logits that hold NaN, are errors rather than a silent token 0."""

import pytest
import torch

from coconut_pytorch import Coconut, Transformer
from coconut_pytorch import inputs
from coconut_pytorch.inputs import as_padded_ids
from coconut_pytorch.kv_cache import StaticKVCache
from coconut_pytorch.sampling import min_p_filter, top_k_filter

TOL = dict(atol = 1e-8, rtol = 1e-8)
NUM_TOKENS = 24
NAN = float('nan')


def make_model(seed = 0, **kwargs) -> Coconut:
    torch.manual_seed(seed)
    settings = dict(num_reasoning_steps = 2, num_latents_per_step = 2, transformer = dict(num_tokens = NUM_TOKENS, dim = 16, depth = 2, dim_head = 8, heads = 2, num_residual_streams = 2))
    return Coconut(**{**settings, **kwargs}).double().eval()


@pytest.fixture
def model():
    return make_model()


def poison_unused_embeddings(model: Coconut, unused = (0, 1)):
    """NaN in the embedding rows of tokens no prompt or answer uses (0 is what padding slots read inside); their
    logits are 0, below the best of the others, so greedy decoding never emits (and then embeds) them either."""
    with torch.no_grad():
        model.model.token_emb.weight[list(unused)] = NAN
        model.model.to_logits.weight[list(unused)] = 0.


def exists(v) -> bool:
    return v is not None


def real_ids(*shape) -> torch.Tensor:
    return torch.randint(2, NUM_TOKENS, shape)


# 5. padding slots never read a real token's embedding

@pytest.mark.parametrize('kwargs', [dict(), dict(thought_mode = 'pause'), dict(num_hypotheses = 2), dict(num_reasoning_steps = 0)],
                         ids = ['continuous', 'pause', 'hypotheses', 'no thoughts'])
def test_nan_embedding_of_the_padding_id_does_not_reach_padded_rows(kwargs):
    model = make_model(**kwargs)
    poison_unused_embeddings(model)

    torch.manual_seed(1)
    prompts = [real_ids(length) for length in (3, 6, 4)]
    answers = [real_ids(length) for length in (3, 1, 4)]
    steps = torch.tensor([model.num_reasoning_steps, 0, 1]) if model.num_reasoning_steps > 0 else None

    batched = model(prompts, answers, return_loss = False, num_reasoning_steps = steps)
    generated = model.generate(prompts, max_length = 4, temperature = 0., num_reasoning_steps = steps)
    assert torch.isfinite(batched.answer_logits).all()
    assert (generated >= 2).all()

    for index, (prompt, answer) in enumerate(zip(prompts, answers)):
        row_steps = int(steps[index]) if exists(steps) else None
        alone = model(prompt[None], answer[None], return_loss = False, num_reasoning_steps = row_steps)
        torch.testing.assert_close(batched.answer_logits[index, :len(answer)], alone.answer_logits[0], **TOL)
        torch.testing.assert_close(batched.prompt_logits[index, :len(prompt)], alone.prompt_logits[0], **TOL)
        assert torch.equal(generated[index], model.generate(prompt[None], max_length = 4, temperature = 0., num_reasoning_steps = row_steps)[0])


def test_nan_embedding_of_the_padding_id_leaves_loss_and_gradients_finite():
    model = make_model().train()
    poison_unused_embeddings(model)
    torch.manual_seed(2)
    prompts = [real_ids(length) for length in (2, 6)]
    answers = [real_ids(length) for length in (5, 2)]

    loss = model(prompts, answers, num_reasoning_steps = torch.tensor([2, 1]))
    loss.backward()

    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name


def test_nan_fed_into_a_thought_slot_past_its_rows_steps_changes_nothing(monkeypatch):
    """A masked thought slot's input is whatever the slot before it produced; even a NaN there must stay there."""
    model = make_model(num_reasoning_steps = 3)
    torch.manual_seed(3)
    prompts = [real_ids(length) for length in (4, 6)]
    answer = real_ids(2, 3)
    steps = torch.tensor([3, 1])

    clean = model(prompts, answer, return_loss = False, num_reasoning_steps = steps).answer_logits

    fed_back, calls = model.fed_back, []

    def nan_past_row_1s_steps(thoughts, *args):
        calls.append(None)
        thoughts = fed_back(thoughts, *args).clone()
        if len(calls) >= 2:
            # thought steps 2 and 3, and the last thought entering the tail, are past row 1's single step: their
            # slots are masked for it
            thoughts[1] = NAN
        return thoughts

    monkeypatch.setattr(model, 'fed_back', nan_past_row_1s_steps)
    poisoned = model(prompts, answer, return_loss = False, num_reasoning_steps = steps).answer_logits

    assert len(calls) == 3
    assert torch.isfinite(poisoned).all()
    torch.testing.assert_close(poisoned, clean, atol = 0, rtol = 0)


@pytest.mark.parametrize('static', [False, True], ids = ['segment cache', 'static cache'])
def test_nan_or_inf_input_at_a_masked_position_stays_there(static):
    torch.manual_seed(4)
    transformer = Transformer(num_tokens = NUM_TOKENS, dim = 16, depth = 2, dim_head = 8, heads = 2, num_residual_streams = 2).double()
    embeds = torch.randn(2, 6, 16, dtype = torch.float64)
    mask = torch.ones(2, 6, dtype = torch.bool)
    mask[0, 1] = mask[1, 3] = False

    garbage = embeds.clone()
    garbage[0, 1] = NAN
    garbage[1, 3] = float('inf')

    def run(x):
        cache = StaticKVCache(2, 2, 2, 8, capacity = 8, dtype = torch.float64) if static else None
        # a prefill then a step with the masked slot in it: both kinds of attention mask
        first = transformer.forward_with_cache([x[:, :2]], mask = mask[:, :2], cache = cache)
        second = transformer.forward_with_cache([x[:, 2:]], mask = mask[:, 2:], cache = first.cache)
        return torch.cat((first.hiddens, second.hiddens), dim = 1)

    clean, poisoned = run(embeds), run(garbage)
    assert torch.isfinite(poisoned).all()
    torch.testing.assert_close(poisoned[mask], clean[mask], atol = 0, rtol = 0)


def test_a_reused_static_cache_holds_no_stale_nan():
    """A static cache (kept with its CUDA graphs across generate calls) is reset, not reallocated: what an earlier
    call left in the columns after the new sequence must not reach it."""
    torch.manual_seed(5)
    transformer = Transformer(num_tokens = NUM_TOKENS, dim = 16, depth = 2, dim_head = 8, heads = 2).double()
    ids = real_ids(2, 5)

    cache = StaticKVCache(2, 2, 2, 8, capacity = 16, dtype = torch.float64)
    for keys, values in zip(cache.keys, cache.values):
        keys.fill_(NAN)
        values.fill_(NAN)
    cache.reset()

    fresh = StaticKVCache(2, 2, 2, 8, capacity = 16, dtype = torch.float64)
    outputs = []
    for c in (cache, fresh):
        logits = transformer(ids[:, :3], cache = c)
        outputs.append(torch.cat((logits, transformer(ids[:, 3:], cache = c)), dim = 1))

    assert torch.isfinite(outputs[0]).all()
    torch.testing.assert_close(outputs[0], outputs[1], atol = 0, rtol = 0)


@pytest.mark.parametrize('as_list', [False, True])
def test_padding_inside_an_answer_is_rejected_before_compute(no_compute, as_list):
    prompt = real_ids(2, 4)
    answer = torch.tensor([[3, 4, 5, -1], [6, -1, 7, -1]])
    if as_list:
        answer = [torch.tensor([3, 4, 5]), torch.tensor([6, -1, 7])]

    with pytest.raises(ValueError, match = r'answer row 1 .*position 1'):
        no_compute(prompt, answer)
    with pytest.raises(ValueError, match = r'answer row 1 .*position 1'):
        no_compute(prompt, answer, return_loss = False)


def test_trailing_answer_padding_and_prompt_padding_anywhere_are_fine(model):
    prompt = torch.tensor([[3, -1, 4, 5], [-1, 6, -1, 7]])
    answer = torch.tensor([[3, 4, -1, -1], [6, 7, 8, -1]])
    assert torch.isfinite(model(prompt, answer))

    assert as_padded_ids(answer, 'answer', NUM_TOKENS, padding_at_end = True).has_padding
    assert as_padded_ids(torch.full((2, 3), -1), 'answer', NUM_TOKENS, require_tokens = False, padding_at_end = True).has_padding
    # prompts are left-aligned inside, so their padding may sit anywhere; the default does not check
    as_padded_ids(prompt, 'prompt', NUM_TOKENS)


# 6. sizes are bounded before compute

HUGE = 10 ** 12

HUGE_CALLS = [
    ('forward, steps', lambda m: m(real_ids(2, 4), real_ids(2, 3), num_reasoning_steps = HUGE), 'num_reasoning_steps'),
    ('forward, steps per row', lambda m: m(real_ids(2, 4), real_ids(2, 3), num_reasoning_steps = torch.tensor([1, HUGE])), 'num_reasoning_steps'),
    ('forward, no answer', lambda m: m(real_ids(2, 4), num_reasoning_steps = HUGE), 'num_reasoning_steps'),
    ('generate, max_length', lambda m: m.generate(real_ids(2, 4), max_length = HUGE), 'max_length'),
    ('generate, max_length greedy', lambda m: m.generate(real_ids(2, 4), max_length = HUGE, temperature = 0.), 'max_length'),
    ('generate, steps', lambda m: m.generate(real_ids(2, 4), max_length = 4, num_reasoning_steps = HUGE), 'num_reasoning_steps'),
    ('generate, steps per row', lambda m: m.generate(real_ids(2, 4), max_length = 4, num_reasoning_steps = torch.tensor([HUGE, 0])), 'num_reasoning_steps'),
    ('generate, just past the length bound', lambda m: m.generate(real_ids(2, 4), max_length = inputs.MAX_SEQUENCE_LENGTH), 'max_length'),
]


@pytest.mark.parametrize('description, call, name', HUGE_CALLS, ids = [c[0] for c in HUGE_CALLS])
def test_sizes_that_cannot_be_held_are_rejected_before_compute(no_compute, description, call, name):
    with pytest.raises(ValueError, match = name):
        call(no_compute)


def test_a_huge_default_step_count_is_rejected_before_compute(monkeypatch):
    model = make_model(num_reasoning_steps = HUGE)
    monkeypatch.setattr(model.model, 'forward_with_cache', lambda *args, **kwargs: pytest.fail('the transformer ran'))
    with pytest.raises(ValueError, match = 'num_reasoning_steps'):
        model(real_ids(1, 3), real_ids(1, 2))
    with pytest.raises(ValueError, match = 'num_reasoning_steps'):
        model.generate(real_ids(1, 3), max_length = 2)


def test_the_memory_bound_is_the_key_value_cache_of_the_whole_sequence(no_compute, monkeypatch):
    """Keys and values of every column (prompt, <bot> and thoughts of every stream, <eot>, the new tokens), of every
    layer, head and row: a run whose cache alone exceeds the memory left is refused, one byte less is let through."""
    model, batch, prompt_length, max_length, steps = no_compute, 3, 5, 40, 2
    columns = prompt_length + model.num_latents_per_step * (steps + 1) + 1 + max_length
    transformer = model.model
    needed = 2 * transformer.depth * batch * transformer.heads * transformer.dim_head * columns * 8   # float64

    prompt = real_ids(batch, prompt_length)
    monkeypatch.setattr(inputs, 'QUERY_MEMORY_ABOVE', 0)     # this tiny cache is below the size that asks at all
    monkeypatch.setattr(inputs, 'available_memory', lambda device: needed - 1)
    with pytest.raises(ValueError, match = 'max_length = 40 is too large'):
        model.generate(prompt, max_length = max_length, num_reasoning_steps = steps)

    monkeypatch.setattr(inputs, 'available_memory', lambda device: needed)
    with pytest.raises(AssertionError, match = 'transformer ran'):
        model.generate(prompt, max_length = max_length, num_reasoning_steps = steps)


def test_ordinary_sizes_fit_with_the_real_memory_reading(model):
    assert inputs.available_memory('cpu') > 0
    assert model.generate(real_ids(2, 4), max_length = 3, num_reasoning_steps = 3).shape == (2, 3)


# filters and logits with nothing to choose

def failing_filter(logits, **kwargs):
    raise RuntimeError('this filter is broken')


BAD_FILTERS = [
    ('min_p out of range', dict(filter_kwargs = dict(min_p = 2.)), ValueError, r'filter_fn min_p_filter with filter_kwargs \{.min_p.: 2.0\}.*min_p must be in'),
    ('keyword the filter does not take', dict(filter_kwargs = dict(k = 3)), TypeError, r'filter_fn min_p_filter with filter_kwargs.*unexpected keyword'),
    ('top_k with k = 0', dict(filter_fn = top_k_filter, filter_kwargs = dict(k = 0)), ValueError, 'filter_fn top_k_filter.*k must be a positive integer'),
    ('a filter that raises', dict(filter_fn = failing_filter), ValueError, 'filter_fn failing_filter.*RuntimeError: this filter is broken'),
    ('a filter that changes the shape', dict(filter_fn = lambda logits: logits[:, :3]), ValueError, 'filter_fn must return logits of the shape'),
    ('a filter that returns no tensor', dict(filter_fn = lambda logits: None), ValueError, 'filter_fn must return logits'),
]


@pytest.mark.parametrize('description, kwargs, error, message', BAD_FILTERS, ids = [c[0] for c in BAD_FILTERS])
def test_bad_filters_are_rejected_before_compute(no_compute, description, kwargs, error, message):
    with pytest.raises(error, match = message):
        no_compute.generate(real_ids(2, 4), max_length = 3, **kwargs)


@pytest.mark.parametrize('fill', [float('-inf'), NAN], ids = ['all -inf', 'nan'])
def test_a_filter_that_leaves_nothing_to_sample_is_an_error(model, fill):
    with pytest.raises(ValueError, match = r'filter_fn .*left no finite logit.*rows \[0, 1\] at generated token 0'):
        model.generate(real_ids(2, 4), max_length = 4, filter_fn = lambda logits: torch.full_like(logits, fill))


def test_a_filter_that_empties_one_row_later_names_it(model):
    calls = []

    def empties_row_1_at_the_third_token(logits):
        calls.append(None)
        logits = min_p_filter(logits)
        if len(calls) > 3:          # the first call is the check before the prompt runs
            logits[1] = float('-inf')
        return logits

    with pytest.raises(ValueError, match = r'filter_fn .*empties_row_1_at_the_third_token.*row \[1\] at generated token 2'):
        model.generate(real_ids(2, 4), max_length = 6, filter_fn = empties_row_1_at_the_third_token)

    # with an end token the loop syncs every token anyway: the error comes there, without running to max_length
    calls.clear()
    with pytest.raises(ValueError, match = r'row \[1\] at generated token 2'):
        model.generate(real_ids(2, 4), max_length = 6, filter_fn = empties_row_1_at_the_third_token, eos_token_id = 0)
    assert len(calls) == 1 + 3


def test_a_filter_that_keeps_plus_inf_forces_that_token(model):
    def force_token_5(logits):
        return torch.full_like(logits, float('-inf')).index_fill(-1, torch.tensor([5]), float('inf'))

    assert (model.generate(real_ids(2, 4), max_length = 3, filter_fn = force_token_5) == 5).all()


@pytest.mark.parametrize('temperature', [0., 1.], ids = ['greedy', 'sampled'])
@pytest.mark.parametrize('eos_token_id', [None, 0])
def test_nan_logits_of_the_model_are_an_error_not_token_0(model, temperature, eos_token_id):
    with torch.no_grad():
        model.model.to_logits.weight[:, 0] = NAN
    with pytest.raises(ValueError, match = r"the model's logits hold NaN.*rows \[0, 1\] at generated token 0"):
        model.generate(real_ids(2, 4), max_length = 4, temperature = temperature, eos_token_id = eos_token_id)


def test_rows_that_ended_are_not_checked(model):
    """After a row emits its end token its logits are never used: they may be anything."""
    prompt = real_ids(2, 4)
    greedy = model.generate(prompt, max_length = 4, temperature = 0.)
    eos = int(greedy[0, 0])

    calls = []

    def nan_in_row_0_once_it_ended(logits):
        calls.append(None)
        if len(calls) > 2:
            logits = logits.clone()
            logits[0] = NAN
        return logits

    assert int(greedy[1, 0]) != eos, 'row 1 must go on after row 0 ended'
    out = model.generate(prompt, max_length = 4, filter_fn = nan_in_row_0_once_it_ended, temperature = 1e-6, eos_token_id = eos)
    assert out[0, 0] == eos and (out[0, 1:] == -1).all()
    assert torch.equal(out[1], greedy[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'needs CUDA')
def test_cuda_graph_generation_with_a_nan_padding_embedding_equals_each_row_alone():
    model = make_model().cuda()
    poison_unused_embeddings(model)
    torch.manual_seed(6)
    prompts = [real_ids(length).cuda() for length in (3, 9, 5)]
    steps = torch.tensor([2, 0, 1])

    graphed = model.generate(prompts, max_length = 6, temperature = 0., num_reasoning_steps = steps, cuda_graph = True)
    for index, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_length = 6, temperature = 0., num_reasoning_steps = int(steps[index]), cuda_graph = False)
        assert torch.equal(graphed[index], alone[0])
