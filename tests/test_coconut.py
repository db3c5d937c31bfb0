"""Equivalence tests for the latent recurrence and the KV cache, in float64.

Each compares two computations that must agree exactly (up to float64 rounding):
cached vs recomputed, batched vs alone, checkpointed vs plain, generated vs teacher-forced.
"""

import copy

import pytest
import torch

from coconut_pytorch import Coconut, Transformer
from coconut_pytorch.kv_cache import StaticKVCache
from coconut_pytorch.sampling import gumbel_sample, top_k_filter

TOL = dict(atol = 1e-8, rtol = 1e-8)
NUM_TOKENS = 32


def make_model(num_residual_streams = 2, num_latents_per_step = 1, num_reasoning_steps = 2, seed = 0, **kwargs):
    torch.manual_seed(seed)
    model = Coconut(
        num_reasoning_steps = num_reasoning_steps,
        num_latents_per_step = num_latents_per_step,
        transformer = dict(num_tokens = NUM_TOKENS, dim = 32, depth = 2, dim_head = 8, heads = 4, num_residual_streams = num_residual_streams),
        **kwargs
    )
    return model.double().eval()


def naive_answer_logits(model: Coconut, prompt: torch.Tensor, answer: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Coconut without a cache: every thought step re-runs the whole sequence from the start (the paper's way)."""
    transformer, c = model.model, model.num_latents_per_step
    seq = transformer.embed(prompt)
    first_answer_position = seq.shape[1] - 1

    if num_steps > 0:
        seq = torch.cat((seq, model.begin_of_thought[0][None].expand(prompt.shape[0], -1, -1)), dim = 1)
        for _ in range(num_steps):
            hiddens = transformer.forward_with_cache([seq]).hiddens
            seq = torch.cat((seq, hiddens[:, -c:]), dim = 1)
        seq = torch.cat((seq, model.end_of_thought.expand(prompt.shape[0], 1, -1)), dim = 1)
        first_answer_position = seq.shape[1] - 1

    seq = torch.cat((seq, transformer.embed(answer[:, :-1])), dim = 1)
    hiddens = transformer.forward_with_cache([seq]).hiddens
    return transformer.to_logits(hiddens[:, first_answer_position:])


@pytest.mark.parametrize('num_residual_streams', [1, 4])
@pytest.mark.parametrize('num_latents_per_step', [1, 3])
@pytest.mark.parametrize('num_steps', [0, 1, 3])
def test_cached_recurrence_equals_full_recompute(num_residual_streams, num_latents_per_step, num_steps):
    model = make_model(num_residual_streams, num_latents_per_step)
    prompt = torch.randint(0, NUM_TOKENS, (3, 7))
    answer = torch.randint(0, NUM_TOKENS, (3, 5))

    cached = model(prompt, answer, return_loss = False, num_reasoning_steps = num_steps).answer_logits
    recomputed = naive_answer_logits(model, prompt, answer, num_steps)

    assert cached.shape == recomputed.shape == (3, 5, NUM_TOKENS)
    torch.testing.assert_close(cached, recomputed, **TOL)


def test_transformer_cache_equals_single_pass():
    torch.manual_seed(0)
    transformer = Transformer(num_tokens = NUM_TOKENS, dim = 32, depth = 3, dim_head = 8, heads = 4).double().eval()
    ids = torch.randint(0, NUM_TOKENS, (2, 12))

    full = transformer(ids)

    cache, chunks = None, []
    for piece in ids.split([5, 1, 3, 1, 2], dim = -1):
        logits, cache = transformer(piece, cache = cache, return_cache = True)
        chunks.append(logits)

    torch.testing.assert_close(torch.cat(chunks, dim = 1), full, **TOL)


@pytest.mark.parametrize('num_residual_streams', [1, 2, 4])
@pytest.mark.parametrize('num_latents_per_step', [1, 2, 3])
@pytest.mark.parametrize('num_steps', [0, 1, 2, 4])
def test_greedy_generate_matches_teacher_forced_argmax(num_residual_streams, num_latents_per_step, num_steps):
    model = make_model(num_residual_streams, num_latents_per_step, seed = num_steps)
    prompt = torch.randint(0, NUM_TOKENS, (2, 6))

    generated = model.generate(prompt, max_length = 12, temperature = 0., num_reasoning_steps = num_steps)
    logits = model(prompt, generated, return_loss = False, num_reasoning_steps = num_steps).answer_logits

    assert generated.shape == (2, 12)
    assert torch.equal(logits.argmax(dim = -1), generated)


def ragged_prompts():
    return [torch.randint(0, NUM_TOKENS, (length,)) for length in (3, 8, 5)]


@pytest.mark.parametrize('as_list', [True, False])
@pytest.mark.parametrize('num_steps', [0, 2])
def test_padded_batch_equals_each_example_alone(as_list, num_steps):
    model = make_model(num_residual_streams = 4, num_latents_per_step = 2)
    prompts = ragged_prompts()
    answers = [torch.randint(0, NUM_TOKENS, (length,)) for length in (4, 2, 6)]

    if as_list:
        prompt, answer = prompts, answers
    else:
        # right padding with -1, as users write it; padding on either side must work
        prompt = torch.nn.utils.rnn.pad_sequence(prompts, batch_first = True, padding_value = -1)
        answer = torch.nn.utils.rnn.pad_sequence(answers, batch_first = True, padding_value = -1)

    batched = model(prompt, answer, return_loss = False, num_reasoning_steps = num_steps)
    generated = model.generate(prompt, max_length = 10, temperature = 0., num_reasoning_steps = num_steps)

    for index, (p, a) in enumerate(zip(prompts, answers)):
        alone = model(p[None], a[None], return_loss = False, num_reasoning_steps = num_steps)
        torch.testing.assert_close(batched.answer_logits[index, :len(a)], alone.answer_logits[0], **TOL)
        torch.testing.assert_close(batched.prompt_logits[index, :len(p)], alone.prompt_logits[0], **TOL)
        assert torch.equal(generated[index], model.generate(p[None], max_length = 10, temperature = 0., num_reasoning_steps = num_steps)[0])

    # the loss of the batch is the token-weighted mean of the examples' losses
    losses = [model(p[None], a[None], num_reasoning_steps = num_steps) * len(a) for p, a in zip(prompts, answers)]
    torch.testing.assert_close(model(prompt, answer, num_reasoning_steps = num_steps), sum(losses) / sum(len(a) for a in answers), **TOL)


@pytest.mark.parametrize('thought_mode', ['continuous', 'pause'])
def test_mixed_steps_per_row_equal_each_row_alone(thought_mode):
    model = make_model(num_latents_per_step = 2, thought_mode = thought_mode)
    prompts = ragged_prompts()
    answer = torch.randint(0, NUM_TOKENS, (3, 4))
    steps = torch.tensor([0, 3, 1])

    batched = model(prompts, answer, return_loss = False, num_reasoning_steps = steps).answer_logits
    generated = model.generate(prompts, max_length = 6, temperature = 0., num_reasoning_steps = steps)

    for index, p in enumerate(prompts):
        num_steps = int(steps[index])
        alone = model(p[None], answer[index:index + 1], return_loss = False, num_reasoning_steps = num_steps).answer_logits
        torch.testing.assert_close(batched[index], alone[0], **TOL)
        assert torch.equal(generated[index], model.generate(p[None], max_length = 6, temperature = 0., num_reasoning_steps = num_steps)[0])


def test_hypotheses_generate_and_padding():
    model = make_model(num_latents_per_step = 2, num_hypotheses = 3)
    prompts = ragged_prompts()

    generated = model.generate(prompts, max_length = 8, temperature = 0.)
    out = model(prompts, generated, return_loss = False)
    assert out.latent_tokens.shape == (3, 3, 2 * 2, 32)
    assert torch.equal(out.answer_logits.argmax(dim = -1), generated)

    for index, p in enumerate(prompts):
        alone = model(p[None], generated[index:index + 1], return_loss = False).answer_logits
        torch.testing.assert_close(out.answer_logits[index], alone[0], **TOL)

    # the streams differ: each starts from its own <bot>
    first_thoughts = out.latent_tokens[:, :, 0]
    assert (first_thoughts[:, 0] - first_thoughts[:, 1]).abs().amax() > 1e-6


def test_hypothesis_mixing_starts_as_independent_streams_and_then_lets_them_exchange():
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 4))
    mixed = make_model(num_latents_per_step = 2, num_reasoning_steps = 3, num_hypotheses = 2, mix_hypotheses = True)
    plain = make_model(num_latents_per_step = 2, num_reasoning_steps = 3, num_hypotheses = 2)
    plain.load_state_dict({k: v for k, v in mixed.state_dict().items() if not k.startswith('hypothesis_mixer')})

    # at initialisation the mixer is the identity: the same logits as streams that never mix
    torch.testing.assert_close(mixed(prompt, answer, return_loss = False).answer_logits, plain(prompt, answer, return_loss = False).answer_logits, **TOL)

    def later_thoughts_of_stream_1(model):
        return model(prompt, answer, return_loss = False).latent_tokens[:, 1, 2:]

    with torch.no_grad():
        mixed.hypothesis_mixer.weight.add_(torch.randn_like(mixed.hypothesis_mixer.weight) * 0.1)
    for model, exchanges in ((plain, False), (mixed, True)):
        before = later_thoughts_of_stream_1(model)
        with torch.no_grad():
            model.begin_of_thought[0].add_(1.)      # only stream 0 starts elsewhere
        changed = (later_thoughts_of_stream_1(model) - before).abs().amax() > 1e-6
        assert bool(changed) == exchanges


