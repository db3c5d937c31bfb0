"""Path exploration, `generate(..., num_samples = k)`, in float64: k paths per prompt from one prefill.

Each test compares with a computation that must agree exactly: the paths are what `generate` gives the prompts
repeated k times (same generator draws), their log-probabilities what a teacher-forced pass gives, the noise what the
generator draws; and the backbone's calls show what ran on b rows and what on b x k.
"""

import math
from functools import partial

import pytest
import torch
from models import NUM_TOKENS, float64_coconut

from coconut_pytorch import SampledPaths, majority_vote
from coconut_pytorch.paths import rank_paths, vote
from coconut_pytorch.sampling import top_k_filter

DIM = 16

make_model = partial(float64_coconut, num_residual_streams = 1)


@pytest.fixture
def model():
    return make_model()


def padded_prompts():
    """Three prompts of lengths 3, 6 and 4, right-padded with -1 (generation left-aligns them)."""
    torch.manual_seed(1)
    prompts = [torch.randint(0, NUM_TOKENS, (length,)) for length in (3, 6, 4)]
    return torch.nn.utils.rnn.pad_sequence(prompts, batch_first = True, padding_value = -1)


def record_calls(model, monkeypatch) -> list[tuple[int, int, list, torch.Tensor]]:
    """Wrap the backbone: every call's (batch size, input length, its inputs, the hidden states it gave), in order."""
    calls = []
    forward = model.model.forward_with_cache

    def recorded(inputs, **kwargs):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        out = forward(inputs, **kwargs)
        calls.append((inputs[0].shape[0], sum(t.shape[1] for t in inputs), inputs, out.hiddens))
        return out

    monkeypatch.setattr(model.model, 'forward_with_cache', recorded)
    return calls


def unranked(paths: SampledPaths) -> torch.Tensor:
    """The paths' tokens put back in the order they were drawn, as (b k, L) rows."""
    order = paths.sample_index.argsort(dim = -1)
    tokens = paths.tokens.gather(1, order[..., None].expand_as(paths.tokens))
    return tokens.flatten(0, 1)


def teacher_forced_log_probs(model, prompt, tokens, num_steps) -> torch.Tensor:
    """(rows,) sum of log-softmax of the generated tokens (up to eos; -1 after counts nothing), teacher-forced."""
    logits = model(prompt, tokens, return_loss = False, num_reasoning_steps = num_steps).answer_logits
    log_probs = logits.log_softmax(dim = -1).gather(-1, tokens.clamp(min = 0)[..., None])[..., 0]
    return (log_probs * (tokens >= 0)).sum(dim = -1)


# one prefill

@pytest.mark.parametrize('thought_noise', [0., 0.5])
def test_k_paths_share_one_prefill(model, monkeypatch, thought_noise):
    calls = record_calls(model, monkeypatch)
    prompt, b, k, steps, max_length = padded_prompts(), 3, 4, 3, 5

    paths = model.generate(prompt, max_length, temperature = 1., num_samples = k, thought_noise = thought_noise,
                           num_reasoning_steps = steps, generator = torch.Generator().manual_seed(0))
    assert paths.tokens.shape == (b, k, max_length) and paths.log_probs.shape == (b, k)

    thought_rows = b * k if thought_noise > 0 else b
    expected = [(b, prompt.shape[1] + 1)]                       # the prompt and <bot>, once per prompt
    expected += [(thought_rows, 1)] * (steps - 1)               # the thoughts fed back: on b rows unless noised
    expected += [(b * k, 2)]                                    # the last thought and <eot>, per path
    expected += [(b * k, 1)] * (max_length - 1)                 # each new token but the last, per path
    assert [(batch, length) for batch, length, *_ in calls] == expected


# the paths are generate's, on the prompts repeated

@pytest.mark.parametrize('as_list', [False, True])
def test_greedy_single_path_is_generate(model, as_list):
    prompt = padded_prompts()
    steps = torch.tensor([2, 0, 3])
    if as_list:
        prompt = [row[row >= 0] for row in prompt]

    greedy = model.generate(prompt, 7, temperature = 0., num_reasoning_steps = steps)
    eos = int(greedy[0, 2])
    for eos_token_id in (None, eos):
        expected = model.generate(prompt, 7, temperature = 0., num_reasoning_steps = steps, eos_token_id = eos_token_id)
        one = model.generate(prompt, 7, temperature = 0., num_reasoning_steps = steps, eos_token_id = eos_token_id, num_samples = 1)
        assert torch.equal(one.tokens[:, 0], expected)

        # greedy decoding gives every path the greedy answer
        three = model.generate(prompt, 7, temperature = 0., num_reasoning_steps = steps, eos_token_id = eos_token_id, num_samples = 3)
        assert torch.equal(three.tokens, expected[:, None].expand(-1, 3, -1))
        # to rounding: b x 3 rows go through other matrix shapes than b rows (float64 BLAS need not agree bitwise)
        torch.testing.assert_close(three.log_probs, one.log_probs.expand(-1, 3), atol = 1e-12, rtol = 0.)

    assert (expected == -1).any()           # eos cut a row short


@pytest.mark.parametrize('kwargs', [dict(num_hypotheses = 2), dict(thought_mode = 'pause'), dict(num_latents_per_step = 2)],
                         ids = ['hypotheses', 'pause', 'two-latents'])
def test_greedy_paths_are_generate_for_every_kind_of_thought(kwargs):
    model = make_model(**kwargs)
    prompt = padded_prompts()

    expected = model.generate(prompt, 6, temperature = 0.)
    paths = model.generate(prompt, 6, temperature = 0., num_samples = 2)
    assert torch.equal(paths.tokens, expected[:, None].expand(-1, 2, -1))


@pytest.mark.parametrize('filtered', [False, True])
def test_sampled_paths_are_generate_on_the_repeated_prompts_and_their_log_probs_are_teacher_forced(model, filtered):
    prompt, steps, k = padded_prompts(), torch.tensor([3, 1, 0]), 5
    repeated, repeated_steps = prompt.repeat_interleave(k, 0), steps.repeat_interleave(k, 0)
    sampling = dict(temperature = 0.8, filter_fn = top_k_filter, filter_kwargs = dict(k = 6)) if filtered else dict(temperature = 1.)

    # an eos the samples do meet
    eos = int(model.generate(repeated, 8, num_reasoning_steps = repeated_steps, generator = torch.Generator().manual_seed(5), **sampling)[0, 1])

    expected = model.generate(repeated, 8, num_reasoning_steps = repeated_steps, eos_token_id = eos, generator = torch.Generator().manual_seed(5), **sampling)
    paths = model.generate(prompt, 8, num_reasoning_steps = steps, eos_token_id = eos, generator = torch.Generator().manual_seed(5), num_samples = k, **sampling)

    assert torch.equal(unranked(paths), expected)
    assert (expected == -1).any() and len(set(map(tuple, expected.tolist()))) > 3

    # each path's log-probability: the unfiltered temperature-1 log-softmax of its tokens, teacher-forced
    recomputed = teacher_forced_log_probs(model, repeated, expected, repeated_steps).view(-1, k)
    assert paths.log_probs.dtype == torch.float64
    torch.testing.assert_close(paths.log_probs, recomputed.gather(1, paths.sample_index), atol = 1e-10, rtol = 0)


def test_paths_are_ranked_by_log_prob_with_their_tokens():
    tokens = torch.arange(2 * 4 * 3).view(8, 3)
    log_probs = torch.tensor([-3., -1., -2., -1., -5., -4., -6., -4.5], dtype = torch.float64)

    ranked = rank_paths(tokens, log_probs, 4)

    # equal log-probabilities keep their draw order
    assert ranked.sample_index.tolist() == [[1, 3, 2, 0], [1, 3, 0, 2]]
    assert ranked.log_probs.tolist() == [[-1., -1., -2., -3.], [-4., -4.5, -5., -6.]]
    assert torch.equal(ranked.tokens, torch.stack([tokens[:4][[1, 3, 2, 0]], tokens[4:][[1, 3, 0, 2]]]))


def test_generated_paths_come_ranked(model):
    paths = model.generate(padded_prompts(), 6, temperature = 1.5, num_samples = 6, generator = torch.Generator().manual_seed(2))

    assert (paths.log_probs[:, :-1] >= paths.log_probs[:, 1:]).all()
    assert (paths.log_probs[:, 0] > paths.log_probs[:, -1]).all()
    assert torch.equal(paths.sample_index.sort(dim = -1).values, torch.arange(6).expand(3, -1))