def test_hypothesis_similarity_loss_is_the_mean_cosine_similarity_of_the_streams():
    model = make_model(num_latents_per_step = 2, num_reasoning_steps = 3, num_hypotheses = 3, hypothesis_similarity_loss_weight = 0.5)
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 4))
    steps = torch.tensor([3, 1])

    loss, (breakdown, _, latents, *_) = model(prompt, answer, num_reasoning_steps = steps, return_intermediates = True)
    # by hand, over the positions within each row's steps: row 0 has 3 x 2 thoughts, row 1 has 1 x 2
    expected = []
    for row, positions in ((0, 6), (1, 2)):
        for n in range(positions):
            for i in range(3):
                for j in range(i + 1, 3):
                    expected.append(torch.cosine_similarity(latents[row, i, n], latents[row, j, n], dim = 0))
    torch.testing.assert_close(breakdown.hypothesis_similarity_loss, torch.stack(expected).mean(), **TOL)
    torch.testing.assert_close(loss, breakdown.answer_loss + 0.5 * breakdown.hypothesis_similarity_loss, **TOL)

    # off by default, and there is nothing to compare with one stream
    assert make_model(num_hypotheses = 2)(prompt, answer, return_intermediates = True)[1][0].hypothesis_similarity_loss is None


@pytest.mark.parametrize('num_hypotheses', [1, 2])
def test_checkpoint_gives_same_loss_and_gradients(num_hypotheses):
    model = make_model(num_residual_streams = 4, num_latents_per_step = 2, num_reasoning_steps = 3, num_hypotheses = num_hypotheses, learn_begin_of_thought = True).train()
    prompt = ragged_prompts()
    answer = torch.randint(0, NUM_TOKENS, (3, 5))

    def loss_and_grads(use_checkpoint):
        model.checkpoint = use_checkpoint
        model.zero_grad()
        loss = model(prompt, answer)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads(False)
    ckpt_loss, ckpt_grads = loss_and_grads(True)

    torch.testing.assert_close(plain_loss, ckpt_loss, **TOL)
    assert plain_grads.keys() == ckpt_grads.keys()
    assert 'begin_of_thought' in plain_grads and 'model.token_emb.weight' in plain_grads
    for name in plain_grads:
        torch.testing.assert_close(plain_grads[name], ckpt_grads[name], **TOL, msg = name)