# noise on the thoughts

def test_zero_thought_noise_is_no_noise(model):
    sample = lambda **kwargs: model.generate(padded_prompts(), 6, num_samples = 3, generator = torch.Generator().manual_seed(4), **kwargs)
    plain, zero = sample(), sample(thought_noise = 0.)
    assert torch.equal(plain.tokens, zero.tokens) and torch.equal(plain.log_probs, zero.log_probs)


def test_thought_noise_is_the_generators_gaussian_on_every_fed_back_thought(model, monkeypatch):
    prompt, b, k, steps, noise_std = padded_prompts(), 3, 4, 3, 0.25
    calls = record_calls(model, monkeypatch)

    plain = model.generate(prompt, 4, temperature = 0., num_samples = k, num_reasoning_steps = steps)
    # without noise, the last thought entering <eot> is each prompt's own, alike on all its paths
    last_plain = calls[steps][2][0][:, :1].view(b, k, -1)
    assert torch.equal(last_plain, last_plain[:, :1].expand(-1, k, -1))
    calls.clear()

    noised = model.generate(prompt, 4, temperature = 0., num_samples = k, num_reasoning_steps = steps, thought_noise = noise_std,
                            generator = torch.Generator().manual_seed(9))
    assert calls[0][0] == b

    # the noise: drawn from the generator in the order the thoughts are fed back, each path its own, before any token
    generator = torch.Generator().manual_seed(9)
    noises = [torch.randn((b * k, 1, DIM), generator = generator, dtype = torch.float64) * noise_std for _ in range(steps)]

    # every thought fed back (the last one before <eot> too) is the hidden state the step before gave its path, plus
    # that path's noise; the first comes from <bot>, run once per prompt
    given = [calls[0][3][:, -1:].repeat_interleave(k, 0)] + [calls[step][3] for step in range(1, steps)]
    fed_back = [calls[step][2][0] for step in range(1, steps)] + [calls[steps][2][0][:, :1]]
    for thought, before, noise in zip(fed_back, given, noises):
        torch.testing.assert_close(thought, before + noise, atol = 1e-12, rtol = 0)

    # so the paths of a prompt think apart: every later thought differs among them
    for before in given[1:]:
        per_prompt = before.view(b, k, -1)
        assert (per_prompt[:, 1:] - per_prompt[:, :1]).abs().amax(dim = -1).min() > 1e-6

    again = model.generate(prompt, 4, temperature = 0., num_samples = k, num_reasoning_steps = steps, thought_noise = noise_std,
                           generator = torch.Generator().manual_seed(9))
    assert torch.equal(noised.tokens, again.tokens) and torch.equal(noised.log_probs, again.log_probs)
    assert not torch.equal(noised.log_probs, plain.log_probs)


def test_paths_that_part_before_the_thoughts_think_as_the_shared_ones_do(model, monkeypatch):
    """Noise far below float64's resolution parts the paths right after <bot> and changes nothing else: thinking on
    b x k rows (padded prompts, per-row steps) is exact."""
    prompt, steps, k = padded_prompts(), torch.tensor([3, 0, 2]), 3
    calls = record_calls(model, monkeypatch)
    parted = model.generate(prompt, 6, temperature = 1., num_samples = k, num_reasoning_steps = steps, thought_noise = 1e-30,
                            generator = torch.Generator().manual_seed(8))

    assert [batch for batch, *_ in calls[:3]] == [3, 3 * k, 3 * k]
    # the noise draws come first from the generator, so the tokens' draws differ: compare with the noise drawn alike
    generator = torch.Generator().manual_seed(8)
    for _ in range(int(steps.max())):
        torch.randn((3 * k, 1, DIM), generator = generator, dtype = torch.float64)
    expected = model.generate(prompt, 6, temperature = 1., num_samples = k, num_reasoning_steps = steps, generator = generator)
    assert torch.equal(parted.tokens, expected.tokens)
    torch.testing.assert_close(parted.log_probs, expected.log_probs, atol = 1e-10, rtol = 0)


# the vote