def test_gradients_flow_through_every_thought():
    model = make_model(num_reasoning_steps = 4).train()
    prompt = torch.randint(0, NUM_TOKENS, (2, 5))
    answer = torch.randint(0, NUM_TOKENS, (2, 3))

    # the final norm's output of each forward call is that pass's hidden states: the thoughts it produces
    pass_outputs = []
    def keep(module, args, output):
        output.retain_grad()
        pass_outputs.append(output)
    handle = model.model.final_norm.register_forward_hook(keep)

    model(prompt, answer).backward()
    handle.remove()

    # prompt + <bot>, 3 more thought steps, then last thought + <eot> + answer
    assert len(pass_outputs) == 5
    for step, output in enumerate(pass_outputs[:4]):
        thought_grad = output.grad[:, -1]
        assert (thought_grad.abs().sum(dim = -1) > 0).all(), f'thought {step + 1} got no gradient from the answer loss'
    assert model.begin_of_thought.grad.abs().sum() > 0


def test_state_dict_round_trip(tmp_path):
    model = make_model(num_latents_per_step = 2, learn_begin_of_thought = True)
    prompt = ragged_prompts()
    answer = torch.randint(0, NUM_TOKENS, (3, 4))

    path = tmp_path / 'model.pt'
    torch.save(model.state_dict(), path)

    restored = make_model(num_latents_per_step = 2, learn_begin_of_thought = True, seed = 123)
    restored.load_state_dict(torch.load(path))

    assert torch.equal(model(prompt, answer), restored(prompt, answer))
    assert torch.equal(model.generate(prompt, 6, temperature = 0.), restored.generate(prompt, 6, temperature = 0.))


def test_return_intermediates_structure():
    model = make_model(num_latents_per_step = 2, num_reasoning_steps = 3, learn_begin_of_thought = True)
    prompt = torch.randint(0, NUM_TOKENS, (2, 6))
    answer = torch.randint(0, NUM_TOKENS, (2, 4))

    loss, (breakdown, prompt_logits, latents, answer_logits, cache) = model(prompt, answer, return_intermediates = True)
    torch.testing.assert_close(loss, breakdown.answer_loss + breakdown.begin_thought_loss)
    assert prompt_logits.shape == (2, 6, NUM_TOKENS)
    assert latents.shape == (2, 6, 32)
    assert answer_logits.shape == (2, 4, NUM_TOKENS)
    # prompt, <bot> x 2, 3 steps x 2 thoughts, <eot>, answer[:-1]
    assert cache.length == 6 + 2 + 6 + 1 + 3

    prompt_logits_2, latents_2, answer_logits_2, _ = model(prompt, answer, return_loss = False)
    torch.testing.assert_close(answer_logits, answer_logits_2)


@pytest.mark.parametrize('temperature', [1., 0.5])
def test_gumbel_sampling_draws_from_the_softmax(temperature):
    logits = torch.tensor([2., 1., 0., -1., -30.])
    draws = gumbel_sample(logits.expand(40_000, -1), temperature, generator = torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength = len(logits)).double() / len(draws)
    expected = (logits.double() / temperature).softmax(dim = -1)
    # 40,000 draws: the standard error of each frequency is at most 0.0025
    torch.testing.assert_close(frequencies, expected, atol = 0.01, rtol = 0)


def test_sampling_with_one_candidate_left_is_greedy_and_otherwise_varies():
    model = make_model()
    prompt = torch.randint(0, NUM_TOKENS, (4, 5))
    greedy = model.generate(prompt, 10, temperature = 0.)
    # positionally, as coconut-pytorch 0.0.32 took them: prompt, max_length, filter_fn, filter_kwargs, temperature
    assert torch.equal(model.generate(prompt, 10, top_k_filter, dict(k = 1), 1.), greedy)
    sampled = model.generate(prompt, 10, filter_kwargs = dict(min_p = 0.), temperature = 3., generator = torch.Generator().manual_seed(0))
    assert not torch.equal(sampled, greedy) and len(sampled.unique()) > 2