def test_majority_vote_by_hand():
    eos = 2
    tokens = torch.tensor([
        # prompt 0: (5, 6) twice (once with junk after eos), (7,) twice: a tie of votes, (5, 6) sums higher
        [[7, -1, -1, -1], [5, 6, 2, -1], [5, 6, 2, 9], [7, 2, -1, -1]],
        # prompt 1: every answer once: the most probable path wins
        [[1, 1, 1, 1], [3, -1, -1, -1], [4, 2, -1, -1], [1, 1, 1, 2]],
        # prompt 2: (8,) three times beats the most probable path
        [[9, 9, -1, -1], [8, 2, -1, -1], [8, -1, -1, -1], [8, 2, 5, 5]],
    ])
    log_probs = torch.tensor([[-1., -2., -2.5, -5.], [-1., -2., -3., -4.], [-0.5, -2., -3., -4.]], dtype = torch.float64)
    paths = SampledPaths(tokens, log_probs, torch.arange(4).expand(3, -1))

    answers, votes = majority_vote(paths, eos_token_id = eos, return_votes = True)
    assert answers.tolist() == [[5, 6, 2, -1], [1, 1, 1, 1], [8, 2, -1, -1]]
    assert votes.tolist() == [2, 1, 3]
    assert torch.equal(majority_vote(paths, eos_token_id = eos), answers)

    # without an eos, answers run up to the padding: every path's differs, so each prompt's most probable path wins
    answers, votes = majority_vote(paths, return_votes = True)
    assert answers.tolist() == [[7, -1, -1, -1], [1, 1, 1, 1], [9, 9, -1, -1]]
    assert votes.tolist() == [1, 1, 1]

    # equal votes and equal sums: the first path's answer
    assert vote([(1,), (2,)], [-1., -1.]) == (0, 1)
    assert vote(['a', 'b', 'b', 'a'], [-1., -1.5, -0.5, -1.]) == (0, 2)


def test_majority_vote_of_generated_paths(model):
    paths = model.generate(padded_prompts(), 3, temperature = 2., num_samples = 8, generator = torch.Generator().manual_seed(0))
    answers, votes = majority_vote(paths, return_votes = True)

    for row, (answer, count) in enumerate(zip(answers, votes)):
        matches = (paths.tokens[row] == answer).all(dim = -1)
        assert int(matches.sum()) == int(count) == max(int((paths.tokens[row] == other).all(dim = -1).sum()) for other in paths.tokens[row])


# arguments

@pytest.mark.parametrize('kwargs, error, name', [
    (dict(num_samples = 0), ValueError, 'num_samples'),
    (dict(num_samples = -2), ValueError, 'num_samples'),
    (dict(num_samples = True), TypeError, 'num_samples'),
    (dict(num_samples = 2.), TypeError, 'num_samples'),
    (dict(num_samples = torch.tensor(2)), TypeError, 'num_samples'),
    (dict(num_samples = 2, thought_noise = -0.1), ValueError, 'thought_noise'),
    (dict(num_samples = 2, thought_noise = math.nan), ValueError, 'thought_noise'),
    (dict(num_samples = 2, thought_noise = math.inf), ValueError, 'thought_noise'),
    (dict(num_samples = 2, thought_noise = True), ValueError, 'thought_noise'),
    (dict(thought_noise = 0.5), ValueError, 'thought_noise .*needs num_samples'),
])
def test_bad_path_arguments_are_named_before_compute(no_compute, kwargs, error, name):
    with pytest.raises(error, match = name):
        no_compute.generate(padded_prompts(), 4, **kwargs)


@pytest.mark.parametrize('kwargs, message', [(dict(thought_mode = 'pause'), 'thought_mode'), (dict(num_hypotheses = 2), 'num_hypotheses')])
def test_thought_noise_without_a_single_continuous_stream_is_refused_before_compute(monkeypatch, kwargs, message):
    model = make_model(**kwargs)
    monkeypatch.setattr(model.model, 'forward_with_cache', lambda *args, **kwargs: pytest.fail('the transformer ran'))
    with pytest.raises(ValueError, match = f'thought_noise.*{message}'):
        model.generate(padded_prompts(), 4, num_samples = 2, thought_noise = 0.1)