def test_a_filter_that_changes_the_shape_is_an_error():
    model = make_model()
    with pytest.raises(ValueError, match = 'filter_fn must return'):
        model.generate(torch.randint(0, NUM_TOKENS, (2, 5)), 3, filter_fn = lambda logits: logits[:, :3])


def test_sampling_is_reproducible_with_a_generator_and_eos_pads():
    model = make_model()
    prompt = torch.randint(0, NUM_TOKENS, (4, 5))

    first = model.generate(prompt, 10, temperature = 1., generator = torch.Generator().manual_seed(7))
    second = model.generate(prompt, 10, temperature = 1., generator = torch.Generator().manual_seed(7))
    assert torch.equal(first, second)

    greedy = model.generate(prompt, 10, temperature = 0.)
    eos = int(greedy[0, 2])
    stopped = model.generate(prompt, 10, temperature = 0., eos_token_id = eos)
    for row, full in zip(stopped, greedy):
        hits = (full == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(full)
        assert torch.equal(row[:end], full[:end])
        assert (row[end:] == -1).all()


def test_bf16_autocast_trains_without_dtype_fallbacks():
    import warnings

    model = make_model(num_residual_streams = 4).float().train()
    prompt = ragged_prompts()
    answer = torch.randint(0, NUM_TOKENS, (3, 4))

    with warnings.catch_warnings(record = True) as caught:
        warnings.simplefilter('always')
        with torch.autocast('cpu', dtype = torch.bfloat16):
            loss = model(prompt, answer)
            tokens = model.generate(prompt, max_length = 3, temperature = 0.)
        loss.backward()

    assert torch.isfinite(loss) and tokens.shape == (3, 3)
    mismatches = [str(w.message) for w in caught if 'dtype' in str(w.message).lower()]
    assert mismatches == []


def test_thought_steps_keep_no_copy_of_the_cache_for_backward():
    """Without checkpointing, what an extra thought step saves for backward is far smaller than the KV cache:
    attention reads the cached segments in place instead of saving a fresh concatenation every step."""
    torch.manual_seed(0)
    batch, prompt_length, dim, depth = 4, 512, 64, 2
    model = Coconut(num_reasoning_steps = 1, num_latents_per_step = 2, transformer = dict(num_tokens = NUM_TOKENS, dim = dim, depth = depth, dim_head = 16, heads = 4))
    prompt = torch.randint(0, NUM_TOKENS, (batch, prompt_length))
    answer = torch.randint(0, NUM_TOKENS, (batch, 8))

    def saved_bytes(steps):
        storages = {}
        def pack(t):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(prompt, answer, num_reasoning_steps = steps)
        return sum(storages.values())

    per_step = (saved_bytes(8) - saved_bytes(4)) / 4
    whole_cache = depth * 2 * batch * prompt_length * dim * 4   # keys and values of every layer, float32
    assert per_step < 0.4 * whole_cache, f'{per_step / 1e6:.2f} MB saved per step; the cache is {whole_cache / 1e6:.2f} MB'


@pytest.mark.parametrize('num_steps', [0, 2])
def test_long_answers_cross_both_attention_paths(num_steps):
    """A teacher-forced pass of more than SEGMENTED_QUERY_LIMIT tokens goes through SDPA over the joined cache,
    token-by-token decoding through attention over segments: the two must agree."""
    from coconut_pytorch.transformer import SEGMENTED_QUERY_LIMIT

    model = make_model(num_residual_streams = 2, num_latents_per_step = 2)
    prompt = ragged_prompts()
    length = SEGMENTED_QUERY_LIMIT + 8

    generated = model.generate(prompt, max_length = length, temperature = 0., num_reasoning_steps = num_steps)
    logits = model(prompt, generated, return_loss = False, num_reasoning_steps = num_steps).answer_logits
    assert torch.equal(logits.argmax(dim = -1), generated)


# static cache and CUDA graphs

def test_static_cache_steps_equal_one_pass():
    # the static cache's prefill, thought-like embedding steps and padded steps give the logits of one pass
    torch.manual_seed(0)
    model = Transformer(num_tokens = 50, dim = 32, depth = 2, heads = 2, dim_head = 16, num_residual_streams = 2).double()
    ids = torch.randint(0, 50, (3, 12))
    mask = torch.ones(3, 12, dtype = torch.bool)
    mask[0, 2:4] = False        # padding inside the prompt
    mask[1, 9] = False          # and inside a later step

    full = model(ids, mask = mask)

    cache = StaticKVCache(3, 2, 2, 16, capacity = 20, dtype = torch.float64)
    logits = []
    for start, end in ((0, 6), (6, 7), (7, 10), (10, 12)):
        out = model(ids[:, start:end], mask = mask[:, start:end], cache = cache)
        logits.append(out)

    stepped = torch.cat(logits, dim = 1)
    assert torch.allclose(stepped[mask], full[mask], atol = 1e-9)
    assert cache.length == 12 and int(cache.write_index) == 12
    assert torch.equal(cache.next_position, mask.sum(dim = -1))

    with pytest.raises(ValueError, match = 'static cache holds 20 columns'):
        model(torch.randint(0, 50, (3, 9)), cache = cache)


def test_generate_keeps_no_graph_state_on_cpu_and_copies():
    model = Coconut(num_reasoning_steps = 2, transformer = dict(num_tokens = 20, dim = 16, depth = 1, heads = 2, dim_head = 8))
    model.generate(torch.randint(0, 20, (2, 5)), max_length = 3, temperature = 0.)
    assert len(model.graphed_caches) == 0
    copy.deepcopy(model)
    with pytest.raises(ValueError, match = 'cuda_graph'):
        model.generate(torch.randint(0, 20, (2, 5)), max_length = 3, cuda_graph = True)
    with pytest.raises(ValueError, match = 'compile_steps'):
        model.generate(torch.randint(0, 20, (2, 5)), max_length = 3, compile_steps = True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'needs CUDA')
@pytest.mark.parametrize('hypotheses', (1, 2))
def test_cuda_graph_generation_equals_eager(hypotheses):
    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 3, num_latents_per_step = 2, num_hypotheses = hypotheses,
                    transformer = dict(num_tokens = 64, dim = 64, depth = 2, heads = 4, dim_head = 16)).cuda().eval()
    prompts = [torch.randint(0, 64, (n,)) for n in (7, 12, 3)]
    steps = torch.tensor([3, 0, 2])

    eager = model.generate(prompts, max_length = 20, temperature = 0., num_reasoning_steps = steps, cuda_graph = False)
    graphed = model.generate(prompts, max_length = 20, temperature = 0., num_reasoning_steps = steps, cuda_graph = True)
    again = model.generate(prompts, max_length = 20, temperature = 0., num_reasoning_steps = steps, cuda_graph = True)

    assert torch.equal(eager, graphed) and torch.equal(graphed, again)
    assert len(model.graphed_caches) == 1

    # bf16 autocast: each call in its own autocast context, with allocations in between, so a graph that kept
    # reading autocast's cached weight copies (freed when a context exits) would read other data
    def bf16_generate(**kwargs):
        junk = [torch.randn(p.shape, device = 'cuda').bfloat16() for p in model.parameters()]
        with torch.autocast('cuda', dtype = torch.bfloat16):
            out = model.generate(prompts, max_length = 20, temperature = 0., num_reasoning_steps = steps, **kwargs)
        del junk
        return out

    bf16_eager = bf16_generate(cuda_graph = False)
    bf16_runs = [bf16_generate() for _ in range(4)]
    assert all(torch.equal(bf16_eager, run) for run in bf16_runs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason = 'needs CUDA')
def test_compiled_cuda_graph_steps_equal_eager():
    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 2, num_latents_per_step = 2,
                    transformer = dict(num_tokens = 64, dim = 64, depth = 2, heads = 4, dim_head = 16)).cuda().double().eval()
    prompts = [torch.randint(0, 64, (n,)) for n in (7, 12, 3)]

    eager = model.generate(prompts, max_length = 12, temperature = 0., cuda_graph = False)
    compiled = [model.generate(prompts, max_length = 12, temperature = 0., compile_steps = True) for _ in range(2)]
    assert all(torch.equal(eager, c) for c in compiled)


@pytest.mark.parametrize('compile_as', ('whole', 'blocks'))
def test_compiled_training_gradients_equal_eager(compile_as):
    # inductor once compiled the thought steps' attention over cache segments to a wrong backward while the loss
    # stayed equal: compare every parameter's gradient, not only the loss. One layer is the smallest model that
    # still catches it (the `split` + `sum` form of segmented_attention fails the 'whole' case at depth 1, torch
    # 2.13 CPU) and compiles in 200 s from a cold cache instead of 316 s at depth 2
    torch.manual_seed(0)
    model = Coconut(num_reasoning_steps = 2, num_latents_per_step = 1,
                    transformer = dict(num_tokens = 32, dim = 32, depth = 1, heads = 2, dim_head = 16, num_residual_streams = 1)).double()
    prompt = torch.randint(0, 32, (2, 12))
    answer = torch.randint(0, 32, (2, 4))

    def gradients(forward):
        model.zero_grad()
        forward(prompt, answer).backward()
        return [p.grad.clone() for p in model.parameters()]

    eager = gradients(model.forward)
    torch._dynamo.reset()
    if compile_as == 'blocks':
        # what train_toy.py --compile does
        model.model.compile_blocks()
        compiled = gradients(model.forward)
    else:
        compiled = gradients(torch.compile(model.forward))
    for expected, got in zip(eager, compiled):
        torch.testing.assert_close(got, expected, rtol = 1e-9, atol = 1e-12)