def test_majority_vote_takes_sampled_paths_only():
    with pytest.raises(TypeError, match = 'SampledPaths'):
        majority_vote(torch.zeros(2, 3, 4, dtype = torch.long))
    with pytest.raises(ValueError, match = 'log_probs'):
        majority_vote(SampledPaths(torch.zeros(2, 3, 4, dtype = torch.long), torch.zeros(2, 4), torch.zeros(2, 3)))


# the evaluate command

@pytest.fixture(scope = 'module')
def checkpoint_and_data(tmp_path_factory):
    from coconut_pytorch.data import Example, save_json_examples
    from coconut_pytorch.training import TrainConfig, train

    out = tmp_path_factory.mktemp('trained')
    # a run that stops at once: the model is what it was made, which is all these tests need. At the feedforward
    # width before the 2/3 rule (4 x dim), this model's paths for the three questions below give a majority that is
    # not the most probable path's, which the vote's check needs
    train(TrainConfig(task = 'running_sum', task_kwargs = dict(num_digits = 3), device = 'cpu', train_size = 64, eval_size = 4, batch_size = 32,
                      epochs_per_stage = 1, final_epochs = 0, dim = 16, depth = 1, heads = 2, dim_head = 8, num_residual_streams = 1,
                      warmup_steps = 0, time_budget = 0., ff_dim_inner = 64), out)
    data = out / 'data.json'
    save_json_examples([Example(question = q, steps = [], answer = a) for q, a in (('1 2 3', '6'), ('4 4 4', '2'), ('3 1', '4'))], data)
    return out / 'checkpoint.pt', data


def test_evaluate_reports_majority_and_best_of_k_as_the_paths_give_them(checkpoint_and_data):
    from coconut_pytorch.data import Example, load_examples
    from coconut_pytorch.evaluate import answer_text, encode_questions, evaluate_examples, sample_paths
    from coconut_pytorch.training.checkpoints import load_trained

    checkpoint, data = checkpoint_and_data
    model, tokenizer, _, info = load_trained(checkpoint, device = 'cpu')
    model.double()
    examples = load_examples(data)
    prompts = encode_questions(examples, tokenizer)
    sampled = sample_paths(model, prompts, tokenizer.eos_id, 2, 1, num_samples = 5, temperature = 1., batch_size = 10, seed = 1)
    # gold answers that some paths give (this model is untrained), so that the accuracies are not all 0: the first
    # example's paths' majority answer, the second's most probable path's, the third's least probable path's
    answers = [[answer_text(row, tokenizer) for row in paths] for paths, _ in sampled]
    majority = [texts[vote([tokenizer.normalize(text) for text in texts], log_probs)[0]] for texts, (_, log_probs) in zip(answers, sampled)]
    golds = [majority[0], answers[1][0], answers[2][-1]]
    examples = [Example(question = example.question, steps = [], answer = gold or example.answer) for example, gold in zip(examples, golds)]

    result = evaluate_examples(model, tokenizer, examples, num_thoughts = 2, max_new_tokens = 1, batch_size = 10, num_samples = 5, temperature = 1., seed = 1)
    plain = evaluate_examples(model, tokenizer, examples, num_thoughts = 2, max_new_tokens = 1, batch_size = 10)
    assert {key: result[key] for key in plain if key != 'seconds'} == {key: plain[key] for key in plain if key != 'seconds'}
    assert result['num_samples'] == 5 and result['temperature'] == 1.

    # each is the vote (or the first path) of what sample_paths gives, whatever the batching
    again = sample_paths(model, prompts, tokenizer.eos_id, 2, 1, num_samples = 5, temperature = 1., batch_size = 10, seed = 1)
    assert again == sampled
    for index, (paths, log_probs) in enumerate(sampled):
        answers = [answer_text(row, tokenizer) for row in paths]
        assert log_probs == sorted(log_probs, reverse = True)
        assert result['best_of_k_predictions'][index] == answers[0]
        assert result['majority_predictions'][index] == answers[vote([tokenizer.normalize(a) for a in answers], log_probs)[0]]

    normalize = tokenizer.normalize
    for key in ('majority', 'best_of_k'):
        expected = sum(normalize(p) == normalize(e.answer) for p, e in zip(result[f'{key}_predictions'], examples)) / len(examples)
        assert result[f'{key}_accuracy'] == expected
    assert result['majority_accuracy'] > 0 and result['best_of_k_accuracy'] > 0
    # one answer each (max_new_tokens 1), so that paths agree, and here the majority is not the most probable path's
    assert result['majority_predictions'] != result['best_of_k_predictions']

    # greedy paths: every path is the greedy answer
    greedy = evaluate_examples(model, tokenizer, examples, num_thoughts = 2, max_new_tokens = 4, num_samples = 3, temperature = 0.)
    assert greedy['majority_predictions'] == greedy['best_of_k_predictions'] == greedy['predictions']