# the thought alignment loss

def thought_targets_for(steps: torch.Tensor, c: int, seed: int = 0) -> torch.Tensor:
    """Random word sets per thought, and some thoughts without a target."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.rand((len(steps), int(steps.max()) * c, NUM_TOKENS), generator = generator) < 0.1
    targets[:, 1] = False
    return targets


def test_thought_loss_is_the_kl_from_the_replaced_words_to_each_thought():
    model = make_model(num_latents_per_step = 2, thought_loss_weight = 0.5)
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))
    targets = thought_targets_for(torch.tensor([2, 2]), c = 2)

    loss, (breakdown, _, latents, _, _) = model(prompt, answer, num_reasoning_steps = 2, thought_targets = targets, return_intermediates = True)

    log_probs = model.model.to_logits(latents).log_softmax(dim = -1)
    kls = []
    for row in range(2):
        for slot in range(4):
            words = targets[row, slot].nonzero().flatten()
            if len(words) > 0:
                # a uniform distribution over the words: KL = -log n - mean log p(word)
                kls.append(-torch.log(torch.tensor(float(len(words)), dtype = torch.float64)) - log_probs[row, slot, words].mean())
    torch.testing.assert_close(breakdown.thought_loss, torch.stack(kls).mean(), **TOL)
    torch.testing.assert_close(loss, breakdown.answer_loss + 0.5 * breakdown.thought_loss, **TOL)
    assert model(prompt, answer, num_reasoning_steps = 2, return_intermediates = True)[1][0].thought_loss is None


def test_thought_loss_of_a_mixed_batch_equals_each_row_alone():
    model = make_model(num_latents_per_step = 2)
    prompts = ragged_prompts()
    answer = torch.randint(0, NUM_TOKENS, (3, 4))
    steps = torch.tensor([1, 3, 2])
    targets = thought_targets_for(steps, c = 2)
    # slots past a row's own steps are never targets, whatever they hold
    targets[0, 2:] = True

    _, (breakdown, *_) = model(prompts, answer, num_reasoning_steps = steps, thought_targets = targets, return_intermediates = True)

    total, counted = 0., 0
    for index, p in enumerate(prompts):
        own = int(steps[index]) * 2
        alone = targets[index:index + 1, :own]
        _, (row, *_) = model(p[None], answer[index:index + 1], num_reasoning_steps = int(steps[index]), thought_targets = alone, return_intermediates = True)
        with_target = int(alone.any(dim = -1).sum())
        total, counted = total + row.thought_loss * with_target, counted + with_target
    torch.testing.assert_close(breakdown.thought_loss, total / counted, **TOL)


def test_thought_loss_trains_every_earlier_thought():
    # the loss on the last thought reaches <bot>: it flows back through the whole recurrence
    model = make_model(num_reasoning_steps = 3).train()
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))
    targets = torch.zeros((2, 3, NUM_TOKENS), dtype = torch.bool)
    targets[:, 2, 7] = True
    _, (breakdown, *_) = model(prompt, answer, thought_targets = targets, return_intermediates = True)
    breakdown.thought_loss.backward()
    assert model.begin_of_thought.grad.abs().sum() > 0


@pytest.mark.parametrize('kwargs, targets, error, message', [
    (dict(), [[1.]], TypeError, 'thought_targets must be a tensor'),
    (dict(), torch.zeros(2, 3, NUM_TOKENS), ValueError, 'thought_targets must have shape'),
    (dict(), -torch.ones(2, 2, NUM_TOKENS), ValueError, 'nonnegative'),
    (dict(num_hypotheses = 2), torch.zeros(2, 2, NUM_TOKENS), ValueError, 'single stream'),
    (dict(), torch.full((2, 2, NUM_TOKENS), float('nan')), ValueError, 'finite nonnegative'),
])
def test_bad_thought_targets_are_named(kwargs, targets, error, message):
    model = make_model(**kwargs)
    with pytest.raises(error, match = message):
        model(torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3)), thought_targets = targets)
    with pytest.raises(ValueError, match = 'thought_loss_weight'):
        make_model(thought_loss_weight = -1.)


def test_the_pause_slots_outputs_take_the_thought_loss_as_computed_by_hand():
    # the supervised pause control: the outputs at <bot> and at each pause but the last get the targets Coconut's
    # thoughts would, through the same LM head; computed here from one plain causal pass over the whole sequence
    model = make_model(thought_mode = 'pause', thought_loss_weight = 0.5)
    prompt, answer = torch.randint(0, NUM_TOKENS, (2, 5)), torch.randint(0, NUM_TOKENS, (2, 3))
    targets = torch.zeros(2, 2, NUM_TOKENS)
    targets[0, 0, [3, 7]] = 1.
    targets[1, 1, 4] = 2.
    loss, (breakdown, _, latent_tokens, _, _) = model(prompt, answer, thought_targets = targets, return_intermediates = True)

    pauses = model.pause_embed.expand(2, 2, -1)
    bot = model.begin_of_thought[0].expand(2, -1, -1)
    hiddens = model.model.forward_with_cache([prompt, bot, pauses]).hiddens          # prompt, <bot>, pause 1, pause 2
    outputs = hiddens[:, 5:7]                                                        # at <bot> and pause 1
    assert torch.allclose(latent_tokens, outputs, atol = 1e-12)
    log_probs = model.model.to_logits(outputs).log_softmax(dim = -1)
    wanted = targets / targets.sum(dim = -1, keepdim = True).clamp(min = 1e-12)
    kl = (torch.special.xlogy(wanted, wanted) - wanted * log_probs).sum(dim = -1)     # (b, 2)
    by_hand = (kl[0, 0] + kl[1, 1]) / 2                                              # the two slots with a target
    assert torch.allclose(breakdown.thought_loss, by_hand, atol = 1e-12)
    assert torch.allclose(loss, breakdown.answer_loss + 0.5 * by_hand, atol = 1e-12)