def test_evaluate_command_num_samples(checkpoint_and_data, in_process, tmp_path):
    import json
    from coconut_pytorch.evaluate import main as evaluate

    checkpoint, data = checkpoint_and_data
    run = lambda *args: in_process(evaluate, '--checkpoint', checkpoint, '--data', data, '--device', 'cpu', *args)

    plain = run()
    sampled = run('--num-samples', 4, '--predictions', tmp_path / 'predictions.jsonl')
    assert plain.returncode == 0 and sampled.returncode == 0, sampled.stderr
    plain, sampled = (json.loads(result.stdout.strip().splitlines()[-1]) for result in (plain, sampled))

    # the same line, with the sampled paths' keys added
    assert set(sampled) - set(plain) == {'num_samples', 'temperature', 'thought_noise', 'majority_accuracy', 'best_of_k_accuracy'}
    assert sampled['thought_noise'] == 0.
    assert sampled['accuracy'] == plain['accuracy'] and sampled['num_samples'] == 4 and sampled['temperature'] == 1.
    records = [json.loads(line) for line in (tmp_path / 'predictions.jsonl').read_text().splitlines()]
    assert len(records) == 3 and all({'majority', 'best_of_k'} <= set(record) for record in records)

    for args, flag in [(('--num-samples', 0), '--num-samples'), (('--temperature', 0.5), '--temperature'),
                       (('--num-samples', 2, '--temperature', -1), '--temperature'), (('--thought-noise', 0.5), '--thought-noise'),
                       (('--num-samples', 2, '--thought-noise', -0.1), '--thought-noise'),
                       (('--num-samples', 2, '--thought-noise', 'nan'), '--thought-noise')]:
        failed = run(*args)
        assert failed.returncode == 2 and flag in failed.stderr


def test_evaluation_with_thought_noise_votes_on_the_noisy_paths(checkpoint_and_data, in_process):
    import json
    from coconut_pytorch.data import load_examples
    from coconut_pytorch.evaluate import answer_text, encode_questions, evaluate_examples, main as evaluate, sample_paths
    from coconut_pytorch.training.checkpoints import load_trained

    checkpoint, data = checkpoint_and_data
    model, tokenizer, _, _ = load_trained(checkpoint, device = 'cpu')
    model.double()
    examples = load_examples(data)
    prompts = encode_questions(examples, tokenizer)
    noisy = sample_paths(model, prompts, tokenizer.eos_id, 2, 3, num_samples = 4, seed = 2, thought_noise = 0.5)
    # the noise reaches the paths: other log-probabilities than the same draws without it, and what generate gives
    plain = sample_paths(model, prompts, tokenizer.eos_id, 2, 3, num_samples = 4, seed = 2)
    assert [log_probs for _, log_probs in noisy] != [log_probs for _, log_probs in plain]
    # and what the evaluation votes on (the same draws: same seed and batches)
    result = evaluate_examples(model, tokenizer, examples, num_thoughts = 2, max_new_tokens = 3, num_samples = 4, seed = 2, thought_noise = 0.5)
    assert result['thought_noise'] == 0.5
    for index, (paths, _) in enumerate(noisy):
        assert result['best_of_k_predictions'][index] == answer_text(paths[0], tokenizer)

    line = in_process(evaluate, '--checkpoint', checkpoint, '--data', data, '--device', 'cpu', '--num-samples', 4, '--thought-noise', 0.5)
    assert line.returncode == 0, line.stderr
    assert json.loads(line.stdout.strip().splitlines()[-1])['thought_noise'] == 0.5

